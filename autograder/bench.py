"""``python -m autograder bench``: how fast the labs and the grader run, as JSON in ``docs/bench/``.

* ``labs.json``: each lab's solution notebook on the tiny profile, kernel start included;
* ``speed.json``: the machine's fp32 GEMM peak, a Lab 01 training step's FLOP/s against it, and one forgetting
  snapshot of each lab's benchmark (generation and multiple choice apart), from ``posttrain.core.speed``;
* ``lora.json``: our LoRA's training step against PEFT's (Lab 02);
* ``merge.json``: peak memory and time of merging two fine-tunes of a 106 M-parameter Llama into its base, streamed
  (``posttrain.methods.merging.merge_checkpoints``) against loading all three models (Lab 05);
* ``autograde.json``: the grader, below.

The grader is measured on the mini lab of the test suite (``tests/fixtures/mini_lab``), whose notebooks run in about a
second, so that what is timed is the grader, not training:

* overhead per submission: a submission's grading wall time minus its notebook's own execution time
  (recorded by ``ResilientExecute``), graded one at a time in the sandbox;
* speed-up: the same class graded with 1 worker and with 2 workers, in one run.

It also writes a paper estimate for a 500-student class on a Slurm GPU cluster from these numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from autograder.attacks import solved_release
from autograder.claims import LAB01_BATCH, LAB01_MAIN_LR, lab_benchmark
from autograder.course import REPO_ROOT, Lab, all_labs
from autograder.demo import execute_solution
from autograder.grade import Limits, find_submissions
from autograder.release import release
from autograder.sandbox import check_sandbox
from autograder.scheduler import ResultStore, connected, default_threads, grade_class

MINI_LAB = REPO_ROOT / "tests" / "fixtures" / "mini_lab"
CLASS_SIZE = 12


def _mini_lab(work: Path) -> Lab:
    """A scratch course repo holding the mini lab, released."""
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(MINI_LAB / "solutions", repo / "solutions")
    lab = Lab(repo, "00_mini")
    release([lab])
    return lab


def _grade(lab: Lab, folder: Path, grading: Path, workers: int) -> tuple[float, list]:
    """Grade ``folder`` with ``workers`` (sandboxed); return the wall seconds and the results."""
    shutil.rmtree(grading, ignore_errors=True)
    jobs = find_submissions(folder, lab, limits=Limits.for_lab(lab), threads=default_threads(workers))
    store = ResultStore(lab, grading)
    if workers == 1:
        start = time.monotonic()
        results = list(grade_class(jobs, store))
        return time.monotonic() - start, results
    with connected(workers) as client:
        start = time.monotonic()  # the cluster's start-up is not grading time
        results = list(grade_class(jobs, store, client))
        return time.monotonic() - start, results


def run_grading_bench(out_dir: Path, work: Path) -> dict:
    """Time the grader; write ``out_dir/autograde.json`` and return its content."""
    from posttrain.core.profiles import run_environment

    check_sandbox()
    lab = _mini_lab(work)
    folder = work / "class"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for index in range(CLASS_SIZE):
        nbformat.write(solved_release(lab), folder / f"student{index:02d}.ipynb")

    serial_seconds, results = _grade(lab, folder, work / "grading-1", workers=1)
    overheads, guard = [], []
    for result in results:
        executed = json.loads(result.autograded)["metadata"]["autograder"]
        guard.append(executed["guard_seconds"])
        overheads.append(result.seconds - executed["execution_seconds"] + executed["guard_seconds"])
    parallel_seconds, _ = _grade(lab, folder, work / "grading-2", workers=2)
    report = {
        "environment": run_environment(),
        "class": f"{CLASS_SIZE} submissions of the mini lab (tests/fixtures/mini_lab), sandboxed",
        "overhead_per_submission_s": _spread(
            overheads,
            2,
            "grading wall time minus the notebook's own execution (kernel start to last cell), plus the kernel "
            "guard's time inside it; after a one-off ~3 s per worker process to build the lab's assignment gradebook",
        ),
        "kernel_guard_s": _spread(
            guard,
            3,
            "the guard capturing the kernel's state and checking it around each test cell, per submission, as timed "
            "in the kernel (the imports it makes first are the lab's first cell's, moved earlier); included in the "
            "overhead above",
        ),
        "class_seconds": {"1_worker": round(serial_seconds, 1), "2_workers": round(parallel_seconds, 1)},
        "speedup_2_workers": round(serial_seconds / parallel_seconds, 2),
        "estimate_500_students_slurm_gpu": _slurm_estimate(statistics.median(overheads)),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "autograde.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _spread(values: list[float], digits: int, what: str) -> dict:
    """The median and maximum of ``values`` (seconds), rounded, with what they measure."""
    return {"median": round(statistics.median(values), digits), "max": round(max(values), digits), "what": what}


def _slurm_estimate(overhead_s: float) -> dict:
    """A paper estimate for 500 Lab-01 submissions on 10 single-GPU Slurm nodes, 4 workers each."""
    notebook_s = 20 * 60  # a colab-profile lab is designed for <= 20 min on a T4; an A100 node is faster
    workers = 10 * 4
    total_s = 500 / workers * (notebook_s + overhead_s) + 120  # + job start-up
    return {
        "assumptions": "10 Slurm nodes x 1 GPU, 4 kernels per GPU, 20 min per colab-profile notebook, "
        f"{overhead_s:.1f} s grader time per submission, 2 min for the jobs to start",
        "hours": round(total_s / 3600, 1),
    }


def run_bench(repo: Path, out_dir: Path, work: Path) -> dict[str, dict]:
    """Time each lab's solution notebook on the tiny profile; write ``out_dir/labs.json`` and return it."""
    from posttrain.core.profiles import run_environment

    report = {}
    for lab in all_labs(repo):
        _, seconds = execute_solution(lab, work / lab.name)
        report[lab.name] = {"profile": os.environ.get("POSTTRAIN_PROFILE", "tiny"), "seconds": round(seconds, 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "labs.json").write_text(json.dumps({"environment": run_environment(), "labs": report}, indent=1) + "\n")
    return report


def run_lora_bench(out_dir: Path) -> dict:
    """Time our LoRA's training step against PEFT's on the Lab 02 model and batch; write ``out_dir/lora.json``."""
    from posttrain.core.profiles import resolve_profile, run_environment
    from posttrain.studies.lora_and_regularization import lora_step_time
    from posttrain.world.benchmarks import forgetting_benchmark

    profile = resolve_profile(None)
    report = lora_step_time(profile, forgetting_benchmark(profile, new_task="new_facts"))
    report["environment"] = run_environment()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lora.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def run_speed_bench(out_dir: Path, train_steps: int = 12) -> dict:
    """Measure the GEMM peak, a Lab 01 training step of tiny-chat (batch ``LAB01_BATCH``) and one snapshot of each
    lab's tiny benchmark with tiny-chat; write ``out_dir/speed.json`` and return it."""
    import torch

    from posttrain.core.data import chat_example
    from posttrain.core.models import load_model
    from posttrain.core.profiles import run_environment
    from posttrain.core.speed import gemm_peak_flops, snapshot_seconds, training_flops
    from posttrain.core.train import TrainConfig

    peak = gemm_peak_flops()
    model, tokenizer = load_model("tiny-chat", device="cpu", dtype=torch.float32)
    snapshots = {lab: snapshot_seconds(model, tokenizer, lab_benchmark(lab)) for lab in ("01", "02", "03")}
    examples = [chat_example(tokenizer, u, a) for u, a in lab_benchmark("01").new_task_train]
    config = TrainConfig(steps=train_steps, lr=LAB01_MAIN_LR, batch_size=LAB01_BATCH, progress=False)
    step = training_flops(model, examples, config, pad_id=tokenizer.pad_token_id)
    what = f"tiny-chat on Lab 01's new task, batch {LAB01_BATCH}: median step of {train_steps - 1}, 6·N·D FLOPs"
    report = {
        "environment": run_environment(),
        "gemm_peak_gflops": round(peak / 1e9, 1),
        "training_step": {
            "step_s": round(step["step_s"], 4),
            "parameters": step["parameters"],
            "tokens_per_step": round(step["tokens_per_step"], 1),
            "gflops": round(step["flops_per_s"] / 1e9, 1),
            "share_of_gemm_peak": round(step["flops_per_s"] / peak, 3),
            "what": what,
        },
        "snapshot_per_lab": snapshots,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "speed.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


# The merge bench's model: Llama with 9 layers of width 768 and an untied 32 000-word vocabulary, 106 M parameters.
MERGE_BENCH_SHAPE = {"vocab_size": 32_000, "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 9}
# One merge in a fresh process, which prints its own peak resident memory and wall time. The peak is VmHWM, which
# starts afresh at exec; ``ru_maxrss`` would carry over the parent's peak from before the fork.
_MERGE_CHILD = """
import json, re, sys, time
from pathlib import Path
import torch
from posttrain.methods.merging import Merge, merge_checkpoints, merge_state_dicts
root, how = Path(sys.argv[1]), sys.argv[2]
merge = Merge("ties", densities=(0.5, 0.5))
start = time.perf_counter()
if how == "streaming":
    merge_checkpoints(root / "base", [root / "ft1", root / "ft2"], merge, root / "out-streaming")
else:
    from transformers import LlamaForCausalLM
    models = [LlamaForCausalLM.from_pretrained(root / n, dtype=torch.float32) for n in ("base", "ft1", "ft2")]
    merged = merge_state_dicts(models[0].state_dict(), [m.state_dict() for m in models[1:]], merge)
    models[0].load_state_dict(merged)
    models[0].save_pretrained(root / "out-naive")
seconds = time.perf_counter() - start
peak_kib = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps({"peak_rss_mb": peak_kib / 1024, "seconds": seconds}))
"""


def run_merge_bench(out_dir: Path, work: Path) -> dict:
    """Peak resident memory and time of a TIES merge of two fine-tunes into their base, each path in a fresh
    process: streaming over safetensors tensors against loading the three models whole (``from_pretrained``,
    ``merge_state_dicts``, ``save_pretrained``). The checkpoints are a random Llama of ``MERGE_BENCH_SHAPE`` and two
    copies of it plus small random task vectors, in float32; write ``out_dir/merge.json``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from posttrain.core.models import count_parameters
    from posttrain.core.profiles import run_environment

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    torch.manual_seed(0)
    config = LlamaConfig(**MERGE_BENCH_SHAPE, num_attention_heads=12, num_key_value_heads=4, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(work / "base")
    base = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    for name in ("ft1", "ft2"):
        with torch.no_grad():
            for key, tensor in model.state_dict().items():
                tensor.copy_(base[key] + 1e-3 * torch.randn_like(tensor))
        model.save_pretrained(work / name)
    parameters = count_parameters(model)
    del model, base
    runs = {}
    for how in ("streaming", "naive"):
        done = subprocess.run([sys.executable, "-c", _MERGE_CHILD, str(work), how], check=True, capture_output=True)
        runs[how] = {k: round(v, 1) for k, v in json.loads(done.stdout.decode().splitlines()[-1]).items()}
    checkpoint_mb = sum(f.stat().st_size for f in (work / "base").glob("*.safetensors")) / 2**20
    report = {
        "environment": run_environment(),
        "parameters": parameters,
        "checkpoint_mb": round(checkpoint_mb, 1),
        "merge": "ties, density 0.5, two fine-tunes into their base, float32",
        **runs,
        "streaming_over_naive_peak": round(runs["streaming"]["peak_rss_mb"] / runs["naive"]["peak_rss_mb"], 3),
    }
    shutil.rmtree(work, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "merge.json").write_text(json.dumps(report, indent=1) + "\n")
    return report
