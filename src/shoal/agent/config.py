"""Agent configuration: flags and ``--config agent.yaml`` share these keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shoal.agent.connections import ConnectionLimits
from shoal.agent.swarm_settings import SwarmSettings, SwarmSettingsError, parse_swarm
from shoal.core.aliases import AliasError, alias_table
from shoal.core.registry_spec import parse_registry as parse_registry  # re-exported
from shoal.core.units import parse_duration, parse_size
from shoal.p2p.tls import is_zone

DEFAULT_PORT = 65001
DOWNLOAD_PATTERNS = ("p2p", "source")


class ConfigError(ValueError):
    """A configuration value that cannot be used, with the key it came from."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything ``shoal agent`` needs; defaults follow the brief (port 65001, 24h, 512M)."""

    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    """host:port the mirror (and the peer endpoints) listen on."""
    advertise: str | None = None
    """host:port peers use to reach this agent; default: the listen address."""
    registries: dict[str, str] = field(default_factory=dict)
    """registry name as written in image references -> base URL to fetch it from."""
    cache_dir: Path = Path("/var/lib/shoal")
    cache_ttl: float = 24 * 3600.0
    """seconds since last access after which a cached blob is deleted."""
    cache_max_size: int | None = None
    """bytes; least recently used blobs are evicted beyond it. None: only the disk limits it."""
    schedulers: tuple[str, ...] = ()
    zone: str = ""
    """this node's topology zone (its ``topology.kubernetes.io/zone`` label), sent to the
    scheduler, which prefers parents in the same zone; "" when unknown. With a node
    certificate the scheduler takes the zone the certificate names (read from the Node)."""
    ratelimit: int = 512 << 20
    """total upload+download bytes per second for peer traffic and origin fetches."""
    download_pattern: str = "p2p"
    peer_token_file: Path | None = None
    insecure_no_peer_auth: bool = False
    """serve peers (and ask the scheduler) without a peer secret: for labs only, logged loudly."""
    insecure_peer_wire: bool = False
    """run the peer wire in clear even with ``tls_dir``: for lab comparisons only, logged loudly."""
    auth_cache_ttl: float = 60.0
    """seconds a registry's yes/no on (credentials, repository, digest) is reused for cached content."""
    max_connections: int = 4096
    """open client and peer connections; beyond it the longest-idle one is closed, or the new one
    refused (503) when all are busy. Capped below the process's file-descriptor limit."""
    header_timeout: float = 10.0
    """seconds a new connection has to send its first complete request."""
    keepalive_timeout: float = 60.0
    """seconds an idle keep-alive connection is kept between requests."""
    send_timeout: float = 30.0
    """seconds each 8 MiB of a blob response may take to leave; a client that stops reading
    is cut off after it (at least ~270 KiB/s keeps a response going)."""
    alias_port: int | None = None
    """port of the webhook's rewrite alias hosts (``<registry host>:<port>``); default: listen port."""
    alias_domain: str = ""
    """DNS suffix of the rewrite alias hosts, as given to the webhook and node-config."""
    tls_dir: Path | None = None
    """this node's TLS material (ca.pem, node.pem, node.key; see ``shoal.p2p.tls``): kept
    current by enrolling with the scheduler; given, the peer wire and the scheduler calls are
    TLS 1.3 with node certificates on both sides."""
    scheduler_ca: Path | None = None
    """CA bundle the scheduler's certificate must chain to before the first enrollment
    (the chart mounts the CA's certificate); default: ``tls_dir``/ca.pem."""
    enroll_token_file: Path | None = None
    """the Pod's projected ServiceAccount token (audience ``shoal``), proof of this node at
    enrollment; None: the peer token proves membership (a lab)."""
    insecure_no_tls: bool = False
    """call http:// schedulers (the peer token then crosses the network in clear): labs only."""
    outage_grace: float = 24 * 3600.0
    """seconds after the registry last confirmed a client's credentials for a repository during
    which, while the registry cannot answer, what the cluster holds of it is still served to
    that client (marked stale). 0 turns this off."""
    registry_timeout: float = 5.0
    """seconds from a request to the registry's response headers: what a hung registry costs
    before the agent serves what it holds (and marks the registry down)."""
    outage_probe_interval: float = 2.0
    """seconds between probes of a registry marked down; its first answer ends the outage."""
    containerd_content_dir: Path | None = None
    """containerd's content store (``.../io.containerd.content.v1.content``), read-only: blobs
    the node's runtime holds are served from it (verified, after the access check)."""
    swarm: SwarmSettings = field(default_factory=SwarmSettings)
    """the swarm's knobs (YAML ``swarm:`` mapping; a few also as flags), see ``shoal.agent.swarm_settings``."""

    def __post_init__(self) -> None:
        if self.download_pattern not in DOWNLOAD_PATTERNS:
            raise ConfigError(
                f"download_pattern must be one of {', '.join(DOWNLOAD_PATTERNS)}, not {self.download_pattern!r}"
            )
        split_hostport(self.listen, "listen")
        if self.advertise is not None:
            split_hostport(self.advertise, "advertise")
        if not self.registries:
            raise ConfigError("at least one --registry NAME[=URL] is required")
        if self.peer_token_file is not None and self.insecure_no_peer_auth:
            raise ConfigError("peer_token_file and insecure_no_peer_auth: choose one")
        if self.p2p_enabled and self.peer_token_file is None and not self.insecure_no_peer_auth:
            raise ConfigError(
                "p2p mode needs a peer secret: --peer-token-file FILE (the chart creates one), "
                "or --insecure-no-peer-auth in a lab where anyone reaching the port may read every cached blob"
            )
        if self.outage_grace < 0:
            raise ConfigError(f"outage_grace must be 0 (off) or positive, not {self.outage_grace:g}")
        if min(self.registry_timeout, self.outage_probe_interval) <= 0:
            raise ConfigError("registry_timeout and outage_probe_interval must be positive")
        if min(self.max_connections, self.header_timeout, self.keepalive_timeout, self.send_timeout) <= 0:
            raise ConfigError("max_connections, header_timeout, keepalive_timeout and send_timeout must be positive")
        try:
            _ = self.aliases
        except AliasError as exc:
            raise ConfigError(f"alias_domain: {exc}") from None
        if self.zone and not is_zone(self.zone):
            raise ConfigError(
                f"zone: {self.zone[:80]!r} is not a zone name (a label value: letters, digits, '-_.', at most 63)"
            )

    @property
    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(self.max_connections, self.header_timeout, self.keepalive_timeout)

    @property
    def aliases(self) -> dict[str, str]:
        """Alias name -> registry: the rewrite hosts and CRI-O path names the agent answers to."""
        port = self.alias_port if self.alias_port is not None else split_hostport(self.listen, "listen")[1]
        return alias_table(self.registries, port or None, self.alias_domain, strict=False)

    @property
    def advertise_address(self) -> str:
        return self.advertise or self.listen

    def peer_token(self) -> str | None:
        """The shared peer secret, read from ``peer_token_file`` (None: peers are not checked)."""
        if self.peer_token_file is None:
            return None
        try:
            token = self.peer_token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"peer_token_file: {exc}") from None
        if not token:
            raise ConfigError(f"peer_token_file: {self.peer_token_file} is empty")
        return token

    @property
    def peer_wire_tls(self) -> Path | None:
        """The TLS directory the peer wire uses (None: it runs in clear)."""
        return None if self.insecure_peer_wire else self.tls_dir

    @property
    def p2p_enabled(self) -> bool:
        return self.download_pattern == "p2p" and bool(self.schedulers)


def split_hostport(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key}: want HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _registries(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        specs = [f"{k}={v}" if v else str(k) for k, v in value.items()]
    elif isinstance(value, list):
        specs = [str(v) for v in value]
    elif isinstance(value, str):
        specs = [s for s in value.split(",") if s.strip()]
    else:
        raise ConfigError("registries: want a mapping NAME: URL, a list or a comma-separated string")
    return dict(parse_registry(spec) for spec in specs)


def load_config(values: dict[str, Any]) -> AgentConfig:
    """Build a config from YAML-style keys (units as strings allowed), rejecting unknown keys."""
    known = set(AgentConfig.__dataclass_fields__)
    unknown = set(values) - known - {"registry", "scheduler"}
    if unknown:
        raise ConfigError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    try:
        for key, value in values.items():
            if value is None:
                continue
            if key == "swarm":
                kwargs["swarm"] = parse_swarm(value)
            elif key in ("registries", "registry"):
                kwargs["registries"] = {**kwargs.get("registries", {}), **_registries(value)}
            elif key in ("schedulers", "scheduler"):
                items = [value] if isinstance(value, str) else list(value)
                kwargs["schedulers"] = tuple(str(s).rstrip("/") for s in items)
            elif key in (
                "cache_ttl",
                "auth_cache_ttl",
                "header_timeout",
                "keepalive_timeout",
                "send_timeout",
                "outage_grace",
                "registry_timeout",
                "outage_probe_interval",
            ):
                kwargs[key] = parse_duration(value)
            elif key in ("cache_max_size", "ratelimit"):
                kwargs[key] = parse_size(value)
            elif key in (
                "cache_dir",
                "peer_token_file",
                "tls_dir",
                "scheduler_ca",
                "enroll_token_file",
                "containerd_content_dir",
            ):
                kwargs[key] = Path(value)
            else:
                kwargs[key] = value
    except SwarmSettingsError as exc:
        raise ConfigError(str(exc)) from None
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return AgentConfig(**kwargs)


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: want a mapping of keys")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
