"""A renewed certificate is served to new connections without a restart."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import subprocess
from pathlib import Path

from aiohttp import web

from shoal.webhook.certreload import CertReloader
from shoal.webhook.server import tls_context


def make_pair(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def mount(tmp_path: Path, version: str) -> None:
    """kubelet's Secret volume: ``tls.crt -> ..data/tls.crt``, ``..data -> <version dir>``."""
    link = tmp_path / "mount" / "..data"
    tmp = tmp_path / "mount" / "..data_tmp"
    tmp.symlink_to(tmp_path / version)
    os.replace(tmp, link)


async def served_fingerprint(port: int) -> str:
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return hashlib.sha256(der).hexdigest()


def fingerprint(cert: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


class TestCertReload:
    """A Secret volume update (symlink swap) switches the served certificate."""

    async def test_rotation(self, tmp_path: Path) -> None:
        old, _ = await asyncio.to_thread(make_pair, tmp_path / "v1", "old")
        new, _ = await asyncio.to_thread(make_pair, tmp_path / "v2", "new")
        (tmp_path / "mount").mkdir()
        mount(tmp_path, "v1")
        for name in ("tls.crt", "tls.key"):
            (tmp_path / "mount" / name).symlink_to(Path("..data") / name)
        cert, key = tmp_path / "mount/tls.crt", tmp_path / "mount/tls.key"
        context = tls_context(str(cert), str(key))
        reloader = CertReloader(context, cert, key)
        runner = web.AppRunner(web.Application())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            assert await served_fingerprint(port) == fingerprint(old)
            assert not reloader.check()  # nothing changed
            mount(tmp_path, "v2")
            assert reloader.check()
            assert await served_fingerprint(port) == fingerprint(new)
        finally:
            await runner.cleanup()

    def test_mismatched_pair_keeps_the_old_one(self, tmp_path: Path) -> None:
        cert, key = make_pair(tmp_path / "a", "a")
        _, other_key = make_pair(tmp_path / "b", "b")
        context = tls_context(str(cert), str(key))
        reloader = CertReloader(context, cert, key)
        key.write_bytes(other_key.read_bytes())  # the key of the next renewal arrived first
        assert not reloader.check()
        cert.write_bytes((tmp_path / "b/tls.crt").read_bytes())  # then its certificate
        assert reloader.check()
