"""Profiles: one code path, two sizes of world.

``tiny`` runs the shipped tiny-world models on a laptop CPU in minutes (tests, CI, autograding);
``colab`` runs real hub checkpoints on a T4-class GPU. The profile comes from ``POSTTRAIN_PROFILE``,
else from whether CUDA is available.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

PROFILE_ENV = "POSTTRAIN_PROFILE"


@dataclass(frozen=True)
class Profile:
    """What a lab needs to know about where it runs.

    ``chat_model``/``base_model`` are names or paths accepted by ``posttrain.core.models.load_model``;
    ``needs_hub`` says whether they must be downloaded (and therefore need network access); ``licence`` is the
    licence the models are released under.
    """

    name: str
    chat_model: str
    base_model: str
    cpt_model: str | None  # a continually pre-trained sibling of base_model (Lab 05's chat vector)
    needs_hub: bool
    max_new_tokens: int
    licence: str


PROFILES = {
    "tiny": Profile(
        "tiny",
        "tiny-chat",
        "tiny-base",
        "tiny-base-cpt",
        needs_hub=False,
        max_new_tokens=16,
        licence="MIT (this repository)",
    ),
    "colab": Profile(
        "colab",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "Qwen/Qwen2.5-0.5B",
        None,  # Lab 05 picks a same-architecture CPT checkpoint
        needs_hub=True,
        max_new_tokens=256,
        licence="Apache 2.0",
    ),
}


class ProfileError(ValueError):
    """A profile was asked for that does not exist or cannot run here."""


def resolve_profile(name: str | None = None) -> Profile:
    """Return the profile named by ``name``, else ``$POSTTRAIN_PROFILE``, else colab on CUDA / tiny on CPU."""
    chosen = name or os.environ.get(PROFILE_ENV) or ("colab" if torch.cuda.is_available() else "tiny")
    chosen = chosen.strip().lower()
    if chosen not in PROFILES:
        raise ProfileError(
            f"unknown profile {chosen!r}; choose one of {sorted(PROFILES)} "
            f"(set {PROFILE_ENV}=tiny to run on a CPU with the shipped tiny models)"
        )
    return PROFILES[chosen]


def default_device() -> torch.device:
    """CUDA when available, else CPU (Apple MPS is skipped: several ops used by the labs lack kernels)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 in hardware: a CUDA GPU of compute capability 8.0 or more (Ampere:
    A100, L4, RTX 30xx and later). ``torch.cuda.is_bf16_supported()`` is also True on a T4 (7.5), where bf16 is
    emulated and several times slower than fp16."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU; on a GPU bfloat16 where it is native (``native_bf16``), else float16 (a T4)."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if native_bf16(device) else torch.float16


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype of training on ``device`` over float32 master weights: None on CPU (plain float32),
    bfloat16 on GPUs with native bf16, float16 below (which needs loss scaling: ``train`` adds a GradScaler)."""
    return None if device.type != "cuda" else default_dtype(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so that a lab run is repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def run_environment() -> dict[str, str | int]:
    """What a measured number depends on besides the seed: library versions, the CPU kernel path torch dispatches
    to (``torch.backends.cpu.get_cpu_capability()``, which ``ATEN_CPU_CAPABILITY`` can lower), the thread count
    and the device. Results and bench JSON carry it, so a number can be traced to where it was measured."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": installed("transformers"),
        "peft": installed("peft"),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count() or 1,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
