"""Accuracy, sample-wise forgetting / backward transfer and their chance adjustment, on hand-computed fixtures."""

from __future__ import annotations

import random

import pytest

from posttrain.core.evaluate import SampleWise, accuracy, chance_transitions, sample_wise

BEFORE = [1, 1, 1, 0, 0, 0, 1, 0]
AFTER = [1, 0, 0, 1, 0, 0, 1, 1]  # items 1, 2 forgotten (1→0); items 3, 7 learned (0→1)


def test_accuracy():
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy([1, 0, 0, 0, 0]) == 0.2
    with pytest.raises(ValueError):
        accuracy([])


def test_sample_wise_counts_flips_that_the_average_hides():
    result = sample_wise(BEFORE, AFTER)
    assert result == SampleWise(accuracy_before=0.5, accuracy_after=0.5, forgetting=0.25, backward_transfer=0.25)
    # Accuracy is unchanged, yet a quarter of the items were forgotten: acc_after - acc_before = BT - F.
    assert result.accuracy_after - result.accuracy_before == result.backward_transfer - result.forgetting == 0.0
    assert result.forgetting_adjusted is None and result.backward_transfer_adjusted is None


def test_chance_transitions():
    assert chance_transitions(0.5, 0.5, k=4) == pytest.approx(1 / 12, abs=1e-15)
    assert chance_transitions(0.25, 0.25, k=4) == pytest.approx(0.1875, abs=1e-15)  # pure guessing
    assert chance_transitions(0.2, 0.6, k=2) == pytest.approx(0.32, abs=1e-15)
    assert chance_transitions(1.0, 0.3, k=4) == 0.0


def test_chance_adjusted_sample_wise():
    result = sample_wise(BEFORE, AFTER, k=4)
    assert result.forgetting == 0.25
    assert result.forgetting_adjusted == pytest.approx(0.25 - 1 / 12, abs=1e-15)
    assert result.backward_transfer_adjusted == pytest.approx(1 / 6, abs=1e-15)


def test_chance_adjustment_is_clipped_at_zero():
    before = [1, 0, 0, 0, 0, 0, 0, 0]
    after = [0, 0, 0, 0, 0, 0, 0, 0]
    # F = 1/8 is less than c = (7/8)(1)/3 = 7/24.
    result = sample_wise(before, after, k=4)
    assert result.forgetting == 0.125
    assert result.forgetting_adjusted == 0.0
    assert result.backward_transfer == 0.0
    assert result.backward_transfer_adjusted == 0.0


@pytest.mark.parametrize("k", [1, 0, -3])
def test_fewer_than_two_options_is_rejected(k):
    with pytest.raises(ValueError, match="k >= 2"):
        chance_transitions(0.5, 0.5, k)
    with pytest.raises(ValueError, match="k >= 2"):
        sample_wise(BEFORE, AFTER, k=k)


def test_length_mismatch_and_empty_are_rejected():
    with pytest.raises(ValueError, match="same items"):
        sample_wise([1, 0, 1], [1, 0])
    with pytest.raises(ValueError):
        sample_wise([], [])


def _simulate(known: float, k: int, n: int, seed: int) -> SampleWise:
    """Two evaluations of one unchanged model: each item is known (always right) with probability ``known``,
    otherwise guessed uniformly among k options, with the guess drawn afresh in each evaluation."""
    rng = random.Random(seed)
    is_known = [rng.random() < known for _ in range(n)]

    def run() -> list[bool]:
        return [kn or rng.randrange(k) == 0 for kn in is_known]

    return sample_wise(run(), run(), k=k)


def test_chance_adjustment_removes_pure_guessing_flips():
    # Nothing changes between the two evaluations; only redrawn guesses flip items.
    result = _simulate(known=0.0, k=4, n=20_000, seed=0)
    assert result.forgetting == pytest.approx(3 / 16, abs=0.01)  # raw forgetting: 1/4 right, then 3/4 wrong
    assert result.forgetting_adjusted == pytest.approx(0.0, abs=0.02)
    assert result.backward_transfer_adjusted == pytest.approx(0.0, abs=0.02)


def test_chance_adjustment_assumes_independent_guessing():
    # The correction (1 - a_b)(1 - a_a)/(k - 1) treats "guessed before" and "guessed after" as independent.
    # When the same half of the items stays unknown it removes only half of the chance flips:
    # raw F = 0.5 * 3/16 = 0.09375, c = 0.375 * 0.375 / 3 = 0.046875.
    result = _simulate(known=0.5, k=4, n=20_000, seed=1)
    assert result.forgetting == pytest.approx(0.09375, abs=0.01)
    assert result.forgetting_adjusted == pytest.approx(0.09375 - 0.046875, abs=0.01)
