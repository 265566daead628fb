"""A GPU budget on paper: the peak memory and the time of a colab-profile run, before anyone pays for a GPU.

Training holds float32 master weights and trains under 16-bit autocast (``posttrain.core.train``), so per parameter
it keeps 4 bytes of weights, 4 of gradient and 8 of AdamW moments (the 16 bytes of mixed-precision Adam, Rajbhandari
et al. 2020, "ZeRO", arXiv:1910.02054, sec. 3.1) plus the 2-byte 16-bit copy autocast saves for the backward pass. On
top come the activations kept for the backward pass, counted per token and layer for a Llama/Qwen2 block run with
SDPA attention (no s × s score matrix is stored; after Korthikanti et al. 2022, arXiv:2205.05198, sec. 4.1): the
float32 residual stream and both RMSNorms (3 × 4 h each), the 16-bit inputs and outputs of every projection, RoPE's
rotated q and k, the key/value heads repeated for SDPA, and SwiGLU's four intermediate tensors (4 × 2 i). The
language-model head adds the logits: 16-bit, their shifted copy, the float32 copy the loss takes and log-softmax's
float32 output, 12 bytes per token and vocabulary entry. Any other full copy a lab holds (a penalty's anchor, the
Fisher diagonal, a model the notebook keeps loaded) is 4 bytes per parameter.

Time: a training step costs 6 P FLOPs per token (Kaplan et al. 2020, arXiv:2001.08361, sec. 2.1), at an assumed
sustained fraction of the GPU's 16-bit peak (its float32 peak for a model that computes in float32); greedy decoding
reads every float32 weight once per generated token, at an assumed fraction of the memory bandwidth. Both fractions
are assumptions until a GPU run measures them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .evaluate import GENERATION_BATCH

GB = 1e9


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on: parameter count P, layers L, hidden size h, MLP size i, key/value width (heads ×
    head size) and vocabulary V."""

    name: str
    parameters: int
    layers: int
    hidden: int
    intermediate: int
    kv_width: int
    vocab: int
    frontend_bytes_per_token: int = 0  # activations of a front end before the blocks, in 16-bit bytes per token


# Qwen/Qwen2.5-0.5B-Instruct's config.json: 24 layers, hidden 896, MLP 4864, 2 key/value heads of 64, tied embeddings.
QWEN2_5_0_5B = ModelShape("Qwen/Qwen2.5-0.5B-Instruct", 494_032_768, 24, 896, 4864, 128, 151_936)
# gpt2-xl's config.json: 48 layers, n_embd 1600, MLP 4 × 1600, 25 heads of 64 (no grouped keys), vocabulary 50 257.
# Its activations are counted with the Llama/Qwen2 block's formula, an upper bound for GPT-2's two-matrix MLP.
GPT2_XL = ModelShape("gpt2-xl", 1_557_611_200, 48, 1600, 6400, 1600, 50_257)
# facebook/wav2vec2-base-960h (Baevski et al. 2020, arXiv:2006.11477): 12 post-norm blocks of width 768, MLP 3072, a
# 32-character CTC head; one "token" is a 20 ms frame. Its convolutional feature encoder (7 layers of 512 channels,
# strides 5, 2, 2, 2, 2, 2, 2) computes 64 + 32 + 16 + 8 + 4 + 2 + 1 = 127 positions per frame, each keeping its
# convolution's and GELU's outputs (and the first layer's group norm, 64 more), 4 bytes each: 651 264 bytes per frame
# in float32, 325 632 counted as 16-bit. The blocks are counted with the Llama formula (an upper bound for GELU's MLP).
WAV2VEC2_BASE = ModelShape("facebook/wav2vec2-base-960h", 94_396_320, 12, 768, 3072, 768, 32, 325_632)


@dataclass(frozen=True)
class GPU:
    """A GPU's memory, its 16-bit tensor-core and float32 peaks and memory bandwidth, and the assumed sustained
    fractions."""

    name: str
    memory_gb: float
    peak_tflops: float
    fp32_tflops: float
    bandwidth_gbs: float
    compute_share: float = 0.3
    bandwidth_share: float = 0.5


T4 = GPU("T4", memory_gb=15.0, peak_tflops=65.0, fp32_tflops=8.1, bandwidth_gbs=320.0)


@dataclass(frozen=True)
class TrainingRun:
    """One fine-tuning run of a lab on the GPU.

    ``micro_batch`` × ``seq_len`` tokens go through one forward and backward pass (``grad_accum`` of them make a
    step); ``trainable`` is the number of trained parameters (None: all); ``extra_copies`` counts the other full
    float32 copies of the weights alive at the same time; ``mean_tokens`` is the average sequence length, for time.
    """

    label: str
    steps: int
    micro_batch: int
    grad_accum: int
    seq_len: int
    mean_tokens: int
    trainable: int | None = None
    extra_copies: int = 0
    repeats: int = 1
    autocast: bool = True  # False: a float32 pass (activations and logits twice as large, no 16-bit weight copies)
    optimizer: bool = True  # False: gradients only, no AdamW moments (EWC's Fisher pass)
    fp32_math: bool = False  # True: the model computes in float32 (timed at the GPU's float32 peak)


@dataclass(frozen=True)
class LabBudget:
    """A lab's colab plan on the GPU: its model's shape, its training runs and how many tokens its evaluations decode
    greedily."""

    lab: str
    runs: tuple[TrainingRun, ...]
    generated_tokens: int
    generation_batch: int = GENERATION_BATCH
    shape: ModelShape = QWEN2_5_0_5B


def activation_bytes_per_token(shape: ModelShape) -> int:
    """Bytes of activations one token keeps for the backward pass through all layers and the model's front end (see
    the module docstring)."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_width
    norms_and_residuals = 2 * 3 * 4 * h + 2 * 4 * h  # two RMSNorms in float32 (input, normalised, scaled), two adds
    attention = 2 * (h + h + 2 * kv + h + kv + 2 * h + h)  # q/k/v input, q, k, v, rotated q and k, repeated k/v, out
    mlp = 2 * (h + 4 * i)  # gate/up input; gate, up, SiLU(gate), product
    return shape.layers * (norms_and_residuals + attention + mlp) + shape.frontend_bytes_per_token


def peak_memory(shape: ModelShape, run: TrainingRun) -> dict[str, float]:
    """The GB each part of ``run`` holds at its peak (the end of the forward pass), and their ``total``."""
    trainable = shape.parameters if run.trainable is None else run.trainable
    tokens = run.micro_batch * run.seq_len
    width = 1 if run.autocast else 2  # float32 activations take twice the bytes of 16-bit ones
    parts = {
        "weights (fp32)": 4 * shape.parameters,
        "16-bit weight copies (autocast)": 2 * shape.parameters if run.autocast else 0,
        "gradients (fp32)": 4 * trainable,
        "AdamW moments (fp32)": 8 * trainable if run.optimizer else 0,
        "other fp32 copies": 4 * shape.parameters * run.extra_copies,
        "activations": width * activation_bytes_per_token(shape) * tokens,
        "logits and loss": (12 if run.autocast else 16) * shape.vocab * tokens,
    }
    gb = {name: round(value / GB, 2) for name, value in parts.items()}
    return gb | {"total": round(sum(parts.values()) / GB, 2)}


def training_seconds(shape: ModelShape, run: TrainingRun, gpu: GPU = T4) -> float:
    """Seconds of ``run`` at 6 P FLOPs per token and the GPU's assumed sustained share of its 16-bit peak, or of its
    float32 peak when ``run`` computes in float32 (``fp32_math``)."""
    tokens = run.steps * run.grad_accum * run.micro_batch * run.mean_tokens * run.repeats
    peak = gpu.fp32_tflops if run.fp32_math else gpu.peak_tflops
    return 6 * shape.parameters * tokens / (peak * 1e12 * gpu.compute_share)


def generation_seconds(shape: ModelShape, new_tokens: int, batch_size: int, gpu: GPU = T4) -> float:
    """Seconds to greedy-decode ``new_tokens`` tokens in batches of ``batch_size``: each decoding step of a batch
    reads every float32 weight once (decoding is bound by memory bandwidth, not by FLOPs)."""
    steps = new_tokens / batch_size
    return steps * 4 * shape.parameters / (gpu.bandwidth_gbs * 1e9 * gpu.bandwidth_share)


def lab_budget_row(budget: LabBudget, gpu: GPU = T4) -> dict:
    """The budget of one lab on its model (``budget.shape``): each run's peak memory, the lab's largest peak and its
    estimated minutes."""
    shape = budget.shape
    peaks = {run.label: peak_memory(shape, run) for run in budget.runs}
    seconds = sum(training_seconds(shape, run, gpu) for run in budget.runs)
    seconds += generation_seconds(shape, budget.generated_tokens, budget.generation_batch, gpu)
    return {
        "lab": budget.lab,
        "peaks": peaks,
        "peak_gb": max(p["total"] for p in peaks.values()),
        "minutes": round(seconds / 60, 1),
    }


def lora_parameters(shape: ModelShape, rank: int) -> int:
    """Trainable parameters of rank-``rank`` LoRA on every attention and MLP projection: r (d_in + d_out) each."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_width
    per_layer = (h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h)
    return shape.layers * rank * per_layer
