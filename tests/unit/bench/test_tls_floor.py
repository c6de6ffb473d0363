"""bench.tls_floor moves the very bytes of the file in every design it times."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from bench import tls_floor

from shoal.p2p.tls import TlsDirectory
from shoal.testing.pki import TestCA


@pytest.mark.parametrize("design", ["clear", "channel", "sslsocket"])
def test_each_design_delivers_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, design: str) -> None:
    size = (2 << 20) + 12345
    data = os.urandom(size)
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    ca = TestCA.create()
    tls = (
        TlsDirectory(ca.issue(tmp_path / "a", "node-a", ips=("127.0.0.1",))),
        TlsDirectory(ca.issue(tmp_path / "b", "node-b", ips=("127.0.0.1",))),
    )
    received = bytearray()
    real = tls_floor._receive_all

    def keep(read: Callable[[memoryview], int], n: int) -> None:
        def reading(view: memoryview) -> int:
            got = read(view)
            received.extend(view[:got])
            return got

        real(reading, n)

    monkeypatch.setattr(tls_floor, "_receive_all", keep)
    designs = {"clear": tls_floor._clear, "channel": tls_floor._channel, "sslsocket": tls_floor._sslsocket}
    send_s, receive_s = tls_floor._timed(designs[design](blob, size, tls))
    assert bytes(received) == data
    assert send_s >= 0
    assert receive_s > 0


def test_the_crypto_floor_counts_both_directions(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(1 << 20))
    ca = TestCA.create()
    tls = (TlsDirectory(ca.issue(tmp_path / "a", "a", ips=("127.0.0.1",))), TlsDirectory(ca.issue(tmp_path / "b", "b")))
    send_s, receive_s = tls_floor._crypto(blob, 1 << 20, tls)
    assert send_s > 0
    assert receive_s > 0
