"""Lab 05 end to end, over three seeds: seed 0 is the executed solution notebook (its ``results/05.json``, whose
merges ran on the solution's own task vector, TIES, DARE and chat vector), seeds 1 and 2 run
``posttrain.studies.task_vectors_and_merging.run`` (a seed changes the fine-tunes' batches and DARE's masks; the chat
vector has no randomness).

Claims of issue #17, defined once as margins in ``autograder.claims`` and asserted on the tiny profile
(docs/labs/05_task_vectors_and_merging.md has the numbers):
- negation: tiny-chat − 0.5 τ_refusal drops refusal by >= 50 points while every other skill moves <= 10;
- the best of TIES / DARE beats plain averaging on the mean accuracy of the three merged tasks;
- the chat vector: refusal +40 points or more, and CPT-only knowledge answered better than tiny-chat and the CPT base;
- the safety merge: a linear weight restores refusal >= 0.8 keeping >= 0.8 of the new task, yet an old skill still
  forgets >= 30 % of its items sample-wise;
- the Synthetic2Real-shaped analogy: measured, weak (helps, stays below half).
"""

from __future__ import annotations

import pytest

from autograder.claims import CLAIMS, claim, notebook_results, package_results
from autograder.demo import expected_scores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def results(request, sample_class) -> dict:
    if request.param == 0:  # the solution notebook, executed once: while its sample class is graded
        return notebook_results("05", sample_class("05").notebook_results())
    return package_results("05", request.param)


def test_each_task_fine_tune_learns_its_task(results):
    for task in results["plan"]["tasks"]:
        assert results["tasks"][task][task] >= 0.8, task
        assert results["negation"]["0"][task] < 0.2, f"tiny-chat already knows {task}"


def test_negating_the_refusal_vector_removes_refusal_and_nothing_else(results):
    claim("05", "negation_removes_refusal").check(results)
    claim("05", "negation_keeps_other_skills").check(results)
    refusal = [results["negation"][str(s)]["refusal"] for s in (0, *results["plan"]["negation_scales"])]
    assert refusal == sorted(refusal, reverse=True), "refusal falls as λ grows"


def test_sparse_merges_beat_plain_averaging(results):
    claim("05", "sparse_merge_beats_average").check(results)
    assert set(results["merging"]) == {"average", "task arithmetic", "TIES", "DARE + task arithmetic", "DARE + TIES"}


def test_the_chat_vector_gives_the_cpt_base_chat_and_refusal(results):
    claim("05", "chat_vector_restores_refusal").check(results)
    claim("05", "chat_vector_answers_cpt_knowledge").check(results)
    assert results["chat_vector"]["0.0"]["cpt_facts_chat"] == 0.0, "the CPT base cannot answer chat questions"


def test_merging_back_restores_safety_but_not_every_sample(results):
    claim("05", "safety_merge_restores_refusal").check(results)
    claim("05", "safety_merge_still_forgets").check(results)
    linear = results["safety"]["linear"]
    assert linear["0.0"]["accuracy"]["refusal"] == 1.0 and linear["1.0"]["accuracy"]["refusal"] < 0.2


def test_the_analogy_is_measured_and_weak(results):
    claim("05", "analogy_helps_a_little").check(results)
    claim("05", "analogy_stays_weak").check(results)


def test_every_claim_of_lab05_is_asserted_here():
    text = open(__file__).read()
    assert all(f'"{c.name}"' in text for c in CLAIMS["05"])


def test_the_sample_class_gets_exact_grades_in_the_sandbox_on_two_workers(sample_class):
    graded = sample_class("05")
    assert graded.scores() == expected_scores(graded.lab)
    assert graded.flags() == {student: [] for student in graded.results}
    assert {r.max_score for r in graded.results.values()} == {100}
