"""Run a private, real containerd (1.6) and pull images with its ``ctr`` client.

The daemon's root, state, sockets and plugin dir live under a directory the caller owns;
the CRI plugin is disabled (no Kubernetes here). Registry routing goes through a
``--hosts-dir`` tree, exactly as a node configured for a mirror would have it::

    HOSTS_DIR/<registry>/hosts.toml
        server = "http://<registry>"
        [host."http://127.0.0.1:65001"]      # the mirror, tried first
          capabilities = ["pull", "resolve"]

containerd sends mirror requests as ``/v2/<repo>/...?ns=<registry>`` and falls back to
``server`` when the mirror fails. With ``cri_config_path`` the daemon runs its CRI plugin
(cgroups, AppArmor and CNI left out: images only) reading ``hosts.toml`` from that
directory, and :meth:`Containerd.cri_pull` pulls as kubelet does (namespace ``k8s.io``).
Measured on 1.6.20: both the ``overlayfs`` (default) and ``native`` snapshotters unpack
here; a ``hosts.toml`` with ``server`` but no ``[host]`` table logs "invalid `host` tree"
and is ignored, so direct pulls name the server as a host.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from shoal.testing.procs import ManagedProcess, require, wait_until

__all__ = ["Containerd", "write_hosts_toml"]

_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; containerd adds ".ttrpc"


def write_hosts_toml(
    hosts_dir: Path,
    registry: str,
    *,
    mirrors: tuple[str, ...] | list[str] = (),
    server: str | None = None,
) -> Path:
    """Write ``hosts_dir/<registry>/hosts.toml`` routing pulls of ``registry``.

    Parameters:
        hosts_dir: the directory given to ``ctr --hosts-dir``.
        registry: ``host[:port]`` as written in image references.
        mirrors: mirror base URLs tried in order before the server (``http://...``).
        server: the registry's own URL; default ``http://<registry>``.
    """
    server = server or f"http://{registry}"
    hosts = list(mirrors) or [server]  # a [host] table is required, see the module docstring
    lines = [f'server = "{server}"', ""]
    for host in hosts:
        lines += [f'[host."{host}"]', '  capabilities = ["pull", "resolve"]', ""]
    path = Path(hosts_dir) / registry / "hosts.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


class Containerd:
    """A private ``containerd`` daemon, stopped by PID (and its mounts cleaned) on exit.

    Parameters:
        workdir: directory for config, root, state and log (created if missing).
        snapshotter: snapshotter ``ctr`` unpacks with (``overlayfs`` or ``native``).
        namespace: containerd namespace ``ctr`` works in (``k8s.io`` with the CRI plugin).
        start_timeout: seconds to wait for the socket to answer.
        cri_config_path: run the CRI plugin with this registry ``config_path`` (certs.d).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        snapshotter: str = "overlayfs",
        namespace: str | None = None,
        start_timeout: float = 20.0,
        cri_config_path: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.snapshotter = snapshotter
        self.cri_config_path = cri_config_path
        self.namespace = namespace or ("k8s.io" if cri_config_path is not None else "shoal-test")
        self.start_timeout = start_timeout
        self.root = self.workdir / "root"
        self.state = self.workdir / "state"
        self.config_path = self.workdir / "config.toml"
        self.log_path = self.workdir / "containerd.log"
        self.hosts_dir = self.workdir / "hosts"
        self._socket_dir: Path | None = None
        self.address = str(self.workdir / "containerd.sock")
        self._process: ManagedProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError("containerd already started")
        require("containerd")
        require("ctr")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if len(self.address) > _MAX_SOCKET_PATH:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="shoal-ctrd-", dir="/tmp"))
            self.address = str(self._socket_dir / "c.sock")
        self.config_path.write_text(self._config())
        self._process = ManagedProcess(["containerd", "--config", str(self.config_path)], stdout=self.log_path)
        try:
            wait_until(
                self._answers,
                what=f"containerd on {self.address}",
                timeout=self.start_timeout,
                process=self._process,
                interval=0.1,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _config(self) -> str:
        if self.cri_config_path is None:
            cri = ['disabled_plugins = ["io.containerd.grpc.v1.cri"]']
        else:
            cri = [
                '[plugins."io.containerd.grpc.v1.cri"]',
                "  disable_cgroup = true",
                "  disable_apparmor = true",
                "  restrict_oom_score_adj = true",
                '  [plugins."io.containerd.grpc.v1.cri".cni]',
                f'    bin_dir = "{self.workdir / "cni-bin"}"',
                f'    conf_dir = "{self.workdir / "cni-conf"}"',
                '  [plugins."io.containerd.grpc.v1.cri".registry]',
                f'    config_path = "{self.cri_config_path}"',
            ]
        return "\n".join(
            [
                "version = 2",
                f'root = "{self.root}"',
                f'state = "{self.state}"',
                *cri,
                "[grpc]",
                f'  address = "{self.address}"',
                "[debug]",
                '  level = "info"',
                '[plugins."io.containerd.internal.v1.opt"]',
                f'  path = "{self.workdir / "opt"}"',
                "",
            ]
        )

    def _answers(self) -> bool:
        if not Path(self.address).exists():
            return False
        return self.ctr("version", check=False, timeout=5).returncode == 0

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop(timeout=15)
            self._process = None
        self._unmount()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def _unmount(self) -> None:
        """Unmount anything left under our root or state, deepest first."""
        ours = (str(self.root) + "/", str(self.state) + "/")
        mounts: list[str] = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(ours):
                    mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=30)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- ctr -----------------------------------------------------------------------------

    def ctr(self, *args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run ``ctr -a SOCK -n NAMESPACE ARGS``; raise with its output if ``check`` fails."""
        argv = [require("ctr"), "-a", self.address, "-n", self.namespace, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"ctr {' '.join(args)} failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-2000:]}"
            )
        return result

    def pull(
        self,
        ref: str,
        *,
        hosts_dir: Path | None = None,
        user: str | None = None,
        platform: str | None = None,
        check: bool = True,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """``ctr image pull --plain-http`` (fetch and unpack) with the given hosts tree."""
        args = ["image", "pull", "--plain-http", "--snapshotter", self.snapshotter]
        args += ["--hosts-dir", str(hosts_dir or self.hosts_dir)]
        if user is not None:
            args += ["--user", user]
        if platform is not None:
            args += ["--platform", platform]
        return self.ctr(*args, ref, check=check, timeout=timeout)

    def pull_direct(
        self,
        ref: str,
        *,
        user: str | None = None,
        platform: str | None = None,
        check: bool = True,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """Pull straight from the registry named in ``ref`` (no mirror)."""
        write_hosts_toml(self.hosts_dir, _registry_of(ref))
        return self.pull(ref, hosts_dir=self.hosts_dir, user=user, platform=platform, check=check, timeout=timeout)

    def pull_via_mirror(
        self,
        ref: str,
        mirror_url: str,
        hosts_dir: Path | None = None,
        *,
        user: str | None = None,
        platform: str | None = None,
        check: bool = True,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """Pull ``ref`` with ``mirror_url`` as its registry's mirror (server as fallback)."""
        hosts_dir = hosts_dir or self.hosts_dir
        write_hosts_toml(hosts_dir, _registry_of(ref), mirrors=[mirror_url])
        return self.pull(ref, hosts_dir=hosts_dir, user=user, platform=platform, check=check, timeout=timeout)

    def cri_pull(self, ref: str, *, username: str | None = None, password: str | None = None) -> str:
        """Pull ``ref`` through the CRI plugin, as kubelet does; returns the image ref."""
        from shoal.testing.cri import CriClient

        if self.cri_config_path is None:
            raise RuntimeError("start Containerd with cri_config_path to pull through CRI")
        with CriClient(self.address) as client:
            return client.pull_image(ref, username=username, password=password)

    def images(self) -> list[str]:
        """References of the images containerd knows."""
        return self.ctr("image", "ls", "-q").stdout.split()

    def content_digests(self) -> set[str]:
        """Digests of every blob in containerd's content store."""
        return set(self.ctr("content", "ls", "-q").stdout.split())

    def unpacked(self, ref: str) -> bool:
        """Whether ``ref`` is unpacked into the snapshotter (``ctr image check``)."""
        out = self.ctr("image", "check", "--snapshotter", self.snapshotter, f"name=={ref}").stdout
        rows = [line for line in out.splitlines()[1:] if line.split()[:1] == [ref]]
        return bool(rows) and rows[0].split()[-1] == "true"

    def forget(self, ref: str | None = None) -> None:
        """Remove ``ref`` (or every image) and its content, so the next pull fetches again."""
        refs = [ref] if ref is not None else self.images()
        if refs:
            self.ctr("image", "rm", "--sync", *refs)
        digests = sorted(self.content_digests())
        if digests:
            self.ctr("content", "rm", *digests)


def _registry_of(ref: str) -> str:
    first, sep, _ = ref.partition("/")
    if not sep or not ("." in first or ":" in first or first == "localhost"):
        raise ValueError(f"{ref!r} must name its registry host (e.g. 127.0.0.1:5000/repo:tag)")
    return first
