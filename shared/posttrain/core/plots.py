"""Figures and tables shared by the labs (matplotlib; every figure has a title and labelled axes)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def skill_bars(before: dict[str, float], after: dict[str, float], title: str) -> plt.Figure:
    """Grouped bars of accuracy per skill, before and after post-training."""
    names = list(before)
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(names)), 3.2))
    ax.bar([x - 0.2 for x in xs], [before[n] for n in names], width=0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [after[n] for n in names], width=0.4, label="after")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylabel("accuracy (share of items)")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    plt.show()
    return fig


def print_sample_wise_table(table: dict[str, dict[str, float]]) -> None:
    """Print average accuracy next to sample-wise forgetting (F) and backward transfer (BT) per skill."""
    header = (
        f"{'skill':>12} {'acc before':>10} {'acc after':>9} {'Δ avg':>6} {'F':>5} {'BT':>5} {'F adj':>6} {'BT adj':>6}"
    )
    print(header)
    for skill, row in table.items():
        adjusted = [row.get("forgetting_adjusted"), row.get("backward_transfer_adjusted")]
        adj = " ".join(f"{v:6.2f}" if v is not None else f"{'-':>6}" for v in adjusted)
        delta = row["accuracy_after"] - row["accuracy_before"]
        print(
            f"{skill:>12} {row['accuracy_before']:10.2f} {row['accuracy_after']:9.2f} {delta:+6.2f} "
            f"{row['forgetting']:5.2f} {row['backward_transfer']:5.2f} {adj}"
        )


def forgetting_curves(
    curves: dict[float, dict[str, list[tuple[int, float]]]],
    new_task: dict[float, list[tuple[int, float]]],
    title: str,
) -> plt.Figure:
    """One panel per learning rate: forgetting F of each old skill and the new task's accuracy vs step."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), sharey=True, squeeze=False)
    for ax, (lr, per_skill) in zip(axes[0], sorted(curves.items()), strict=True):
        for skill, points in per_skill.items():
            ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=f"F {skill}")
        ax.plot(*zip(*new_task[lr], strict=True), color="black", lw=2, ls="--", label="new task accuracy")
        ax.set_title(f"lr = {lr:g}")
        ax.set_xlabel("optimizer step")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("share of items")
    axes[0][-1].legend(fontsize=7, loc="center right")
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()
    return fig


def learning_forgetting_plane(runs: list[dict], front: list[str], title: str) -> plt.Figure:
    """Each run of Lab 02 as a point (new-task accuracy, mean old-skill drop), one marker per method family, and
    the Pareto front as a line: the learning–forgetting plane of Biderman et al. 2024 (arXiv:2405.09673, fig. 5)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    families = list(dict.fromkeys(run["family"] for run in runs))
    markers = "osD^v<>phX*"
    for index, family in enumerate(families):
        points = [(run["new_accuracy"], run["old_drop"]) for run in runs if run["family"] == family]
        ax.scatter(*zip(*points, strict=True), marker=markers[index % len(markers)], s=36, label=family, alpha=0.85)
    by_label = {run["label"]: run for run in runs}
    line = sorted((by_label[label]["new_accuracy"], by_label[label]["old_drop"]) for label in front)
    ax.plot(*zip(*line, strict=True), color="black", lw=1, ls="--", label="Pareto front")
    ax.set_xlabel("new-task accuracy (learned)")
    ax.set_ylabel("mean old-skill accuracy drop (forgotten)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    plt.show()
    return fig


def energy_curves(curves: dict[str, list[float]], lora_ranks: list[int], energy: float, title: str) -> plt.Figure:
    """Cumulative share of ‖ΔW‖²_F held by the top k singular directions, averaged over the adapted matrices, for
    each run in ``curves``; dotted lines mark the LoRA ranks and the ``energy`` level that defines effective rank."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=label)
    for rank in lora_ranks:
        ax.axvline(rank, color="grey", lw=0.8, ls=":")
    ax.axhline(energy, color="black", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("number of singular directions k")
    ax.set_ylabel("share of ‖ΔW‖²_F in the top k")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    plt.show()
    return fig


def grouped_bars(groups: list[str], series: dict[str, list[float]], ylabel: str, title: str) -> plt.Figure:
    """One group of bars per entry of ``groups``, one bar per series (its values in group order), on a 0–1 axis."""
    xs = np.arange(len(groups))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.0 * len(groups)), 3.4))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(xs + (i - (len(series) - 1) / 2) * width, values, width=width, label=label)
    ax.set_xticks(xs, groups, rotation=25, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
    return fig


def variant_bars(runs: list[dict], title: str) -> plt.Figure:
    """Lab 03: for each training-data variant, its new-task accuracy next to its mean sample-wise forgetting F of
    the old skills (Harmon et al. 2025, arXiv:2510.17776)."""
    series = {
        "new-task accuracy": [run["new_accuracy"] for run in runs],
        "old-skill forgetting F": [run["forgetting"] for run in runs],
    }
    return grouped_bars([run["label"] for run in runs], series, "share of items", title)


def trajectory_curves(
    trajectories: dict[str, dict], key: str, truth: float, ylabel: str, title: str, log: bool = False
) -> plt.Figure:
    """One line per run of ``posttrain.methods.theory.train_mixture`` (as dicts): ``key`` (``old_mass``, ``old_weight``,
    ``old_mean``) against the training step, with the ideal model's value ``truth`` dotted."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, trajectory in trajectories.items():
        ax.plot(trajectory["steps"], trajectory[key], label=label)
    ax.axhline(truth, color="black", lw=0.8, ls=":", label=f"ideal model ({truth:g})")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
    return fig


def drift_against_overlap(separations: list[float], drift: list[float], overlap: list[float], title: str) -> plt.Figure:
    """The old mean's drift under reverse KL against the modes' separation Δ on a log scale, with the power law
    c·BC^k in the Bhattacharyya coefficient that fits it best (least squares in log space)."""
    slope, intercept = np.polyfit(np.log(overlap), np.log(drift), 1)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(separations, drift, "o-", label="measured drift of the old mean")
    fitted = np.exp(intercept) * np.asarray(overlap) ** slope
    ax.plot(separations, fitted, "--", label=f"{np.exp(intercept):.2f} · BC^{slope:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("separation Δ of the modes (in standard deviations)")
    ax.set_ylabel("largest |μ_old − 0|")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
    return fig


def trace_heatmaps(traces: dict[str, dict], panels: list[tuple[str, str]], title: str) -> plt.Figure:
    """Lab 04: average causal traces (Meng et al. 2022, fig. 1) as heat maps, one panel per (relation, state kind)
    of ``panels``: the normalised indirect effect of restoring that state at each (token, layer), the subject's last
    token marked."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, (relation, kind) in zip(axes[0], panels, strict=True):
        trace = traces[relation]
        effects = np.array(trace[kind])
        image = ax.imshow(effects, aspect="auto", origin="lower", cmap="Purples", vmin=0, vmax=max(1e-6, effects.max()))
        ax.set_xticks(range(len(trace["tokens"])), trace["tokens"], rotation=60, ha="right", fontsize=7)
        ax.axvline(trace["subject_last"], color="red", lw=0.8, ls=":")
        ax.set_xlabel("token (red: the subject's last)")
        ax.set_ylabel("layer")
        ax.set_title(f"{relation}: restore {kind} ({trace[f'{kind}_used']} prompts)", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.show()
    return fig


def editor_bars(editors: dict[str, dict], scores: list[str], title: str) -> plt.Figure:
    """Lab 04: one group of bars per CounterFact score (``scores``: keys of each editor's row), one bar per editor
    (an empty score, None, drawn as 0)."""
    series = {name: [row[s] if row[s] is not None else 0.0 for s in scores] for name, row in editors.items()}
    return grouped_bars([s.replace("_", " ") for s in scores], series, "share of prompts", title)


def sequential_curves(curve: list[dict], keys: list[str], title: str) -> plt.Figure:
    """Lab 04: each of ``keys`` (retention of the edits so far, neighbourhood, unedited facts, old skills) against
    the number of sequential edits, on a log₂ axis (0 edits plotted at 0.5)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for key in keys:
        points = [(max(row["edits"], 0.5), row[key]) for row in curve if row.get(key) is not None]
        ax.plot(*zip(*points, strict=True), marker="o", label=key.replace("_", " "))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("number of sequential ROME edits (0 at the left edge)")
    ax.set_ylabel("share right")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
    return fig


def sweep_curves(xs: list[float], series: dict[str, list[float]], xlabel: str, title: str) -> plt.Figure:
    """Each series (an accuracy) against a swept quantity (Lab 05: a merge weight λ or α; Lab 06: the round of a test
    stream), on a 0–1 axis."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, values in series.items():
        ax.plot(xs, values, "o-", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
    return fig
