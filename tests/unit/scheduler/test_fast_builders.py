"""The scheduler builds its answers without the dataclasses' ``__init__``: the objects must be
the same as the constructors' (equal, hashed alike, still frozen)."""

from __future__ import annotations

import dataclasses

import pytest

from shoal.p2p.protocol import PeerInfo, TaskView
from shoal.scheduler.state import _fast_builder, new_peer_info, new_task_view


def test_a_built_task_view_is_the_constructors() -> None:
    parents = [PeerInfo("p1", "10.0.0.1:65001", False, 3)]
    args = ("fetcher", parents, 1 << 27, 1 << 21, 10.0, "p0", 7, True)
    built, made = new_task_view(*args), TaskView("fetcher", parents, 1 << 27, 1 << 21, 10.0, "p0", 7, True)
    assert type(built) is TaskView
    assert built == made
    assert tuple(getattr(built, f.name) for f in dataclasses.fields(TaskView)) == args
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.role = "peer"  # type: ignore[misc]


def test_a_built_peer_info_is_the_constructors() -> None:
    built, made = new_peer_info("p1", "10.0.0.1:65001", True, 64), PeerInfo("p1", "10.0.0.1:65001", True, 64)
    assert built == made
    assert hash(built) == hash(made)
    assert {built: 1}[made] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.pieces = 0  # type: ignore[misc]


def test_a_builder_refuses_fields_out_of_order() -> None:
    """A field added or moved in ``protocol.py`` must not be filled from the wrong argument."""
    with pytest.raises(TypeError):
        _fast_builder(PeerInfo, ("address", "peer_id", "complete", "pieces"))
    with pytest.raises(TypeError):
        _fast_builder(PeerInfo, ("peer_id", "address", "complete"))


def test_a_builder_refuses_a_class_whose_constructor_checks() -> None:
    """A ``__post_init__`` added in ``protocol.py`` would be skipped by the builder: refused
    at import rather than answers the constructor would have refused."""

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        peer_id: str
        address: str
        complete: bool = False
        pieces: int = 0

        def __post_init__(self) -> None:
            if self.pieces < 0:
                raise ValueError("pieces < 0")

    with pytest.raises(TypeError):
        _fast_builder(Checked, ("peer_id", "address", "complete", "pieces"))
