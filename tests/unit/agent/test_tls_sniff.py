"""The ALPN a TLS client offers, read from real ClientHellos made by ``ssl.SSLObject``."""

from __future__ import annotations

import ssl

import pytest

from shoal.agent.tls_sniff import NotAClientHello, offered_alpn


def client_hello(alpn: list[str] | None) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="node.example")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class TestOfferedAlpn:
    """The protocols a ClientHello offers, or None until it is complete."""

    @pytest.mark.parametrize(
        ("alpn", "expected"),
        [
            (None, ()),
            (["http/1.1"], ("http/1.1",)),
            (["h2", "http/1.1"], ("h2", "http/1.1")),
            (["shoal-http/1"], ("shoal-http/1",)),
        ],
    )
    def test_a_whole_hello(self, alpn: list[str] | None, expected: tuple[str, ...]) -> None:
        assert offered_alpn(client_hello(alpn)) == expected

    def test_every_prefix_asks_for_more(self) -> None:
        hello = client_hello(["http/1.1"])
        for end in range(len(hello)):
            assert offered_alpn(hello[:end]) is None, end

    def test_a_hello_split_over_two_records(self) -> None:
        hello = client_hello(["http/1.1"])
        body = hello[5:]
        half = len(body) // 2
        records = b"".join(hello[:3] + len(part).to_bytes(2) + part for part in (body[:half], body[half:]))
        assert offered_alpn(records[: len(records) - 1]) is None
        assert offered_alpn(records) == ("http/1.1",)

    @pytest.mark.parametrize(
        "data",
        [
            b"GET / HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # a ServerHello
            b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03",  # a ClientHello shorter than its fields
        ],
    )
    def test_not_a_hello(self, data: bytes) -> None:
        with pytest.raises(NotAClientHello):
            offered_alpn(data)
