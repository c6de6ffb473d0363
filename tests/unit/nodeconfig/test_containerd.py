"""containerd's config_path, read from config.toml: set, unset, elsewhere, legacy mirrors."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.nodeconfig.containerd import check_config_path

CERTS = Path("/etc/containerd/certs.d")
CONFIG = Path("/etc/containerd/config.toml")
V2 = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'


@pytest.mark.parametrize(
    ("text", "ok", "words"),
    [
        (V2 + 'config_path = "/etc/containerd/certs.d"\n', True, "reads"),
        (V2 + 'config_path = "/etc/docker/certs.d:/etc/containerd/certs.d"\n', True, "reads"),
        (V2, False, "config_path is not set"),
        ("version = 2\n", False, "config_path is not set"),
        (None, False, "not found"),
        (V2 + 'config_path = "/etc/k3s/certs.d"\n', False, "does not include"),
        (
            V2 + 'config_path = "/etc/containerd/certs.d"\n'
            '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\nendpoint = ["https://x"]\n',
            False,
            "deprecated",
        ),
        ("version = 3\n", True, "reads"),  # containerd 2.x defaults config_path to certs.d
        ('version = 3\n[plugins."io.containerd.cri.v1.images".registry]\nconfig_path = "/x"\n', False, "does not"),
        ('[plugins.cri.registry]\nconfig_path = "/etc/containerd/certs.d"\n', True, "reads"),  # version 1
        ("not = toml = at all", False, "not valid TOML"),
    ],
)
def test_check(text: str | None, ok: bool, words: str) -> None:
    check = check_config_path(text, CERTS, CONFIG)
    assert check.ok is ok
    assert words in check.message
