"""Scheduler configuration: ``shoal scheduler`` flags map 1:1 onto these fields."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from shoal.core.hosts import is_loopback_host
from shoal.scheduler.policy import PARENT_POLICIES

DEFAULT_PORT = 8002


class ConfigError(ValueError):
    """A configuration value that cannot be used, with the field it came from."""


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Everything ``shoal scheduler`` needs. Durations are seconds."""

    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    """host:port to serve the API on."""
    peer_token: str | None = None
    """shared secret every call must carry as ``Authorization: Bearer``. Required by the server
    unless ``insecure_no_peer_auth``: anyone who reaches the port could otherwise steer every
    pull (hand out parents, take origin leases, publish piece hashes)."""
    insecure_no_peer_auth: bool = False
    """serve ``/v1/`` without checking a token (labs only; logged loudly at start)."""
    max_blob_size: int = 1 << 40
    """largest blob a task may describe (bytes); bigger joins and reports are refused with 400."""
    max_tasks: int = 100_000
    """tasks held at once; a join or report that would start one more is refused (503) until
    idle ones expire. Bounds memory against a peer inventing digests."""
    lease_ttl: float = 15.0
    """the origin fetcher loses its lease after this long without a report. A fetcher busy
    serving a whole swarm (or throttled by its CPU limit), or a scheduler with a backlog, can
    miss several seconds of reports while still fetching; at 5 s, a saturated 20-node fleet
    moved leases from live fetchers and the registry served those layers twice."""
    stall_timeout: float = 20.0
    """the origin fetcher loses its lease when its ``contiguous`` has not grown for this long."""
    peer_ttl: float = 30.0
    """peers not heard from (join or report) for this long are dropped from their tasks."""
    max_parents: int = 4
    """parents handed to one downloader."""
    fallback_leases: int = 2
    """downloaders of one blob that may fetch from the origin on their own at a time, after
    their swarm download stalled (each lease lasts ``lease_ttl`` after its holder's last
    report): on saturated cores every node stalls at once, and this keeps the registry's
    egress near one image instead of N."""
    max_children: int = 8
    """children a parent takes (assigned within ``child_window``) before others are preferred."""
    child_window: float = 30.0
    """a child assignment counts against its parent's load for this long."""
    suspect_ttl: float = 60.0
    """a peer named in ``failed_parents`` is not handed out (nor made fetcher) for this long."""
    task_ttl: float = 3600.0
    """tasks (and their piece hashes) without any join or report for this long are dropped."""
    parent_policy: str = "least-loaded"
    """name of the parent selection policy (see ``shoal.scheduler.policy.PARENT_POLICIES``)."""
    expire_interval: float = 5.0
    """how often dead peers and idle tasks are swept."""
    max_wait: float = 30.0
    """upper bound on the ``wait`` of the hashes long-poll."""
    tls_ca_dir: Path | None = None
    """directory with the CA key pair (``tls.crt``/``tls.key``): the API is served over TLS 1.3
    with a certificate issued from it, and agents enroll for node certificates. None: plain
    HTTP, which the CLI allows only with ``insecure_no_tls``."""
    insecure_no_tls: bool = False
    """serve plain HTTP (labs only; logged loudly at start)."""
    tls_names: tuple[str, ...] = ()
    """DNS names clients reach the scheduler by, in its certificate (``*.`` for the replicas)."""
    tls_ips: tuple[str, ...] = ()
    """IP addresses clients reach the scheduler by, in its certificate (``listen``'s own IP
    is added, unless it is a wildcard: see :attr:`certificate_ips`)."""
    cert_ttl: float = 24 * 3600.0
    """lifetime of issued node certificates (and the scheduler's own)."""
    agent_service_account: str | None = None
    """``NAMESPACE:NAME``: agents prove their node with this ServiceAccount's projected token,
    checked with the Kubernetes API. None: with the peer token (a lab)."""
    token_audience: str = "shoal"
    """the audience of the agents' projected ServiceAccount tokens."""
    kubeconfig: str | None = None
    """outside a cluster, the kubeconfig of the API server that checks tokens."""

    def __post_init__(self) -> None:
        split_hostport(self.listen)
        if self.peer_token is not None and not self.peer_token:
            raise ConfigError("peer_token: empty (use None for no token)")
        if self.peer_token is not None and self.insecure_no_peer_auth:
            raise ConfigError("insecure_no_peer_auth with a peer token: choose one")
        if not 0 < self.max_blob_size < 1 << 53:
            raise ConfigError(f"max_blob_size must be in 1..2**53-1, not {self.max_blob_size!r}")
        if self.max_tasks < 1:
            raise ConfigError(f"max_tasks must be >= 1, not {self.max_tasks}")
        for name in ("lease_ttl", "stall_timeout", "peer_ttl", "child_window", "suspect_ttl", "task_ttl"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, not {getattr(self, name)!r}")
        for name in ("expire_interval", "max_wait"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if self.max_parents < 1:
            raise ConfigError(f"max_parents must be >= 1, not {self.max_parents}")
        if self.fallback_leases < 1:
            raise ConfigError(f"fallback_leases must be >= 1, not {self.fallback_leases}")
        if self.max_children < 1:
            raise ConfigError(f"max_children must be >= 1, not {self.max_children}")
        if self.tls_ca_dir is not None and self.insecure_no_tls:
            raise ConfigError("insecure_no_tls with a TLS CA directory: choose one")
        for ip in self.tls_ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ConfigError(f"tls_ips: {ip!r} is not an IP address") from None
        if not self.cert_ttl >= 600:
            raise ConfigError(f"cert_ttl must be at least 600 seconds, not {self.cert_ttl!r}")
        if self.agent_service_account is not None:
            namespace, sep, name = self.agent_service_account.partition(":")
            if not sep or not namespace or not name:
                raise ConfigError(f"agent_service_account: want NAMESPACE:NAME, not {self.agent_service_account!r}")
        if self.parent_policy not in PARENT_POLICIES:
            raise ConfigError(
                f"parent_policy must be one of {', '.join(sorted(PARENT_POLICIES))}, not {self.parent_policy!r}"
            )


def certificate_ips(config: SchedulerConfig) -> tuple[str, ...]:
    """``tls_ips`` plus the IP ``listen`` names, when it names one (not 0.0.0.0 or ::)."""
    host = split_hostport(config.listen)[0]
    try:
        listen_ip = ipaddress.ip_address(host)
    except ValueError:
        return config.tls_ips
    if listen_ip.is_unspecified or any(ipaddress.ip_address(ip) == listen_ip for ip in config.tls_ips):
        return config.tls_ips
    return (*config.tls_ips, host)


def require_peer_auth(config: SchedulerConfig) -> None:
    """Refuse a server config with neither a peer token nor the explicit lab opt-out."""
    if config.peer_token is None and not config.insecure_no_peer_auth:
        raise ConfigError(
            "no peer token: give --peer-token-file (the secret the agents send), "
            "or --insecure-no-peer-auth to serve unauthenticated in a lab"
        )


def require_tls(config: SchedulerConfig) -> None:
    """Refuse a server config reachable from other hosts with neither a CA for TLS nor the
    explicit lab opt-out (on loopback nothing crosses a network)."""
    host = split_hostport(config.listen)[0]
    loopback = is_loopback_host(host)
    if config.tls_ca_dir is None and not config.insecure_no_tls and not loopback:
        raise ConfigError(
            "no TLS: give --tls-ca-dir DIR (a CA key pair; the chart mounts one), "
            "or --insecure-no-tls to serve plain HTTP in a lab (tokens then cross the network in clear)"
        )


def split_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"listen: want HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)
