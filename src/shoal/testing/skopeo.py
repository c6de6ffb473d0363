"""Drive the real ``skopeo`` as a pulling (and pushing) client, isolated from host config.

skopeo ignores ``CONTAINERS_REGISTRIES_CONF``, so every call passes ``--registries-conf``
with an empty private file, a private ``--registries.d``, ``--tmpdir``/``TMPDIR``, a
private ``REGISTRY_AUTH_FILE`` and ``--insecure-policy``: nothing on the host can change
what a test measures.

Two skopeo habits matter for digest comparisons: it gzips uncompressed layers on the way
to a registry (``--preserve-digests`` stops that) and on the way into an ``oci:`` layout
(``--dest-oci-accept-uncompressed-layers`` stops that).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shoal.testing.procs import require

__all__ = [
    "inspect_raw",
    "layout_digests",
    "private_skopeo",
    "registries_conf",
    "skopeo_env",
    "skopeo_pull",
    "skopeo_run",
]


def registries_conf(workdir: Path) -> Path:
    """An empty ``registries.conf`` under ``workdir/skopeo`` (no mirrors, no search)."""
    base = Path(workdir) / "skopeo"
    base.mkdir(parents=True, exist_ok=True)
    path = base / "registries.conf"
    if not path.exists():
        path.write_text("# private to Shoal's tests: no mirrors, no short-name search\n")
    return path


def skopeo_env(workdir: Path) -> dict[str, str]:
    """Environment overrides: private TMPDIR and auth file under ``workdir/skopeo``."""
    base = Path(workdir) / "skopeo"
    tmp = base / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {"TMPDIR": str(tmp), "REGISTRY_AUTH_FILE": str(base / "auth.json")}


def _argv_prefix(workdir: Path) -> list[str]:
    base = Path(workdir) / "skopeo"
    registries_d = base / "registries.d"
    registries_d.mkdir(parents=True, exist_ok=True)
    env = skopeo_env(workdir)
    return [
        require("skopeo"),
        "--registries-conf",
        str(registries_conf(workdir)),
        "--registries.d",
        str(registries_d),
        "--tmpdir",
        env["TMPDIR"],
        "--insecure-policy",
    ]


@contextmanager
def private_skopeo(parent: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    """``(argv prefix, env)`` for one isolated skopeo call; its files vanish afterwards."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".skopeo-", dir=parent))
    try:
        env = {**os.environ, **skopeo_env(workdir)}
        yield _argv_prefix(workdir), env
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def skopeo_run(
    args: Sequence[str], *, workdir: Path, timeout: float = 300.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``skopeo ARGS`` isolated under ``workdir``; raise with stderr if ``check`` fails."""
    with private_skopeo(workdir) as (prefix, env):
        result = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result


def skopeo_pull(
    ref: str,
    dest: Path,
    *,
    creds: str | None = None,
    tls_verify: bool = False,
    timeout: float = 300.0,
    all_platforms: bool = True,
    tag: str = "latest",
    check: bool = False,
    registries_conf: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Copy ``docker://REF`` into the OCI layout ``oci:DEST:TAG``, blobs byte for byte.

    Parameters:
        ref: ``host:port/repo:tag`` or ``...@sha256:...`` (no transport prefix).
        dest: layout directory to create or add to.
        creds: ``user:password`` for the source registry.
        tls_verify: verify TLS (plain HTTP is used when False and the registry speaks it).
        all_platforms: copy every platform of an index (``--all``), else the host's only.
        check: raise on failure instead of returning the failed process.
        registries_conf: a ``registries.conf`` to use instead of the empty private one (the
            last ``--registries-conf`` wins), e.g. node-config's drop-in.
    """
    args = ["--registries-conf", str(registries_conf)] if registries_conf is not None else []
    args += ["copy", f"--src-tls-verify={'true' if tls_verify else 'false'}"]
    args += ["--dest-oci-accept-uncompressed-layers", "--preserve-digests"]
    args.append(f"--src-creds={creds}" if creds is not None else "--src-no-creds")
    if all_platforms:
        args.append("--all")
    args += [f"docker://{ref}", f"oci:{dest}:{tag}"]
    return skopeo_run(args, workdir=Path(dest).parent, timeout=timeout, check=check)


def inspect_raw(ref: str, *, workdir: Path, creds: str | None = None) -> dict[str, Any]:
    """The raw manifest (or index) ``skopeo inspect --raw`` reads for ``ref``.

    ``ref`` carries its transport: ``docker://host/repo:tag`` or ``oci:DIR:TAG``.
    """
    args = ["inspect", "--raw"]
    if ref.startswith("docker://"):
        args.append("--tls-verify=false")
        args.append(f"--creds={creds}" if creds is not None else "--no-creds")
    result = skopeo_run([*args, ref], workdir=workdir, timeout=60)
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def layout_digests(dest: Path) -> set[str]:
    """Every blob digest stored in the OCI layout ``dest`` (manifests, configs, layers)."""
    out: set[str] = set()
    blobs = Path(dest) / "blobs"
    if not blobs.is_dir():
        return out
    for algorithm_dir in blobs.iterdir():
        if algorithm_dir.is_dir():
            out.update(f"{algorithm_dir.name}:{p.name}" for p in algorithm_dir.iterdir())
    return out
