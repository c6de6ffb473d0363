"""Does containerd read ``certs.d``? Its CRI plugin uses ``hosts.toml`` files only when
``config_path`` is set (containerd 1.x default: unset; 2.x default: ``/etc/containerd/certs.d``).

Pure: :func:`check_config_path` takes the text of ``config.toml`` (or None when the file is
missing) and says what containerd will do with the directory node-config writes to.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# (config version, table holding `registry`) for containerd 1.x (v2 config) and 2.x (v3 config)
CRI_REGISTRY_TABLES = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.images"}
V2_DEFAULT_CONFIG_PATH = "/etc/containerd/certs.d:/etc/docker/certs.d"


@dataclass(frozen=True, slots=True)
class ConfigPathCheck:
    """The verdict: ``ok`` when containerd reads the certs.d directory, with a message either way."""

    ok: bool
    message: str
    config_path: str | None = None


def _registry_table(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    version = int(doc.get("version", 1))
    plugins = doc.get("plugins") or {}
    if version <= 1:
        table = plugins.get("cri") or {}
    else:
        table = plugins.get(CRI_REGISTRY_TABLES.get(version, CRI_REGISTRY_TABLES[3])) or {}
    registry = table.get("registry") or {}
    return version, registry if isinstance(registry, dict) else {}


def check_config_path(config_text: str | None, certs_dir: Path, config_file: Path) -> ConfigPathCheck:
    """Whether containerd configured by ``config_text`` reads hosts.toml files under ``certs_dir``."""
    how = (
        f'set  [plugins."io.containerd.grpc.v1.cri".registry] config_path = "{certs_dir}"  in {config_file} '
        "and restart containerd (containerd 2.x: the io.containerd.cri.v1.images table)"
    )
    if config_text is None:
        return ConfigPathCheck(
            False, f"{config_file} not found: containerd 1.x then has no config_path and ignores {certs_dir}; {how}"
        )
    try:
        doc = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as exc:
        return ConfigPathCheck(
            False, f"{config_file} is not valid TOML ({exc}); cannot tell whether containerd reads {certs_dir}"
        )
    version, registry = _registry_table(doc)
    config_path = registry.get("config_path")
    if not config_path and version >= 3:
        config_path = V2_DEFAULT_CONFIG_PATH
    if not config_path:
        return ConfigPathCheck(
            False, f"containerd's config_path is not set in {config_file}: containerd ignores {certs_dir}; {how}"
        )
    dirs = [Path(p) for p in str(config_path).split(":") if p]
    if certs_dir not in dirs:
        return ConfigPathCheck(
            False,
            f"containerd's config_path is {config_path!r}, which does not include {certs_dir}: "
            f"write there with --containerd-certs-dir, or add {certs_dir} to config_path",
            str(config_path),
        )
    legacy = [key for key in ("mirrors", "configs") if registry.get(key)]
    if legacy:
        return ConfigPathCheck(
            False,
            f"{config_file} sets both config_path and the deprecated registry.{'/'.join(legacy)}: "
            "containerd's CRI refuses that combination; move them to hosts.toml files",
            str(config_path),
        )
    return ConfigPathCheck(True, f"containerd reads {certs_dir} (config_path = {config_path!r})", str(config_path))
