"""The serving rules: a child hears of a piece once, only verified pieces go out, and a
superseeding fetcher sends each new piece to a few children only."""

from __future__ import annotations

from shoal.p2p.serving import ServingBook

D = "sha256:" + "ab" * 32


def book(copies: int = 2) -> ServingBook:
    return ServingBook(superseed_copies=copies)


def one_copy_to_a_refused_to_b() -> ServingBook:
    """Superseeding with one copy: child a was given piece 0, child b was refused it."""
    b = book(copies=1)
    b.interested("a", D, [0])
    b.interested("b", D, [0])
    b.superseed(D)
    assert b.accept("a", D, 0, held=True)
    assert not b.accept("b", D, 0, held=True)
    return b


class TestTelling:
    def test_the_bitfield_is_what_is_held_and_a_have_goes_once(self) -> None:
        b = book()
        assert b.interested("a", D, [0, 2]) == frozenset({0, 2})
        assert b.interested("b", D, []) == frozenset()
        assert b.announce(D, [1, 2]) == [("a", [1]), ("b", [1, 2])]
        assert b.announce(D, [1, 2]) == []

    def test_nobody_interested_hears_nothing(self) -> None:
        b = book()
        assert b.announce(D, [0]) == []
        b.interested("a", D, [])
        b.not_interested("a", D)
        assert b.announce(D, [0]) == []

    def test_a_refused_piece_is_announced_again(self) -> None:
        b = book()
        b.interested("a", D, [0])
        assert not b.accept("a", D, 1, held=False)
        b.refuse("a", D, 0)  # the owner's own reason (a full send queue)
        assert b.announce(D, [0, 1]) == [("a", [0, 1])]


class TestSuperseeding:
    def test_a_new_piece_goes_to_as_many_children_as_allowed(self) -> None:
        b = book(copies=2)
        for child in "abc":
            b.interested(child, D, [])
        b.superseed(D)
        assert b.accept("a", D, 0, held=True)
        assert b.accept("b", D, 0, held=True)
        assert not b.accept("c", D, 0, held=True)
        b.dropped("a", D, 0)  # a's copy was cancelled before it left
        assert b.accept("c", D, 0, held=True)

    def test_without_superseeding_every_child_gets_it(self) -> None:
        b = book(copies=1)
        assert all(b.accept(child, D, 0, held=True) for child in "abcd")

    def test_the_blob_complete_announces_the_refused_and_untold(self) -> None:
        b = one_copy_to_a_refused_to_b()
        assert b.blob_complete(D, 3) == [("a", [1, 2]), ("b", [0, 1, 2])]
        assert b.accept("c", D, 0, held=True)  # complete: no limit any more

    def test_stopping_announces_the_refused_pieces_held(self) -> None:
        b = book(copies=1)
        b.interested("a", D, [0, 1])
        b.interested("b", D, [0, 1])
        b.superseed(D)
        assert b.accept("a", D, 0, held=True)
        assert b.accept("a", D, 1, held=True)
        assert not b.accept("b", D, 0, held=True)
        assert not b.accept("b", D, 1, held=True)
        assert b.stop_superseeding(D, holds=lambda i: i == 1) == [("b", [1])]
        assert b.accept("b", D, 0, held=True)
        assert b.stop_superseeding(D, holds=lambda i: True) == []  # not superseeding any more

    def test_a_blob_whole_here_is_served_to_all_while_the_book_still_limits(self) -> None:
        b = book(copies=1)
        b.superseed(D)
        assert b.accept("a", D, 0, held=True)
        assert not b.accept("b", D, 0, held=True)
        assert b.accept("b", D, 0, held=True, complete=True)  # committed, not yet announced

    def test_a_blob_fetched_again_is_limited_again(self) -> None:
        b = book(copies=1)
        b.interested("a", D, [])
        b.superseed(D)
        b.blob_complete(D, 2)
        b.superseed(D)  # evicted, and this node fetches it again
        assert b.accept("a", D, 0, held=True)
        assert not b.accept("b", D, 0, held=True)

    def test_a_copy_asked_for_again_by_the_same_child_is_one_copy(self) -> None:
        b = book(copies=2)
        b.superseed(D)
        assert b.accept("a", D, 0, held=True)
        assert b.accept("a", D, 0, held=True)  # its first copy failed verification
        assert b.accept("b", D, 0, held=True)

    def test_a_child_gone_gives_back_the_copies_it_was_given(self) -> None:
        """A node that died with the only copies of a piece must not leave the piece refused
        to everyone else until the fetch ends."""
        b = book(copies=1)
        b.superseed(D)
        assert b.accept("a", D, 0, held=True)
        assert not b.accept("b", D, 0, held=True)
        b.gone("a")
        assert b.accept("b", D, 0, held=True)
        assert not b.accept("c", D, 0, held=True)

    def test_a_cancel_gives_back_only_that_childs_copy(self) -> None:
        b = book(copies=1)
        b.superseed(D)
        assert b.accept("a", D, 0, held=True)
        b.dropped("b", D, 0)  # b never had it: nothing to give back
        assert not b.accept("c", D, 0, held=True)


class TestForgetting:
    def test_a_child_gone_hears_nothing_more_of_any_blob(self) -> None:
        b, other = book(), "sha256:" + "cd" * 32
        b.interested("a", D, [])
        b.interested("a", other, [])
        b.interested("b", D, [])
        b.gone("a")
        assert b.announce(D, [0]) == [("b", [0])]
        assert b.announce(other, [0]) == []

    def test_a_gone_child_is_not_announced_its_refused_pieces(self) -> None:
        b = one_copy_to_a_refused_to_b()
        b.gone("b")
        assert b.stop_superseeding(D, holds=lambda i: True) == []

    def test_nothing_is_kept_of_a_blob_nobody_asks_for(self) -> None:
        b = book(copies=1)
        b.interested("a", D, [0])
        b.superseed(D)
        assert b.accept("a", D, 0, held=True)
        assert not b.accept("b", D, 0, held=True)
        assert b.accept("c", "sha256:" + "cd" * 32, 0, held=True)
        b.blob_complete(D, 1)
        b.not_interested("a", D)
        b.gone("b")
        assert b.blobs == {}
