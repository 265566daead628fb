"""Lab 06 over the lab's three seeds: the vision world (``posttrain.studies.test_time_training.run_vision``) and
nearest-neighbour TTT on tiny-chat (``nearest_neighbour_study``).

The claims of issue #18 for the digits, on the tiny profile (docs/labs/06_test_time_training.md has the numbers; the
settings were chosen on development seeds 10 and 11). A seed changes the train/test split, the CNN's initialisation
and batches, and the corruptions' noise:
- TENT improves corrupted-digit accuracy by >= 5 points over the unadapted model (mean over the four corruptions);
  BN-adapt beside it does as well: on 8×8 digits the gain is the test batch's statistics, not the entropy gradient;
- on the long class-sorted stream, continual TENT without reset ends below the unadapted model, while a periodic
  reset and a reset on a detected shift end above it.
What the tiny world measured beyond the claims is asserted as measured: EATA's filter alone collapses as fast as
plain continual TENT, and with its pull toward the start it does not; pretext TTT is not reliably better than no
adaptation (one seed of three is worse) and stays below BN-adapt.

For the language world (a seed draws the question templates): nearest-neighbour TTT answers more chat questions
about the CPT-only people than no adaptation, and more than the same retrieval given in the prompt.
"""

from __future__ import annotations

import pytest

from posttrain.studies.test_time_training import STREAM_METHODS, nearest_neighbour_study, run_vision

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def results(request) -> dict:
    return run_vision(request.param)


def test_the_cnn_learns_clean_digits_and_the_corruptions_break_it(results):
    assert results["clean_accuracy"] >= 0.95
    assert results["corruptions"]["mean"]["unadapted"] <= 0.5


def test_tent_improves_corrupted_accuracy_and_the_batch_statistics_do_the_work(results):
    mean = results["corruptions"]["mean"]
    assert mean["tent"] - mean["unadapted"] >= 0.05
    assert abs(mean["tent"] - mean["bn_adapt"]) <= 0.03  # the entropy step adds nothing measurable here


def test_pretext_ttt_is_reported_and_stays_below_bn_adapt(results):
    mean = results["corruptions"]["mean"]
    assert 0.0 < mean["pretext"] < mean["bn_adapt"]


def test_continual_adaptation_collapses_and_resets_prevent_it(results):
    last = {method: curve[-1] for method, curve in results["stream"].items()}
    assert set(last) == set(STREAM_METHODS)
    assert last["continual"] < last["unadapted"]
    assert last["periodic_reset"] > last["unadapted"]
    assert last["shift_reset"] > last["unadapted"]
    assert results["stream"]["continual"][0] > last["continual"]  # it drifts: the first round was better


def test_eatas_filter_alone_collapses_and_its_anchor_holds(results):
    last = {method: curve[-1] for method, curve in results["stream"].items()}
    assert last["continual_filtered"] < last["unadapted"]
    assert last["eata"] > last["unadapted"]
    assert last["episodic"] == pytest.approx(last["bn_adapt"], abs=0.02)


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def language(request) -> dict:
    return nearest_neighbour_study(request.param)


def test_nearest_neighbour_ttt_answers_what_only_the_cpt_corpus_says(language):
    assert language["retrieved_about_the_person"] == 1.0  # TF-IDF finds a statement about the person asked about
    assert language["no_adaptation"] <= 0.1
    assert language["nearest_neighbour_ttt"] - language["no_adaptation"] >= 0.15
    assert language["nearest_neighbour_ttt"] > max(language["in_context"].values())
    assert language["in_context"]["1"] > language["no_adaptation"]  # the statement in the prompt helps a little
