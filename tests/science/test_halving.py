from __future__ import annotations

import pytest

from capacity_service.science.halving import SuccessiveHalving


def test_rungs_sit_at_first_times_eta_powers() -> None:
    halving = SuccessiveHalving(first_rung=10, eta=3, rungs=3)
    assert halving.milestones == [10, 30, 90]
    assert [halving.rung(s) for s in (0, 9, 10, 29, 30, 89, 90, 10_000)] == [
        -1, -1, 0, 0, 1, 1, 2, 2,
    ]  # fmt: skip


def test_a_trial_goes_on_only_in_the_best_third_of_its_rung() -> None:
    halving = SuccessiveHalving(first_rung=10, eta=3, rungs=2)
    # by hand: the first values at a rung go on only while they lead it (top 1 of < 6)
    assert halving.keep("a", 0, 10, 5.0)  # [5]: leads
    assert not halving.keep("b", 0, 10, 4.0)  # [5, 4]: not the best
    assert halving.keep("c", 0, 11, 6.0)  # [6, 5, 4]: leads
    assert not halving.keep("d", 0, 10, 5.5)  # 4 values, top 1 is 6
    assert not halving.keep("e", 0, 10, 5.0)  # 5 values, top 1
    assert halving.keep("f", 0, 10, 5.9)  # 6 values [6, 5.9, 5.5, 5, 5, 4]: top 2 go on
    # before the first rung and between rungs nothing is judged; each rung once per trial
    assert halving.keep("b", 0, 9, 0.0) and halving.keep("a", 0, 25, 0.0)
    assert halving.rung_reached("a") == 0 and halving.rung_reached("z") == -1
    # another bucket competes on its own: its first value leads it
    assert halving.keep("g", 1, 10, 0.1)
    # a trial that jumps past two rungs in one epoch is judged at the higher one only
    assert halving.keep("h", 0, 35, 1.0) and halving.rung_reached("h") == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="eta"):
        SuccessiveHalving(first_rung=10, eta=1)
