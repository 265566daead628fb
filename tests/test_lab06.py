"""Lab 06 end to end, over three seeds: seed 0 is the executed solution notebook (its ``results/06.json``, whose
experiments ran on the solution's own entropy loss, TENT parameters, SUTA loss, episodic reset and shift trigger),
seeds 1 and 2 run ``posttrain.studies.test_time_training.run``. A seed changes the digits' train/test split, the CNN's
initialisation and batches and the corruptions' noise, the 50 test utterances and their noise, and the templates of
the chat questions.

Claims of issue #18, defined once as margins in ``autograder.claims`` and asserted on the tiny profile
(docs/labs/06_test_time_training.md has the numbers; the settings were chosen on development seeds 10 and 11):
- TENT improves corrupted-digit accuracy by >= 5 points over the unadapted model; BN-adapt does as well (on 8×8
  digits the gain is the test batch's statistics) and pretext TTT stays below it;
- SUTA lowers the WER at every SNR whose noise shifts the recogniser, by >= 20 % relative at the noisiest; the
  issue's "at every evaluated SNR" is not met: at 30 dB, where the noise leaves the WER at the clean one, SUTA moves
  it a few words either way (measured, asserted as such);
- on the long class-sorted stream, continual TENT collapses below the unadapted model; a periodic reset, a reset on a
  detected shift and EATA's anchor hold, EATA's filter alone does not;
- nearest-neighbour TTT answers more chat questions about the CPT-only people than no adaptation, and more than the
  same retrieval given in the prompt.
"""

from __future__ import annotations

import pytest

from autograder.claims import CLAIMS, claim, notebook_results, package_results
from autograder.demo import expected_scores
from posttrain.studies.test_time_training import STREAM_METHODS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def results(request, sample_class) -> dict:
    if request.param == 0:  # the solution notebook, executed once: while its sample class is graded
        return notebook_results("06", sample_class("06").notebook_results())
    return package_results("06", request.param)


def test_the_cnn_learns_clean_digits_and_the_corruptions_break_it(results):
    assert results["vision"]["clean_accuracy"] >= 0.95
    assert results["vision"]["corruptions"]["mean"]["unadapted"] <= 0.5


def test_tent_improves_corrupted_accuracy_and_the_batch_statistics_do_the_work(results):
    claim("06", "tent_beats_unadapted").check(results)
    claim("06", "tent_is_bn_adapt").check(results)
    claim("06", "pretext_below_bn_adapt").check(results)
    assert results["vision"]["corruptions"]["mean"]["pretext"] > 0.0


def test_suta_lowers_the_wer_where_noise_shifts_the_recogniser(results):
    claim("06", "suta_lowers_wer_under_noise").check(results)
    claim("06", "suta_gains_most_when_noisiest").check(results)
    wer = results["speech"]["wer"]
    rows = [wer[f"{level:g}"] for level in results["speech"]["plan"]["levels"]]
    assert all({"unadapted", "suta", "entropy_only", "relative_gain"} <= set(row) for row in rows), "ablation reported"
    unadapted = [row["unadapted"] for row in rows]
    assert unadapted == sorted(unadapted) and unadapted[0] <= 0.3 and unadapted[-1] >= 0.5, "the levels span the WER"


def test_where_noise_does_not_shift_the_recogniser_suta_moves_the_wer_little(results):
    claim("06", "suta_acts_on_the_shift").check(results)
    least_noisy = results["speech"]["wer"][f"{results['speech']['plan']['levels'][0]:g}"]
    assert least_noisy["unadapted"] - results["speech"]["wer"]["clean"] < 0.1, "the control level is not shifted"


def test_continual_adaptation_collapses_and_resets_prevent_it(results):
    stream = results["vision"]["stream"]
    assert set(stream) == set(STREAM_METHODS)
    for name in ("continual_collapses", "periodic_reset_holds", "shift_reset_holds"):
        claim("06", name).check(results)
    assert stream["continual"][0] > stream["continual"][-1], "it drifts: the first round was better"


def test_eatas_filter_alone_collapses_and_its_anchor_holds(results):
    claim("06", "filter_alone_collapses").check(results)
    claim("06", "eata_anchor_holds").check(results)
    last = {method: curve[-1] for method, curve in results["vision"]["stream"].items()}
    assert last["episodic"] == pytest.approx(last["bn_adapt"], abs=0.02)


def test_nearest_neighbour_ttt_answers_what_only_the_cpt_corpus_says(results):
    claim("06", "nn_ttt_answers_cpt_facts").check(results)
    claim("06", "nn_ttt_beats_in_context").check(results)
    language = results["language"]
    assert language["retrieved_about_the_person"] == 1.0  # TF-IDF finds a statement about the person asked about
    assert language["no_adaptation"] <= 0.1
    assert language["in_context"]["1"] > language["no_adaptation"]  # the statement in the prompt helps a little


def test_every_claim_of_lab06_is_asserted_here():
    text = open(__file__).read()
    assert all(f'"{c.name}"' in text for c in CLAIMS["06"])


def test_the_sample_class_gets_exact_grades_in_the_sandbox_on_two_workers(sample_class):
    graded = sample_class("06")
    assert graded.scores() == expected_scores(graded.lab)
    assert graded.flags() == {student: [] for student in graded.results}
    assert {r.max_score for r in graded.results.values()} == {100}
