"""The simulator's network: max-min fair rates on hand-computed cases, and transfers over time."""

from __future__ import annotations

import numpy as np
import pytest
from bench.simulate.clock import Clock
from bench.simulate.maxmin import max_min_rates
from bench.simulate.network import Network

INF = np.inf


def rates(capacity: list[float], flows: list[tuple[int, ...]]) -> list[float]:
    width = max(len(f) for f in flows)
    padded = [list(f) + [f[-1]] * (width - len(f)) for f in flows]
    return [round(r, 6) for r in max_min_rates(np.array(capacity, dtype=float), np.array(padded, dtype=np.int64))]


class TestMaxMin:
    """Progressive filling gives the max-min fair rates computed by hand."""

    def test_one_resource_shared_equally(self) -> None:
        assert rates([9.0], [(0,), (0,), (0,)]) == [3.0, 3.0, 3.0]

    def test_a_flow_limited_elsewhere_leaves_its_share_to_the_others(self) -> None:
        # resource 0 (cap 10) carries flows a, b, c; flow c also crosses resource 1 (cap 2)
        assert rates([10.0, 2.0], [(0,), (0,), (0, 1)]) == [4.0, 4.0, 2.0]

    def test_upload_and_download_caps(self) -> None:
        # two uploaders (0: cap 10, 1: cap 4) to two downloaders (2: cap 6, 3: cap 100)
        # flows: 0->2, 0->3, 1->2. Resource 1 gives 1->2 at most 4; downloader 2 splits 6
        # between 0->2 and 1->2: 3 each; uploader 0 has 7 left for 0->3.
        assert rates([10.0, 4.0, 6.0, 100.0], [(0, 2), (0, 3), (1, 2)]) == [3.0, 7.0, 3.0]

    def test_chain_of_bottlenecks(self) -> None:
        # resource 0 cap 1 has flow x; x and y share resource 1 cap 5; y and z share resource 2 cap 5
        # x = 1; y = min(4, share at 2); z and y split 5 at 2 -> 2.5 each; y = 2.5, z = 2.5
        assert rates([1.0, 5.0, 5.0], [(0, 1), (1, 2), (2,)]) == [1.0, 2.5, 2.5]

    def test_unlimited_resource_is_ignored(self) -> None:
        assert rates([6.0, INF], [(0, 1), (0, 1)]) == [3.0, 3.0]

    def test_no_flows(self) -> None:
        assert max_min_rates(np.array([1.0]), np.zeros((0, 2), dtype=np.int64)).size == 0

    def test_every_resource_within_its_capacity_and_some_flow_bottlenecked(self) -> None:
        rng = np.random.default_rng(7)
        capacity = rng.uniform(1, 10, size=12)
        flows = rng.integers(0, 12, size=(60, 3))
        r = max_min_rates(capacity, flows)
        load = np.zeros(12)
        for f, row in enumerate(flows):
            for res in set(row.tolist()):
                load[res] += r[f]
        assert (load <= capacity * (1 + 1e-9)).all()
        # max-min: every flow crosses a saturated resource where it is among the fastest
        for f, row in enumerate(flows):
            assert any(
                load[res] >= capacity[res] * (1 - 1e-6)
                and r[f] >= max(r[g] for g, other in enumerate(flows) if res in other) * (1 - 1e-6)
                for res in set(row.tolist())
            )


class TestNetwork:
    """Transfers finish when their bytes went at the fair rates."""

    def drive(self, net: Network, clock: Clock, until: float = 100.0) -> None:
        while (t := net.next_time()) <= until:
            clock.now = t
            net.step(t)

    def test_two_downloads_from_one_uploader_share_it(self) -> None:
        clock = Clock()
        net = Network(clock, up=[100.0, 1000.0, 1000.0], down=[1000.0, 1000.0, 1000.0], rate_interval=0.0, batch=0.0)
        done: dict[str, float] = {}
        net.send(0, 1, 100, lambda: done.setdefault("a", clock.now))
        net.send(0, 2, 300, lambda: done.setdefault("b", clock.now))
        self.drive(net, clock)
        # both at 50 B/s until a ends at 2 s; then b alone at 100 B/s for its last 200 bytes
        assert done["a"] == pytest.approx(2.0)
        assert done["b"] == pytest.approx(4.0)
        assert net.sent_by[0] == pytest.approx(400)

    def test_a_link_sends_its_queue_in_order(self) -> None:
        clock = Clock()
        net = Network(clock, up=[10.0, 10.0], down=[10.0, 10.0], rate_interval=0.0, batch=0.0)
        done: list[tuple[str, float]] = []
        net.send(0, 1, 20, lambda: done.append(("first", clock.now)))
        net.send(0, 1, 10, lambda: done.append(("second", clock.now)))
        self.drive(net, clock)
        assert [name for name, _ in done] == ["first", "second"]
        assert [t for _, t in done] == pytest.approx([2.0, 3.0])

    def test_cancel_and_kill_stop_callbacks_and_count_what_went(self) -> None:
        clock = Clock()
        net = Network(clock, up=[10.0, 10.0, 10.0], down=[10.0, 10.0, 10.0], rate_interval=0.0, batch=0.0)
        done: list[str] = []
        t = net.send(0, 1, 100, lambda: done.append("cancelled"))
        net.send(0, 2, 100, lambda: done.append("killed"))
        clock.now = 1.0
        net.step(1.0)
        net.cancel(t)
        net.kill(2)
        self.drive(net, clock)
        assert done == []
        assert net.sent_by[0] == pytest.approx(10.0)  # 5 B/s each for one second

    def test_kill_frees_links_in_the_order_they_were_opened(self) -> None:
        # the slot a later flow takes, and so the order finished pieces are delivered in,
        # must not hang on where links sit in memory: else a churn run is not reproducible
        clock = Clock()
        n = 80
        net = Network(clock, up=[10.0] * n, down=[10.0] * n, rate_interval=0.0, batch=0.0)
        opened = []
        for dst in range(1, n):
            net.send(0, dst, 100, lambda: None)
            opened.append(net.links[(0, dst)].slot)
        net.kill(0)
        assert net.free[-len(opened) :] == opened

    def test_cross_zone_cap_and_bytes(self) -> None:
        clock = Clock()
        net = Network(
            clock, up=[100.0] * 3, down=[100.0] * 3, zones=[0, 1, 1], cross_zone=10.0, rate_interval=0.0, batch=0.0
        )
        done: dict[str, float] = {}
        net.send(0, 1, 10, lambda: done.setdefault("cross", clock.now))
        net.send(2, 1, 100, lambda: done.setdefault("local", clock.now))
        self.drive(net, clock)
        assert done["cross"] == pytest.approx(1.0)  # 10 B/s across zones
        assert done["local"] == pytest.approx(1.1)  # 90 B/s (node 1 shares its 100) for 1 s, then 100 B/s
        assert net.cross_zone_bytes == pytest.approx(10.0)

    def test_upload_slots_take_turns_one_piece_each(self) -> None:
        clock = Clock()
        net = Network(clock, up=[10.0] * 3, down=[100.0] * 3, rate_interval=0.0, batch=0.0, upload_slots=1)
        done: list[tuple[str, float]] = []
        net.send(0, 1, 10, lambda: done.append(("1a", clock.now)))
        net.send(0, 1, 10, lambda: done.append(("1b", clock.now)))
        net.send(0, 2, 10, lambda: done.append(("2a", clock.now)))
        self.drive(net, clock)
        # one link at a time at the full 10 B/s; node 2's piece goes between node 1's two
        assert [name for name, _ in done] == ["1a", "2a", "1b"]
        assert [t for _, t in done] == pytest.approx([1.0, 2.0, 3.0])
