"""The join rule of a download whose scheduler cannot be reached: a pure function of the
failures so far, the time waited and a random draw."""

from __future__ import annotations

import pytest

from shoal.agent import swarm


class TestJoinPause:
    """How long a download asks for an unreachable scheduler: bounded, jittered, growing."""

    def test_the_asking_stops_at_the_patience(self) -> None:
        waited, failures, pauses = 0.0, 0, []
        while (pause := swarm.join_pause(failures + 1, waited, 0.999)) is not None:
            failures += 1
            pauses.append(pause)
            waited += pause
        assert waited == pytest.approx(swarm.JOIN_PATIENCE)
        assert pauses[:5] == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0], rel=0.01)
        assert max(pauses) <= swarm.download.JOIN_LONGEST_PAUSE

    def test_a_slow_scheduler_is_asked_at_least_four_times(self) -> None:
        """Each join timing out after the call's 15 s bound: the patience alone would allow
        two; a scheduler swamped by a rollout's first second is asked four times."""
        waited, failures = 0.0, 0
        while True:
            waited += 15.0  # the attempt
            failures += 1
            pause = swarm.join_pause(failures, waited, 0.5)
            if pause is None:
                break
            waited += pause
        assert failures == swarm.download.JOIN_ATTEMPTS

    def test_each_pause_is_drawn_from_the_upper_half_of_its_step(self) -> None:
        assert swarm.join_pause(3, 0.0, 0.0) == pytest.approx(1.0)
        assert swarm.join_pause(3, 0.0, 0.5) == pytest.approx(1.5)
        assert swarm.join_pause(1, 29.9, 0.9) == pytest.approx(0.1)
        assert swarm.join_pause(4, 30.0, 0.0) is None
        assert swarm.join_pause(2, 31.0, 0.0) == pytest.approx(0.5)
