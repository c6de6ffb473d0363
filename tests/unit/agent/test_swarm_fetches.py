"""Each of a node's downloads hears whether another one fetches from the origin."""

from __future__ import annotations

from shoal.agent.swarm.fetches import NodeFetches
from shoal.p2p.download_state import NodeFetching


class Inbox:
    def __init__(self) -> None:
        self.got: list[bool] = []

    def __call__(self, event: NodeFetching) -> None:
        self.got.append(event.active)


def test_the_others_hear_of_a_fetch_and_its_end_the_fetcher_does_not() -> None:
    fetches = NodeFetches()
    a, b, c = Inbox(), Inbox(), Inbox()
    for name, inbox in (("a", a), ("b", b), ("c", c)):
        fetches.join(name, inbox)
    fetches.started("a")
    fetches.ended("a")
    assert (a.got, b.got, c.got) == ([], [True, False], [True, False])


def test_two_fetches_the_news_ends_with_the_last() -> None:
    fetches = NodeFetches()
    a, b, c = Inbox(), Inbox(), Inbox()
    for name, inbox in (("a", a), ("b", b), ("c", c)):
        fetches.join(name, inbox)
    fetches.started("a")
    fetches.started("b")  # a hears of b's; c knew already
    fetches.ended("a")  # b still fetches: c hears nothing, b hears a's ended
    assert (a.got, b.got, c.got) == ([True], [True, False], [True])
    fetches.ended("b")
    assert (a.got, c.got) == ([True, False], [True, False])


def test_a_late_joiner_hears_of_a_running_fetch_and_a_leaving_fetcher_ends_it() -> None:
    fetches = NodeFetches()
    a, b = Inbox(), Inbox()
    fetches.join("a", a)
    fetches.started("a")
    fetches.join("b", b)
    assert b.got == [True]
    fetches.leave("a")  # its download ended with the fetch still counted
    assert b.got == [True, False]
    fetches.ended("a")  # late word of a download gone: nothing more
    assert (a.got, b.got) == ([], [True, False])
