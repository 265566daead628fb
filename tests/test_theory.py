"""Lab 03 theory (``posttrain.methods.theory``): forward vs reverse KL on a two-mode Gaussian mixture.

Measured (plain SGD, 2000 steps; see the module docstring): forward KL on new data leaves 0.02-0.03 of the mass on
the old side at separation 4 (the floor there is Phi(-2) = 0.023 of the new mode itself); reverse KL keeps 0.50;
the old mean's largest drift falls from 0.82 (separation 2) to 0.0009 (separation 6), with the Bhattacharyya
coefficient. At separation 1.5 the two components swap places instead (drift 1.5), so the sweep starts at 2.
"""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.methods.theory import (
    bhattacharyya_coefficient,
    gaussian_log_pdf,
    grid,
    log_correlation,
    mixture_log_prob,
    reverse_kl,
    sampled_reverse_kl,
    train_mixture,
)
from posttrain.studies.replay_and_self_distillation import theory_study

SEPARATIONS = (2.0, 3.0, 4.0, 5.0, 6.0)


@pytest.mark.parametrize(("separation", "std"), [(0.0, 1.0), (1.0, 1.0), (3.0, 1.0), (2.0, 0.5)])
def test_bhattacharyya_coefficient_matches_the_overlap_integral(separation, std):
    x = torch.linspace(-12, 12 + separation, 20001, dtype=torch.float64)
    overlap = torch.trapezoid(((gaussian_log_pdf(x, 0.0, std) + gaussian_log_pdf(x, separation, std)) / 2).exp(), x)
    assert bhattacharyya_coefficient(separation, std) == pytest.approx(float(overlap), abs=1e-6)


def test_reverse_kl_of_two_unit_gaussians_is_half_the_squared_distance():
    x = grid(3.0)
    assert float(reverse_kl(gaussian_log_pdf(x, 1.0), gaussian_log_pdf(x, 3.0), x)) == pytest.approx(2.0, abs=1e-6)
    same = mixture_log_prob(x, 0.3, 0.0, 3.0)
    assert float(reverse_kl(same, same, x)) == pytest.approx(0.0, abs=1e-12)


def test_forward_kl_on_new_data_forgets_the_old_mode_and_replay_sets_its_weight():
    plain = train_mixture("forward", 4.0)
    assert plain.old_mass[0] > 0.85 and plain.old_mass[-1] < 0.05
    replayed = train_mixture("forward", 4.0, replay=0.1, optimizer="adam")
    assert replayed.old_weight[-1] == pytest.approx(0.1, abs=0.02)


@pytest.mark.parametrize("separation", [2.0, 4.0])
def test_reverse_kl_keeps_the_old_mass(separation):
    run = train_mixture("reverse", separation, lr=0.5)
    assert abs(run.old_mass[-1] - 0.5) <= 0.05


def test_old_mean_drift_shrinks_with_separation_as_the_bhattacharyya_overlap():
    drifts = [train_mixture("reverse", d, lr=0.5).drift for d in SEPARATIONS]
    assert drifts == sorted(drifts, reverse=True), drifts
    log_drift = torch.tensor([math.log(d) for d in drifts])
    log_bc = torch.tensor([math.log(bhattacharyya_coefficient(d)) for d in SEPARATIONS])
    assert float(torch.corrcoef(torch.stack([log_drift, log_bc]))[0, 1]) >= 0.9


def test_replay_does_not_move_the_reverse_kl_optimum():
    runs = [train_mixture("reverse", 3.0, lr=0.05, batch_size=512, replay=r, steps=1500) for r in (0.0, 0.2)]
    for run in runs:
        assert run.old_weight[-1] == pytest.approx(0.5, abs=0.05)
        assert run.old_mean[-1] == pytest.approx(0.0, abs=0.1)


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="'forward' or 'reverse'"):
        train_mixture("symmetric", 2.0)


def test_sampled_estimator_is_unbiased_for_any_proposal():
    generator = torch.Generator().manual_seed(0)
    on_policy = torch.randn(200_000, generator=generator, dtype=torch.float64)
    log_q, log_p = gaussian_log_pdf(on_policy, 0.0), gaussian_log_pdf(on_policy, 1.0)
    assert float(sampled_reverse_kl(log_q, log_p, log_q)) == pytest.approx(0.5, abs=0.01)  # KL(N(0,1) || N(1,1))
    wide = 2 * torch.randn(200_000, generator=generator, dtype=torch.float64)
    weighted = sampled_reverse_kl(
        gaussian_log_pdf(wide, 0.0), gaussian_log_pdf(wide, 1.0), gaussian_log_pdf(wide, 0, 2)
    )
    assert float(weighted) == pytest.approx(0.5, abs=0.03)


def test_log_correlation_is_one_on_a_power_law_and_lower_off_it():
    assert log_correlation([1, 2, 4, 8], [3, 12, 48, 192]) == pytest.approx(1.0)
    assert log_correlation([1, 2, 4, 8], [5, 1, 6, 2]) < 0.5


def test_theory_study_reports_the_lab_claims_with_a_given_coefficient():
    study = theory_study(drift_separations=(2.0, 4.0, 6.0), steps=2000)
    assert study["mass"]["forward"]["old_mass"][-1] < 0.05
    assert study["mass"]["reverse"]["old_mass"][-1] == pytest.approx(0.5, abs=0.05)
    assert study["drift"]["bhattacharyya"] == [bhattacharyya_coefficient(d) for d in (2.0, 4.0, 6.0)]
    assert study["drift"]["log_correlation"] >= 0.9
    assert study["replay"]["forward_replay"]["old_weight"][-1] == pytest.approx(0.1, abs=0.03)
    assert study["replay"]["reverse_sampled_replay"]["old_weight"][-1] == pytest.approx(0.5, abs=0.05)
    # a wrong coefficient (growing with the separation) breaks the correlation the lab asserts
    wrong = theory_study(drift_separations=(2.0, 4.0, 6.0), steps=200, bhattacharyya=lambda d: d)
    assert wrong["drift"]["log_correlation"] < 0
