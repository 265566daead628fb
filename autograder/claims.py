"""Each lab's scientific claims as *margins*: one definition for the test suite and for the spread study.

A claim's margin is how far the measured quantity lies on the right side of the claim's threshold, in the
quantity's own units (accuracy, sample-wise forgetting, nats, effective rank). The claim holds when the margin is
positive (``strict``) or not negative. ``tests/test_lab0*.py`` assert ``Claim.check`` on each seed's results;
``python -m autograder spread`` measures every margin across seeds and platforms (thread counts, torch's CPU kernel
path, library versions), and ``docs/margins.md`` compares the smallest margin with the spread it must survive.

A claim whose margin does not clear the measured spread is not dropped: its ``tolerance`` (in the margin's units,
with the measured ``reason``) lets the test accept a margin down to ``-tolerance``, and the lab's doc says that the
claim is a tie within what another machine moves.

Each seed's results: seed 0 is the executed solution notebook (its ``results/0N.json``, in the form
``notebook_results`` gives it), every other seed the package's own path with the notebook's settings
(``package_results``). ``lab_results`` executes the notebook for seed 0; the tests instead take the results file the
solution wrote while the sample class was graded (``tests/conftest.py``), so that each notebook runs once.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from autograder.course import REPO_ROOT, resolve_lab
from autograder.demo import execute_solution

LAB01_STEPS, LAB01_BATCH, LAB01_MAIN_LR, LAB01_SWEEP = 150, 32, 1e-3, (1e-4, 3e-4, 1e-3)
LORA_RANKS = (1, 4, 16, 64)


@dataclass(frozen=True)
class Claim:
    """One asserted claim: ``margin(results)`` > 0 (``strict``) or >= 0 when it holds, down to ``-tolerance``
    when a measured cross-platform spread forced a tolerance (``reason`` says which)."""

    lab: str
    name: str
    text: str
    margin: Callable[[dict], float]
    strict: bool = False
    tolerance: float = 0.0
    reason: str = ""

    def accepts(self, margin: float) -> bool:
        """Whether a margin satisfies the claim, within its tolerance."""
        return margin > -self.tolerance if self.strict else margin >= -self.tolerance

    def holds(self, results: dict) -> bool:
        """Whether the claim holds on one seed's results, within its tolerance."""
        return self.accepts(self.margin(results))

    def check(self, results: dict) -> None:
        """Raise ``AssertionError`` naming the claim and its margin when it does not hold on ``results``."""
        value = self.margin(results)
        assert self.accepts(value), (
            f"Lab {self.lab} claim {self.name!r} fails: margin {value:+.4f} "
            f"(needs {'>' if self.strict else '>='} {-self.tolerance or 0.0:+.4f}). {self.text}"
        )


def ordered_gap(values: Sequence[float]) -> float:
    """The smallest step of a sequence that should not decrease: >= 0 exactly when it is sorted ascending."""
    return min(b - a for a, b in itertools.pairwise(values))


# --- Lab 01: fine-tune & forget (results["runs"]: posttrain.studies.finetune_and_forget.learning_rate_sweep) --------


def _lab01_run(results: dict, lr: float) -> dict:
    return results["runs"][str(lr)]


def _lab01_kept(results: dict, lr: float) -> float:
    after = _lab01_run(results, lr)["accuracy_after"]
    return after["json"] + after["refusal"]


def _lab01_hidden_forgetting(results: dict) -> float:
    """The largest amount by which an old skill's average drop understates its sample-wise forgetting F."""
    return max(
        row["forgetting"] - max(0.0, row["accuracy_before"] - row["accuracy_after"])
        for run in results["runs"].values()
        for skill, row in run["table"].items()
        if skill != "new"
    )


def _lab01_collapse(results: dict) -> float:
    run = _lab01_run(results, LAB01_MAIN_LR)
    return max(run["accuracy_before"][s] - run["accuracy_after"][s] for s in ("json", "refusal")) - 0.30


LAB01 = [
    Claim(
        "01",
        "new_task_is_new",
        "tiny-chat answers < 20 % of the new task before training",
        lambda r: 0.2 - _lab01_run(r, LAB01_MAIN_LR)["accuracy_before"]["new"],
        strict=True,
    ),
    Claim(
        "01",
        "masters_new_task",
        "full fine-tuning at lr 1e-3 reaches >= 90 % on the new task",
        lambda r: _lab01_run(r, LAB01_MAIN_LR)["accuracy_after"]["new"] - 0.9,
    ),
    Claim(
        "01", "json_or_refusal_collapses", "JSON format or refusal drops by >= 30 points at lr 1e-3", _lab01_collapse
    ),
    Claim(
        "01",
        "average_understates_forgetting",
        "somewhere in the sweep an old skill's average drop is smaller than its sample-wise forgetting",
        _lab01_hidden_forgetting,
        strict=True,
    ),
    Claim(
        "01",
        "forgetting_grows_3e-4_to_1e-3",
        "JSON + refusal kept at lr 1e-3 < at lr 3e-4",
        lambda r: _lab01_kept(r, 3e-4) - _lab01_kept(r, 1e-3),
        strict=True,
    ),
    Claim(
        "01",
        "forgetting_grows_1e-4_to_3e-4",
        "JSON + refusal kept at lr 3e-4 <= at lr 1e-4 (a tie: within two of 100 JSON items)",
        lambda r: _lab01_kept(r, 1e-4) - _lab01_kept(r, 3e-4),
        tolerance=0.02,
        reason="at lr 1e-4 and 3e-4 refusal stays 1.00 and JSON 0.90-0.92: the two rates differ by 0 or 1 of the 100 "
        "JSON items in every seed and platform measured, so the order between them is a tie; the growth of "
        "forgetting with the learning rate is carried by 3e-4 -> 1e-3 (margin >= 1.15)",
    ),
]


def new_facts_are_new(lab: str) -> Claim:
    """Labs 02-03 train on facts about people no shipped model has seen: tiny-chat must know < 10 % of them."""
    return Claim(
        lab,
        "new_facts_are_new",
        "tiny-chat knows < 10 % of the new facts before training",
        lambda r: 0.1 - r["accuracy_before"]["new"],
        strict=True,
    )


# --- Lab 02: LoRA and regularization (results: posttrain.studies.lora_and_regularization.summarize) -------------------


def _lab02_rank_accuracies(results: dict) -> list[float]:
    return [results["best_at_budget"][f"LORA r={rank}"]["new"] for rank in LORA_RANKS]


def _lab02_runs(results: dict, family: str) -> list[dict]:
    return sorted((r for r in results["runs"] if r["family"] == family), key=lambda r: r["method"]["strength"])


def _lab02_run(results: dict, family: str) -> dict:
    label = results["best_at_budget"][family]["label"]
    return next(r for r in results["runs"] if r["label"] == label)


LAB02 = [
    new_facts_are_new("02"),
    Claim(
        "02",
        "lora_learning_rises_with_rank",
        "at the budget, each rank at its best lr: new-task accuracy does not decrease from rank 1 to 64",
        lambda r: ordered_gap(_lab02_rank_accuracies(r)),
    ),
    Claim(
        "02",
        "full_learns_at_least_lora_r64",
        "full fine-tuning's best run learns at least as much as rank 64's (a near-tie in seed 1: 0.98 vs 0.97)",
        lambda r: r["best_at_budget"]["full"]["new"] - _lab02_rank_accuracies(r)[-1],
        tolerance=0.03,
        reason="seed 1's margin is 0.007 (1 of 144 facts: full 0.979 at lr 3e-3, rank 64 0.972 at 5e-3); the kernel "
        "paths measured here do not move it, but issue #12 measured runs of this sweep moving by up to 0.03 on "
        "another machine, so full fine-tuning and rank 64 are a tie within that",
    ),
    Claim(
        "02",
        "rank1_learns_under_half_of_full",
        "rank 1 learns less than half of what full fine-tuning learns",
        lambda r: 0.5 * r["best_at_budget"]["full"]["new"] - _lab02_rank_accuracies(r)[0],
        strict=True,
    ),
    Claim(
        "02",
        "full_update_is_high_rank",
        "median effective rank of full fine-tuning's 42 updates >= 19 (target 20 = 5 x rank 4; measured 19.5-20)",
        lambda r: r["full_effective_rank"]["median"] - 19,
    ),
    Claim(
        "02",
        "ewc_halves_the_drop_at_matched_accuracy",
        "EWC within 5 points of full fine-tuning's accuracy loses at most half of its old-skill drop",
        lambda r: (
            -math.inf
            if r["ewc_matched"] is None
            else 0.5 * r["ewc_matched"]["full_old_drop"] - r["ewc_matched"]["old_drop"]
        ),
    ),
    Claim(
        "02",
        "l2sp_stronger_learns_less",
        "L2-SP with lambda 1 learns no more than with lambda 0.1",
        lambda r: ordered_gap([run["new_accuracy"] for run in _lab02_runs(r, "L2-SP")][::-1]),
    ),
    Claim(
        "02",
        "l2sp_stronger_forgets_less",
        "L2-SP with lambda 1 drops no more of the old skills than lambda 0.1",
        lambda r: ordered_gap([run["old_drop"] for run in _lab02_runs(r, "L2-SP")][::-1]),
    ),
    Claim(
        "02",
        "ewc_update_spreads_wider",
        "EWC's update has a higher median effective rank than full fine-tuning's",
        lambda r: (
            statistics.median(_lab02_run(r, "EWC")["effective_ranks"].values()) - r["full_effective_rank"]["median"]
        ),
        strict=True,
    ),
]


# --- Lab 03: replay and self-distillation (results: posttrain.studies.replay_and_self_distillation.summarize) ---------


def _lab03_runs(results: dict) -> dict[str, dict]:
    return {run["label"]: run for run in results["runs"]}


def _lab03_cheap_replay(results: dict) -> float:
    cheap = [label for label in ("replay 1%", "replay 5%") if label in results["forgetting_cut"]]
    return max(
        min(results["forgetting_cut"][label] - 0.5, results["new_accuracy_share"][label] - 0.9) for label in cheap
    )


def _lab03_forgetting(results: dict, *labels: str) -> list[float]:
    runs = _lab03_runs(results)
    return [runs[label]["forgetting"] for label in labels]


LAB03 = [
    new_facts_are_new("03"),
    Claim(
        "03",
        "plain_sft_learns",
        "plain SFT reaches >= 90 % on the new facts",
        lambda r: _lab03_runs(r)["plain"]["new_accuracy"] - 0.9,
    ),
    Claim(
        "03",
        "plain_sft_forgets",
        "plain SFT's mean sample-wise forgetting is >= 0.8",
        lambda r: _lab03_runs(r)["plain"]["forgetting"] - 0.8,
    ),
    Claim(
        "03",
        "little_replay_halves_forgetting",
        "replay of <= 5 % removes >= 50 % of plain SFT's forgetting at >= 90 % of its new-task accuracy",
        _lab03_cheap_replay,
    ),
    Claim(
        "03",
        "more_replay_forgets_less",
        "forgetting with replay 1 % >= 5 % >= 20 %",
        lambda r: ordered_gap(_lab03_forgetting(r, "replay 20%", "replay 5%", "replay 1%")),
    ),
    Claim(
        "03",
        "own_words_forget_less",
        "forgetting: plain >= paraphrase >= self-output targets",
        lambda r: ordered_gap(_lab03_forgetting(r, "self-output", "paraphrase", "plain")),
    ),
    Claim(
        "03",
        "nll_orders_the_styles",
        "NLL under tiny-chat: plain > paraphrase > self-output targets",
        lambda r: ordered_gap([r["target_nll"][s] for s in ("self-output", "paraphrase", "plain")]),
    ),
    Claim(
        "03",
        "self_output_learns",
        "self-output targets reach >= 90 % on the new facts",
        lambda r: _lab03_runs(r)["self-output"]["new_accuracy"] - 0.9,
    ),
    Claim(
        "03",
        "sdft_filter_keeps_most",
        "the SDFT filter keeps >= 90 % of the rewrites",
        lambda r: r["self_output_kept"] / r["self_output_total"] - 0.9,
    ),
    Claim(
        "03",
        "pseudo_replay_forgets_less",
        "pseudo-replay 5 % forgets less than plain SFT",
        lambda r: ordered_gap(_lab03_forgetting(r, "pseudo-replay 5%", "plain")),
        strict=True,
    ),
    Claim(
        "03",
        "forward_kl_starts_with_old_mode",
        "forward KL's old-mode mass starts > 0.85",
        lambda r: r["theory"]["mass"]["forward"]["old_mass"][0] - 0.85,
        strict=True,
    ),
    Claim(
        "03",
        "forward_kl_empties_old_mode",
        "forward KL leaves < 0.05 of the old mode's mass",
        lambda r: 0.05 - r["theory"]["mass"]["forward"]["old_mass"][-1],
        strict=True,
    ),
    Claim(
        "03",
        "reverse_kl_keeps_old_mode",
        "reverse KL keeps the old mode's mass within 0.05 of 0.5",
        lambda r: 0.05 - abs(r["theory"]["mass"]["reverse"]["old_mass"][-1] - 0.5),
    ),
    Claim(
        "03",
        "drift_falls_with_separation",
        "the old mean's drift falls monotonically with the separation (margin: smallest fall of log drift)",
        lambda r: ordered_gap([-math.log(d) for d in r["theory"]["drift"]["drift"]]),
    ),
    Claim(
        "03",
        "drift_follows_bhattacharyya",
        "corr(log drift, log BC) >= 0.9",
        lambda r: r["theory"]["drift"]["log_correlation"] - 0.9,
    ),
    Claim(
        "03",
        "replay_moves_forward_optimum",
        "with replay, forward KL's old weight is the replay ratio (+- 0.03)",
        lambda r: (
            0.03
            - abs(r["theory"]["replay"]["forward_replay"]["old_weight"][-1] - r["theory"]["replay_ratio"]["forward"])
        ),
    ),
    Claim(
        "03",
        "replay_leaves_reverse_optimum",
        "with sampled replay, reverse KL's old weight stays 0.5 (+- 0.05)",
        lambda r: 0.05 - abs(r["theory"]["replay"]["reverse_sampled_replay"]["old_weight"][-1] - 0.5),
    ),
]


# --- Lab 04: causal tracing and ROME (results: posttrain.studies.causal_tracing_and_rome.summarize) ----------------


def _lab04_editor(results: dict, editor: str) -> dict:
    return results["editors"][editor]


def _lab04_site(results: dict) -> dict:
    return results["sites"][results["plan"]["relation"]]


def _lab04_ftl_damage(results: dict) -> float:
    rome, ftl = _lab04_editor(results, "ROME"), _lab04_editor(results, "FT-L")
    return max(ftl["neighbourhood_drop"] - rome["neighbourhood_drop"], rome["attributes_kept"] - ftl["attributes_kept"])


def _lab04_curve(results: dict, key: str) -> list[float]:
    return [row[key] for row in results["sequential"] if row[key] is not None]


LAB04 = [
    Claim(
        "04",
        "early_site_at_subject",
        "for the edited relation, the largest early-layer MLP effect sits at the subject's last token (margin: it "
        "minus "
        "the largest early-layer effect at any other token)",
        lambda r: _lab04_site(r)["subject_last"] - _lab04_site(r)["best_elsewhere"],
        strict=True,
    ),
    Claim(
        "04",
        "city_is_recalled_late",
        "city facts have no early subject site: their early MLP effect is larger at the final token",
        lambda r: r["sites"]["city"]["final_token"] - r["sites"]["city"]["subject_last"],
        strict=True,
    ),
    Claim(
        "04",
        "rome_efficacy",
        "ROME's efficacy over the 20 edits is >= 95 %",
        lambda r: _lab04_editor(r, "ROME")["efficacy"] - 0.95,
    ),
    Claim(
        "04",
        "rome_paraphrase",
        "ROME's paraphrase success is >= 70 %",
        lambda r: _lab04_editor(r, "ROME")["paraphrase"] - 0.7,
    ),
    Claim(
        "04",
        "rome_neighbourhood",
        "ROME costs the neighbourhood <= 5 points",
        lambda r: 0.05 - _lab04_editor(r, "ROME")["neighbourhood_drop"],
    ),
    Claim(
        "04",
        "rome_keeps_attributes",
        "the edited subjects keep >= 80 % of their other attributes under ROME",
        lambda r: _lab04_editor(r, "ROME")["attributes_kept"] - 0.8,
    ),
    Claim(
        "04",
        "ftl_damages_more",
        "FT-L's neighbourhood drop or other-attribute loss is larger than ROME's",
        _lab04_ftl_damage,
        strict=True,
    ),
    Claim(
        "04",
        "sequential_old_skills_fall",
        "the old skills after the last sequential edit are below those after the first",
        lambda r: r["sequential"][1]["old_skill_mean"] - r["sequential"][-1]["old_skill_mean"],
        strict=True,
    ),
    Claim(
        "04",
        "sequential_neighbourhood_falls",
        "the neighbourhood after the last sequential edit is below that after the first",
        lambda r: r["sequential"][1]["neighbourhood"] - r["sequential"][-1]["neighbourhood"],
        strict=True,
    ),
    Claim(
        "04",
        "sequential_edits_wear_away",
        "the earlier edits' retention after the last sequential edit is below its best along the curve",
        lambda r: max(_lab04_curve(r, "retention")) - _lab04_curve(r, "retention")[-1],
        strict=True,
    ),
]

# --- Lab 05: task vectors and merging (posttrain.studies.task_vectors_and_merging.run) ------------------------------


def _lab05_negated(results: dict) -> dict[str, float]:
    return results["negation"][str(results["plan"]["negation_scale"])]


def _lab05_others_move(results: dict) -> float:
    """The largest move of any skill other than the negated one, tiny-chat → θ_chat − λ τ."""
    before, after = results["negation"]["0"], _lab05_negated(results)
    skill = results["plan"]["negated_skill"]
    return max(abs(after[name] - before[name]) for name in before if name != skill)


def _lab05_best_sparse_merge(results: dict) -> float:
    rows = results["merging"]
    return max(rows[label]["task_mean"] for label in ("TIES", "DARE + task arithmetic", "DARE + TIES"))


def _lab05_safety_margin(row: dict, finetuned: dict) -> float:
    """How far one safety-merge row is inside "refusal >= 0.8 and >= 0.8 of the fine-tune's new task"."""
    return min(row["accuracy"]["refusal"] - 0.8, row["accuracy"]["multiplication"] - 0.8 * finetuned["multiplication"])


def _lab05_safety_choice(results: dict) -> dict:
    """The linear safety-merge row at ``restoring_weight``: the largest weight that restores refusal to >= 0.8."""
    from posttrain.studies.task_vectors_and_merging import restoring_weight

    rows = results["safety"]["linear"]
    return rows[restoring_weight(rows)]


def _lab05_analogy(results: dict) -> dict:
    return results["analogy"]["B synthetic + 1.0 (A real - A synthetic)"]


LAB05 = [
    Claim(
        "05",
        "negation_removes_refusal",
        "tiny-chat − λ τ_refusal (λ = plan's negation_scale) lowers refusal by >= 50 points",
        lambda r: r["negation"]["0"][r["plan"]["negated_skill"]] - _lab05_negated(r)[r["plan"]["negated_skill"]] - 0.5,
    ),
    Claim(
        "05",
        "negation_keeps_other_skills",
        "... while every other skill (the old skills and the three new tasks) moves <= 10 points",
        lambda r: 0.10 - _lab05_others_move(r),
    ),
    Claim(
        "05",
        "sparse_merge_beats_average",
        "the best of TIES / DARE beats plain averaging on the mean accuracy of the three merged tasks",
        lambda r: _lab05_best_sparse_merge(r) - r["merging"]["average"]["task_mean"],
        strict=True,
    ),
    Claim(
        "05",
        "chat_vector_restores_refusal",
        "tiny-base-cpt + 1.0 chat vector refuses >= 40 points more than tiny-base-cpt",
        lambda r: r["chat_vector"]["1.0"]["refusal"] - r["chat_vector"]["0.0"]["refusal"] - 0.4,
    ),
    Claim(
        "05",
        "chat_vector_answers_cpt_knowledge",
        "... and answers chat questions about the CPT-only people better than tiny-chat and than tiny-base-cpt",
        lambda r: (
            r["chat_vector"]["1.0"]["cpt_facts_chat"]
            - max(r["chat_vector"]["chat"]["cpt_facts_chat"], r["chat_vector"]["0.0"]["cpt_facts_chat"])
        ),
        strict=True,
    ),
    Claim(
        "05",
        "safety_merge_restores_refusal",
        "some linear merge weight of Lab 01's fine-tune restores refusal to >= 0.8 and keeps >= 0.8 of its new task",
        lambda r: max(_lab05_safety_margin(row, r["safety"]["finetuned"]) for row in r["safety"]["linear"].values()),
    ),
    Claim(
        "05",
        "safety_merge_still_forgets",
        "at that weight an old skill still forgets >= 30 % of its items sample-wise (chance-adjusted, 1 → 0)",
        lambda r: max(f["forgetting_adjusted"] for f in _lab05_safety_choice(r)["forgetting"].values()) - 0.3,
    ),
    Claim(
        "05",
        "analogy_helps_a_little",
        "τ_B,syn + (τ_A,real − τ_A,syn) answers more real subtraction questions than τ_B,syn alone",
        lambda r: _lab05_analogy(r)["subtraction"] - r["analogy"]["B synthetic"]["subtraction"],
        strict=True,
    ),
    Claim(
        "05",
        "analogy_stays_weak",
        "... but below half of them (the measured negative result: the gap vector does not transfer the style)",
        lambda r: 0.5 - _lab05_analogy(r)["subtraction"],
        strict=True,
    ),
]


# --- Lab 06: test-time training (posttrain.studies.test_time_training.run) -------------------------------------------


def _lab06_mean(results: dict) -> dict[str, float]:
    return results["vision"]["corruptions"]["mean"]


def _lab06_last(results: dict) -> dict[str, float]:
    """Each stream method's accuracy in the stream's last round."""
    return {method: curve[-1] for method, curve in results["vision"]["stream"].items()}


def _lab06_levels(results: dict) -> list[dict]:
    """SUTA's rows, one per noise level in the plan's order (least noisy first)."""
    speech = results["speech"]
    return [speech["wer"][f"{level:g}"] for level in speech["plan"]["levels"]]


# A level "shifts" the recogniser when its noise raises the unadapted WER this far above the clean WER.
LAB06_SHIFT = 0.1


def _lab06_shifted(results: dict, shifted: bool) -> list[dict]:
    """SUTA's rows at the levels whose noise does (``shifted``) or does not raise the unadapted WER by
    ``LAB06_SHIFT`` over the clean WER."""
    clean = results["speech"]["wer"]["clean"]
    return [row for row in _lab06_levels(results) if (row["unadapted"] - clean >= LAB06_SHIFT) == shifted]


def _lab06_gain_under_noise(results: dict) -> float:
    """SUTA's smallest WER reduction over the shifted levels (-1 when no level shifts the recogniser)."""
    return min((row["unadapted"] - row["suta"] for row in _lab06_shifted(results, True)), default=-1.0)


LAB06 = [
    Claim(
        "06",
        "tent_beats_unadapted",
        "TENT improves corrupted-digit accuracy by >= 5 points over the unadapted model (mean of four corruptions)",
        lambda r: _lab06_mean(r)["tent"] - _lab06_mean(r)["unadapted"] - 0.05,
    ),
    Claim(
        "06",
        "tent_is_bn_adapt",
        "... and BN-adapt does as well, within 3 points: on 8×8 digits the gain is the test batch's statistics",
        lambda r: 0.03 - abs(_lab06_mean(r)["tent"] - _lab06_mean(r)["bn_adapt"]),
    ),
    Claim(
        "06",
        "pretext_below_bn_adapt",
        "pretext TTT (rotation) stays below BN-adapt (the measured result: one seed of three is below no adaptation)",
        lambda r: _lab06_mean(r)["bn_adapt"] - _lab06_mean(r)["pretext"],
        strict=True,
    ),
    Claim(
        "06",
        "suta_lowers_wer_under_noise",
        "SUTA lowers the WER at every level whose noise raises the unadapted WER >= 10 points above clean (the "
        "issue's 'every evaluated SNR' is not met: at 30 dB, where noise leaves the WER at the clean one, it rose on "
        "two seeds of three)",
        _lab06_gain_under_noise,
        strict=True,
    ),
    Claim(
        "06",
        "suta_acts_on_the_shift",
        "... and where the noise does not shift the recogniser, SUTA moves the WER (either way) by less than its "
        "smallest gain under noise",
        lambda r: (
            _lab06_gain_under_noise(r)
            - max((abs(row["unadapted"] - row["suta"]) for row in _lab06_shifted(r, False)), default=0.0)
        ),
        strict=True,
    ),
    Claim(
        "06",
        "suta_gains_most_when_noisiest",
        "... by >= 20 % relative at the noisiest level",
        lambda r: _lab06_levels(r)[-1]["relative_gain"] - 0.2,
    ),
    Claim(
        "06",
        "continual_collapses",
        "on the long class-sorted stream, continual TENT without reset ends below the unadapted model",
        lambda r: _lab06_last(r)["unadapted"] - _lab06_last(r)["continual"],
        strict=True,
    ),
    Claim(
        "06",
        "periodic_reset_holds",
        "... while a periodic reset (RDumb) ends above it",
        lambda r: _lab06_last(r)["periodic_reset"] - _lab06_last(r)["unadapted"],
        strict=True,
    ),
    Claim(
        "06",
        "shift_reset_holds",
        "... and so does a reset on a detected shift (after Dynamic SUTA)",
        lambda r: _lab06_last(r)["shift_reset"] - _lab06_last(r)["unadapted"],
        strict=True,
    ),
    Claim(
        "06",
        "filter_alone_collapses",
        "EATA's sample filter alone does not stop the collapse (ends below the unadapted model)",
        lambda r: _lab06_last(r)["unadapted"] - _lab06_last(r)["continual_filtered"],
        strict=True,
    ),
    Claim(
        "06",
        "eata_anchor_holds",
        "... with EATA's pull toward the start it ends above the unadapted model",
        lambda r: _lab06_last(r)["eata"] - _lab06_last(r)["unadapted"],
        strict=True,
    ),
    Claim(
        "06",
        "nn_ttt_answers_cpt_facts",
        "nearest-neighbour TTT answers more CPT-only questions than no adaptation",
        lambda r: r["language"]["nearest_neighbour_ttt"] - r["language"]["no_adaptation"],
        strict=True,
    ),
    Claim(
        "06",
        "nn_ttt_beats_in_context",
        "... and more than the same retrieval given in the prompt (the measured result of the tiny world)",
        lambda r: r["language"]["nearest_neighbour_ttt"] - max(r["language"]["in_context"].values()),
        strict=True,
    ),
]


CLAIMS: dict[str, list[Claim]] = {"01": LAB01, "02": LAB02, "03": LAB03, "04": LAB04, "05": LAB05, "06": LAB06}


def claim(lab: str, name: str) -> Claim:
    """The claim of ``lab`` called ``name`` (``KeyError`` listing the lab's claims when there is none)."""
    found = {c.name: c for c in CLAIMS[lab]}
    if name not in found:
        raise KeyError(f"Lab {lab} has no claim {name!r}; its claims are {sorted(found)}")
    return found[name]


def margins(lab: str, results: dict) -> dict[str, float]:
    """Every claim's margin of ``lab`` on one seed's results."""
    return {c.name: c.margin(results) for c in CLAIMS[lab]}


def notebook_results(lab: str, results: dict) -> dict:
    """Seed 0's results of ``lab`` from its solution notebook's results JSON, as the tests check them: Lab 01's in the
    form of ``learning_rate_sweep`` with the notebook's own results under ``"notebook"`` (every sweep run starts from
    the same tiny-chat, so one snapshot before), every other lab's as they are."""
    if lab != "01":
        return results
    runs = {
        lr: {
            "accuracy_before": results["accuracy_before"],
            "accuracy_after": after,
            "table": results["sample_wise_by_lr"][lr],
        }
        for lr, after in results["sweep_final"].items()
    }
    return {"runs": runs, "notebook": results}


def _known_lab(lab: str) -> None:
    """Raise ``KeyError`` naming the labs with claims unless ``lab`` is one of them."""
    if lab not in CLAIMS:
        raise KeyError(f"no claims are defined for lab {lab!r}; choose one of {sorted(CLAIMS)}")


def lab_benchmark(lab: str, seed: int = 0):
    """The ``ForgettingBenchmark`` that ``lab``'s solution notebook builds on the tiny profile for ``seed``."""
    from posttrain.core.profiles import resolve_profile
    from posttrain.world.benchmarks import forgetting_benchmark, tiny_forgetting_benchmark

    _known_lab(lab)
    if lab == "01":
        return tiny_forgetting_benchmark(n_per_skill=100)
    new_task = {"02": "new_facts", "03": "verbose_facts", "04": "multiplication"}[lab]
    return forgetting_benchmark(resolve_profile("tiny"), n_per_skill=40, seed=seed, new_task=new_task)


def package_results(lab: str, seed: int) -> dict:
    """One seed's results of ``lab`` on the tiny profile from the package's path with the notebook's settings (what
    seeds 1 and 2 are). Lab 01's are ``{"runs": learning_rate_sweep(...)}``."""
    from posttrain.core.profiles import resolve_profile

    _known_lab(lab)
    if lab == "04":
        from posttrain.studies.causal_tracing_and_rome import PLANS, run

        return run(resolve_profile("tiny"), PLANS["tiny"], seed)
    if lab == "05":
        from posttrain.studies.task_vectors_and_merging import PLANS, run

        return run(resolve_profile("tiny"), PLANS["tiny"], seed)
    if lab == "06":
        from posttrain.studies.test_time_training import run

        return run(seed)
    bench = lab_benchmark(lab, seed)
    if lab == "01":
        from posttrain.studies.finetune_and_forget import learning_rate_sweep

        return {"runs": learning_rate_sweep(bench, LAB01_SWEEP, LAB01_STEPS, LAB01_BATCH, seed)}
    profile = resolve_profile("tiny")
    if lab == "02":
        from posttrain.studies.lora_and_regularization import PLANS, summarize, sweep

        before, runs = sweep(profile, bench, PLANS["tiny"], seed=seed)
        return summarize(profile, seed, PLANS["tiny"], before, runs)
    from posttrain.studies.replay_and_self_distillation import PLANS, compare, summarize, theory_study

    before, materials, runs = compare(profile, bench, PLANS["tiny"], seed=seed)
    return summarize(profile, seed, PLANS["tiny"], before, materials, runs, theory_study(seed=seed))


def lab_results(lab: str, seed: int, work: Path) -> dict:
    """One seed's results of ``lab`` on the tiny profile: seed 0 executes the solution notebook in ``work`` and reads
    its results JSON (``notebook_results``), every other seed runs ``package_results``."""
    if seed != 0:
        return package_results(lab, seed)
    _known_lab(lab)
    execute_solution(resolve_lab(REPO_ROOT, lab), work)
    return notebook_results(lab, json.loads((work / "results" / f"{lab}.json").read_text()))
