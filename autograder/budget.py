"""``python -m autograder budget``: every lab's colab plan on a T4, on paper (the table of docs/colab_budget.md).

Each lab's study describes its GPU runs (``colab_budget()``); ``posttrain.core.budget`` turns them into peak memory
and minutes. A GPU run replaces these estimates with measurements.
"""

from __future__ import annotations

import importlib

from autograder.course import Lab


def lab_budgets(labs: list[Lab]) -> list[dict]:
    """The budget row of each lab (``posttrain.core.budget.lab_budget_row`` of its study's ``colab_budget()``)."""
    from posttrain.core.budget import lab_budget_row

    rows = []
    for lab in labs:
        study = importlib.import_module(lab.study)
        rows.append(lab_budget_row(study.colab_budget()))
    return rows


def markdown(rows: list[dict]) -> str:
    """The budget as Markdown: one line per run (peak GB by part) and each lab's estimated minutes."""
    parts = list(next(iter(rows[0]["peaks"].values())))
    lines = [
        "| lab | run | " + " | ".join(parts) + " |",
        "|---|---|" + "---|" * len(parts),
    ]
    for row in rows:
        for label, peak in row["peaks"].items():
            cells = " | ".join(f"**{peak[p]:.2f}**" if p == "total" else f"{peak[p]:.2f}" for p in parts)
            lines.append(f"| {row['lab']} | {label} | {cells} |")
    lines += ["", "| lab | largest peak (GB) | estimated minutes on a T4 |", "|---|---|---|"]
    lines += [f"| {row['lab']} | {row['peak_gb']:.2f} | {row['minutes']:.1f} |" for row in rows]
    return "\n".join(lines) + "\n"
