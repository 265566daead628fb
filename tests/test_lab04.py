"""Lab 04 end to end, over three seeds: seed 0 is the executed solution notebook (its ``results/04.json``), seeds 1
and 2 run the same traces, edits and sequential curve through ``posttrain.studies.causal_tracing_and_rome.run`` (a
seed draws other people to edit, other new objects, other noise and other context prefixes).

Claims of issue #16, defined once as margins in ``autograder.claims`` and asserted on the tiny profile
(docs/labs/04_causal_tracing_and_rome.md has the numbers, docs/margins.md the margins against the spread):
- the edited relation (job) has its largest early-layer MLP effect at the subject's last token; city has none there;
- ROME over 20 edits: efficacy >= 95 %, paraphrase >= 70 %, neighbourhood drop <= 5 points, >= 80 % of the subjects'
  other attributes kept; FT-L damages the neighbourhood or the other attributes more; IKE is reported beside them;
- 64 sequential edits: the old skills and the neighbourhood end below their level after the first edit, and the
  earlier edits wear away.
"""

from __future__ import annotations

import pytest

from autograder.claims import CLAIMS, claim, notebook_results, package_results
from autograder.demo import expected_scores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def results(request, sample_class) -> dict:
    if request.param == 0:  # the solution notebook, executed once: while its sample class is graded
        return notebook_results("04", sample_class("04").notebook_results())
    return package_results("04", request.param)


def test_tracing_finds_the_job_fact_at_the_subject_and_city_at_the_end(results):
    assert results["profile"] == "tiny" and results["plan"]["relation"] == "job"
    claim("04", "early_site_at_subject").check(results)
    claim("04", "city_is_recalled_late").check(results)
    assert results["sites"]["job"]["layer"] == results["plan"]["rome"]["layer"], "ROME edits the traced layer"


def test_rome_edits_the_fact_and_little_else(results):
    for name in ("rome_efficacy", "rome_paraphrase", "rome_neighbourhood", "rome_keeps_attributes"):
        claim("04", name).check(results)


def test_ftl_damages_more_and_ike_is_reported(results):
    claim("04", "ftl_damages_more").check(results)
    ike = results["editors"]["IKE"]
    assert 0 <= ike["efficacy"] <= 1 and 0 <= ike["neighbourhood_after"] <= 1 and ike["portability"] is not None


def test_sequential_edits_wear_away_and_then_break_old_skills(results):
    assert [row["edits"] for row in results["sequential"]] == [0, 1, 2, 4, 8, 16, 32, 64]
    for name in ("sequential_old_skills_fall", "sequential_neighbourhood_falls"):
        claim("04", name).check(results)
    claim("04", "sequential_edits_wear_away").check(results)


def test_every_claim_of_lab04_is_asserted_here():
    text = open(__file__).read()
    assert all(f'"{c.name}"' in text for c in CLAIMS["04"])


def test_the_sample_class_gets_exact_grades_in_the_sandbox_on_two_workers(sample_class):
    graded = sample_class("04")
    assert graded.scores() == expected_scores(graded.lab)
    assert graded.flags() == {student: [] for student in graded.results}
    assert {r.max_score for r in graded.results.values()} == {100}
