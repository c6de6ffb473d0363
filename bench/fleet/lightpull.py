"""The ``--client light`` pull: the manifest, then every blob at once, into files, like curl.

A container client spends CPU of its own (skopeo re-hashes and re-writes each blob, ctr also
unpacks): on two cores that CPU is taken from the data plane being measured. This client
does only what a pull needs from the network: ``GET`` the manifest (following an index to
its ``linux/amd64`` entry), then ``GET`` the config and every layer in parallel, one thread
each, streaming each body into ``DEST/blobs/<algorithm>/<hex>`` through one 1 MiB buffer.
It checks each body's length against its descriptor but does not hash (the harness hashes
every node's files after the clock stops).

Standard library only, run as a script by path (``python lightpull.py BASE NAME REF DEST``),
so a node starts it without importing the project. Exit 0 when every blob is on disk, 1 with
one line on stderr otherwise.

With ``--ready FILE`` it starts as a client daemon would be running already: the interpreter
up, its modules imported, its HTTP opener built (which loads the system's CA certificates
even for plain HTTP), then it creates FILE and waits for SIGUSR1 before its first request.
The harness starts these before the rollout's clock and signals them when it starts (a
container runtime's pull does not start a process, import a library or load its CA roots).
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["ACCEPT", "PullError", "blob_path", "main", "pull", "wait_for_go"]

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
INDEX_TYPES = frozenset(
    {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
)
PLATFORM = {"os": "linux", "architecture": "amd64"}
BUFFER = 1 << 20
TIMEOUT = 600.0


class PullError(RuntimeError):
    """The pull cannot complete (HTTP error, short body, unusable manifest)."""


def blob_path(dest: Path, digest: str) -> Path:
    """Where a blob lands: ``DEST/blobs/sha256/<hex>``, as in an OCI layout."""
    algorithm, _, hexpart = digest.partition(":")
    if not algorithm.isalnum() or not hexpart.isalnum():
        raise PullError(f"invalid digest {digest[:80]!r}")
    return dest / "blobs" / algorithm / hexpart


_AUTH: dict[str, str] = {}
"""the Authorization header of every request (``--user``), or none"""


def _get(url: str, accept: str | None = None) -> Any:
    request = urllib.request.Request(url, headers={**_AUTH, **({"Accept": accept} if accept else {})})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        raise PullError(f"GET {url}: HTTP {exc.code}") from None
    except OSError as exc:
        raise PullError(f"GET {url}: {exc}") from None


def _manifest(base: str, name: str, reference: str) -> dict[str, Any]:
    with _get(f"{base}/v2/{name}/manifests/{reference}", ACCEPT) as resp:
        body = resp.read()
    try:
        doc: dict[str, Any] = json.loads(body)
    except ValueError:
        raise PullError(f"manifest {reference}: not JSON") from None
    return doc


def _pick(index: dict[str, Any]) -> str:
    for entry in index.get("manifests", []):
        platform = entry.get("platform", {})
        if all(platform.get(k) == v for k, v in PLATFORM.items()):
            return str(entry["digest"])
    raise PullError("index has no linux/amd64 manifest")


def _fetch(base: str, name: str, descriptor: dict[str, Any], dest: Path) -> int:
    digest, size = str(descriptor["digest"]), int(descriptor["size"])
    path = blob_path(dest, digest)
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    got = 0
    with _get(f"{base}/v2/{name}/blobs/{digest}") as resp, open(path, "wb") as out:
        while n := resp.readinto(view):
            out.write(view[:n])
            got += n
    if got != size:
        raise PullError(f"{digest[:19]}: got {got} bytes, descriptor says {size}")
    return got


def pull(base: str, name: str, reference: str, dest: Path) -> int:
    """Fetch the image's manifest and blobs into ``dest``; the blob bytes written."""
    doc = _manifest(base, name, reference)
    if doc.get("mediaType") in INDEX_TYPES or "manifests" in doc:
        doc = _manifest(base, name, _pick(doc))
    if "config" not in doc or "layers" not in doc:
        raise PullError(f"manifest {reference}: no config or layers")
    blobs = [doc["config"], *doc["layers"]]
    (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (dest / "manifest.json").write_text(json.dumps(doc))
    with ThreadPoolExecutor(len(blobs)) as pool:
        return sum(pool.map(lambda d: _fetch(base, name, d, dest), blobs))


def wait_for_go(ready: Path) -> None:
    """Set up what the first request needs, say so (``ready``), and wait for SIGUSR1."""
    urllib.request.install_opener(urllib.request.build_opener())
    "localhost".encode("idna")  # http.client's first request imports this codec (about 1 ms)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # before the file: no signal is lost
    ready.touch()
    signal.sigwait({signal.SIGUSR1})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("base", help="registry or mirror, e.g. http://127.0.0.1:65001")
    p.add_argument("name", help="repository path, e.g. registry.bench/bench/app")
    p.add_argument("reference", help="tag or digest")
    p.add_argument("dest", type=Path)
    p.add_argument("--user", help="user:password for the registry (basic auth), for a private image")
    p.add_argument("--ready", type=Path, help="create this file when set up, then wait for SIGUSR1 to pull")
    args = p.parse_args(argv)
    if args.user:
        _AUTH["Authorization"] = "Basic " + base64.b64encode(args.user.encode()).decode()
    if args.ready is not None:
        wait_for_go(args.ready)
    try:
        pull(args.base.rstrip("/"), args.name, args.reference, args.dest)
    except (PullError, OSError) as exc:  # OSError: a connection broken mid-body
        print(f"lightpull: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
