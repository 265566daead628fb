"""``autograder.claims`` and ``autograder.spread``: margins, tolerances, and the spread table of docs/margins.md."""

from __future__ import annotations

import json

import pytest

from autograder.claims import CLAIMS, Claim, claim, ordered_gap
from autograder.spread import markdown, spread_table


def test_ordered_gap_is_the_smallest_step_and_negative_when_unsorted():
    assert ordered_gap([0.1, 0.4, 0.45, 0.9]) == pytest.approx(0.05)
    assert ordered_gap([0.3, 0.674, 0.653, 0.93]) == pytest.approx(-0.021)
    assert ordered_gap([0.5, 0.5]) == 0.0


def test_a_claim_holds_by_its_margin_and_strictness_and_says_why_it_failed():
    at_least = Claim("99", "x", "x >= 0.9", lambda r: r["x"] - 0.9)
    above = Claim("99", "y", "y > 0.9", lambda r: r["x"] - 0.9, strict=True)
    assert at_least.holds({"x": 0.9}) and not above.holds({"x": 0.9})
    with pytest.raises(AssertionError, match=r"claim 'y' fails: margin \+0\.0000 \(needs > \+0\.0000\)"):
        above.check({"x": 0.9})
    loose = Claim("99", "z", "x >= 0.9 within 0.03", lambda r: r["x"] - 0.9, tolerance=0.03, reason="measured")
    assert loose.holds({"x": 0.88}) and not loose.holds({"x": 0.86})


def test_claims_are_named_uniquely_and_unknown_names_list_the_lab_s_claims():
    for lab, claims in CLAIMS.items():
        assert len({c.name for c in claims}) == len(claims), lab
        assert all(c.lab == lab and c.text for c in claims)
        assert all(c.reason for c in claims if c.tolerance), "a tolerance needs its measured reason"
    with pytest.raises(KeyError, match=r"has no claim .nope.*masters_new_task"):
        claim("01", "nope")


def test_the_spread_table_separates_seed_and_platform_spread(tmp_path):
    def platform(label: str, margins_by_seed: dict[str, float]) -> None:
        per_seed = {seed: {"masters_new_task": value} for seed, value in margins_by_seed.items()}
        (tmp_path / f"{label}.json").write_text(json.dumps({"environment": {}, "margins": {"01": per_seed}}))

    platform("avx512", {"0": 0.10, "1": 0.02})
    platform("avx2", {"0": 0.07, "1": 0.03})
    (row,) = spread_table(tmp_path)
    assert row["claim"] == "masters_new_task" and row["runs"] == 4 and row["platforms"] == ["avx2", "avx512"]
    assert row["min_margin"] == pytest.approx(0.02)
    assert row["platform_spread"] == pytest.approx(0.03)  # seed 0 moved from 0.10 to 0.07 between platforms
    assert row["seed_spread"] == pytest.approx(0.08)
    assert not row["robust"], "a smallest margin of 0.02 does not survive a platform spread of 0.03"
    platform("avx2", {"0": 0.09, "1": 0.03})
    (row,) = spread_table(tmp_path)
    assert row["robust"] and "| 01 | `masters_new_task`" in markdown([row])


def test_a_margin_exactly_at_a_non_strict_threshold_clears_a_zero_spread_and_a_strict_one_does_not(tmp_path):
    def platform(label: str, lab: str, name: str) -> None:
        per_seed = {seed: {name: 0.0} for seed in ("0", "1")}
        (tmp_path / f"{label}.json").write_text(json.dumps({"environment": {}, "margins": {lab: per_seed}}))

    for label in ("avx512", "avx2"):
        platform(label, "01", "masters_new_task")  # >= 90 %: a margin of 0 is the threshold itself
    (row,) = spread_table(tmp_path)
    assert row["platform_spread"] == 0 and row["robust"]
    for label in ("avx512", "avx2"):
        platform(label, "01", "new_task_is_new")  # < 20 %, strict: a margin of 0 fails it
    (row,) = spread_table(tmp_path)
    assert not row["robust"]


def test_docs_margins_shows_the_table_of_the_stored_measurements():
    from autograder.spread import SPREAD_DIR

    table = markdown(spread_table(SPREAD_DIR))
    assert table in (SPREAD_DIR.parent / "margins.md").read_text(), (
        "docs/margins.md is stale: paste the output of `python -m autograder spread --report`"
    )


def test_every_claim_is_measured_on_three_seeds_and_two_kernel_paths_and_clears_the_spread():
    from autograder.spread import SPREAD_DIR

    rows = {(row["lab"], row["claim"]): row for row in spread_table(SPREAD_DIR)}
    for lab, claims in CLAIMS.items():
        for c in claims:
            row = rows.get((lab, c.name))
            assert row is not None, f"Lab {lab} claim {c.name!r} has no measured margin; run `autograder spread`"
            assert row["runs"] >= 6 and {"avx2-2threads", "avx512-2threads"} <= set(row["platforms"]), row
            assert row["robust"], (
                f"Lab {lab} claim {c.name!r}: smallest margin {row['min_margin']:+.3f} does not clear the measured "
                f"platform spread {row['platform_spread']:.3f}; redesign the experiment or name a tolerance"
            )
