"""free_port: a port no client socket can take before the listener binds it, free on every host."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.demo import fleet as fleet_module
from shoal.demo import procs
from shoal.demo.fleet import LocalFleet
from shoal.demo.procs import free_port


def _ephemeral() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


class _Draws:
    """Stands in for the module's random source: the given ports first, then a fallback."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports

    def randrange(self, low: int, high: int) -> int:
        return self.ports.pop(0) if self.ports else low + 4321


@pytest.fixture
def held() -> Iterator[socket.socket]:
    """A client-like socket bound on 127.0.0.3 (not listening), as an outgoing connection is."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.3", 0))
    yield sock
    sock.close()


def test_the_port_is_below_the_ephemeral_range() -> None:
    low, _ = _ephemeral()
    ports = {free_port() for _ in range(20)}
    assert all(port < low for port in ports), sorted(ports)


def test_the_port_is_below_the_kubernetes_node_ports() -> None:
    ports = {free_port() for _ in range(200)}
    assert all(port < 30000 for port in ports), sorted(ports)


def test_the_port_binds_on_every_host() -> None:
    port = free_port("127.0.0.2", "127.0.0.3", "127.0.0.4")
    for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, port))


def test_a_port_held_on_one_host_is_passed_over(monkeypatch: pytest.MonkeyPatch, held: socket.socket) -> None:
    taken = held.getsockname()[1]
    monkeypatch.setattr(procs, "_RANDOM", _Draws([taken, taken]))
    port = free_port("127.0.0.2", "127.0.0.3")
    assert port != taken
    assert port == procs._EPHEMERAL_FLOOR + 4321


def test_a_fleet_asks_for_a_port_free_on_every_agent_address(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    asked: list[tuple[str, ...]] = []

    def record(*hosts: str) -> int:
        asked.append(hosts)
        raise OSError("stop here")

    monkeypatch.setattr(fleet_module, "free_port", record)
    fleet = LocalFleet(tmp_path, nodes=3, registries={}, download_pattern="source", tls=False)
    with pytest.raises(OSError, match="stop here"):
        fleet.start()
    assert asked == [("127.0.0.2", "127.0.0.3", "127.0.0.4")]


def test_an_address_that_cannot_be_bound_is_reported_as_such() -> None:
    """Only a port in use is passed over: an address no socket can bind (not local, not
    configured, say 127.0.0.2 without an alias) fails at once with its own error, not after
    200 draws as 'no TCP port free'."""
    with pytest.raises(OSError, match="assign requested address") as caught:
        free_port("127.0.0.2", "192.0.2.1")  # TEST-NET-1: not an address of this host
    assert caught.value.errno == errno.EADDRNOTAVAIL, caught.value
