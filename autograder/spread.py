"""``python -m autograder spread``: how far each claim's margin moves across seeds and platforms.

``measure`` runs every seed of the chosen labs exactly as the tests do (``claims.lab_results``) in *this* process's
platform — its thread count, torch's CPU kernel path (lower it with ``ATEN_CPU_CAPABILITY=avx2`` or ``default``)
and its library versions — and stores each claim's margin under a label in ``docs/spread/<label>.json``.
``report`` compares the labels: a claim is robust when its smallest margin over every seed and platform, less the
most any seed's margin moved between platforms, still satisfies the claim (``Claim.accepts``: > 0 for a strict claim,
>= 0 otherwise, down to minus the claim's named tolerance, if it has one), and
``docs/margins.md`` tabulates it.
"""

from __future__ import annotations

import json
from pathlib import Path

from autograder.claims import CLAIMS, lab_results, margins

SPREAD_DIR = Path(__file__).resolve().parents[1] / "docs" / "spread"


def measure(labs: list[str], seeds: list[int], label: str, out_dir: Path, work: Path) -> Path:
    """Record every claim's margin of ``labs`` x ``seeds`` on this platform in ``out_dir/<label>.json``.

    Each seed's full results are kept in ``work/<label>/<lab>-seed<seed>.json``: a run that is interrupted resumes
    from them, and a changed claim definition is re-measured from them without training again."""
    from posttrain.core.profiles import run_environment

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{label}.json"
    stored = json.loads(path.read_text()) if path.exists() else {"environment": run_environment(), "margins": {}}
    if stored["environment"] != run_environment():
        raise ValueError(f"{path} was measured in another environment ({stored['environment']}); choose a new label")
    for lab in labs:
        for seed in seeds:
            saved = work / label / f"{lab}-seed{seed}.json"
            if not saved.exists():
                print(f"spread {label}: lab {lab}, seed {seed}", flush=True)
                results = lab_results(lab, seed, work / label / f"{lab}-seed{seed}")
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_text(json.dumps(results))
            results = json.loads(saved.read_text())
            stored["margins"].setdefault(lab, {})[str(seed)] = margins(lab, results)
            path.write_text(json.dumps(stored, indent=1) + "\n")
    return path


def spread_table(out_dir: Path) -> list[dict]:
    """One row per claim: its tolerance, the smallest margin over every seed and platform stored in ``out_dir``, the
    largest seed-to-seed spread on one platform and the largest platform-to-platform spread of one seed."""
    platforms = {path.stem: json.loads(path.read_text())["margins"] for path in sorted(out_dir.glob("*.json"))}
    rows = []
    for lab, claims in CLAIMS.items():
        for claim in claims:
            values = {
                (platform, int(seed)): per_seed[claim.name]
                for platform, stored in platforms.items()
                for seed, per_seed in stored.get(lab, {}).items()
                if claim.name in per_seed
            }
            if not values:
                continue
            seeds = sorted({seed for _, seed in values})
            names = sorted({platform for platform, _ in values})
            by_seed = [[values[p, s] for p in names if (p, s) in values] for s in seeds]
            by_platform = [[values[p, s] for s in seeds if (p, s) in values] for p in names]
            platform_spread = max(max(v) - min(v) for v in by_seed)
            rows.append(
                {
                    "lab": lab,
                    "claim": claim.name,
                    "text": claim.text,
                    "tolerance": claim.tolerance,
                    "min_margin": min(values.values()),
                    "seed_spread": max(max(v) - min(v) for v in by_platform),
                    "platform_spread": platform_spread,
                    "runs": len(values),
                    "platforms": names,
                    "robust": claim.accepts(min(values.values()) - platform_spread),
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    """The spread table as Markdown (the generated part of ``docs/margins.md``)."""
    lines = [
        "| lab | claim | smallest margin | seed spread | platform spread | tolerance | runs | clears the spread |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['lab']} | `{row['claim']}`: {row['text']} | {row['min_margin']:+.3f} | {row['seed_spread']:.3f} "
            f"| {row['platform_spread']:.3f} | {row['tolerance']:.3f} | {row['runs']} | "
            f"{'yes' if row['robust'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"
