"""``--registry NAME[=URL]``: a URL that could break the files node-config writes is refused."""

from __future__ import annotations

import pytest

from shoal.core.registry_spec import RegistrySpecError, parse_registry


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("registry.test=http://127.0.0.1:5000/", ("registry.test", "http://127.0.0.1:5000")),
        (
            "mirror.test=https://mirror.example.com/v2-proxy/team",
            ("mirror.test", "https://mirror.example.com/v2-proxy/team"),
        ),
        ("v6.test=http://[::1]:5000", ("v6.test", "http://[::1]:5000")),
        ("ghcr.io", ("ghcr.io", "https://ghcr.io")),
    ],
)
def test_plain_urls(spec: str, expected: tuple[str, str]) -> None:
    assert parse_registry(spec) == expected


@pytest.mark.parametrize(
    "url",
    [
        'https://r.example.com\n[host."http://evil.example.com"]',
        "https://r.example.com\r\nx",
        "https://r.example.com/a b",
        "https://r.example.com\tx",
        'https://r.example.com/"quoted"',
        "https://r.example.com/[x]",
        "https://r.example.com/\x00",
        "https://r.example.com/\x7f",
        "https://r.example.com/a\u2028b",
        "https://r.example.com/?q=1",
        "https://r.example.com/#frag",
        "https://r.exa mple.com",
        "https://r.example.com:99999",
        "https://[nothex]:80",
        "https://",
        "ftp://r.example.com",
        "https://r.example.com\\x",
    ],
)
def test_refused_urls(url: str) -> None:
    with pytest.raises(RegistrySpecError) as info:
        parse_registry(f"r.example.com={url}")
    message = str(info.value)
    assert message.startswith("registry r.example.com: URL")
    assert "\n" not in message  # the value is shown escaped, on one line
