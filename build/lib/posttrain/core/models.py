"""Loading a causal language model and its tokenizer: one code path for every profile.

``load_model`` sends tiny-world names, local folders and Hugging Face hub ids alike through
``AutoModelForCausalLM`` / ``AutoTokenizer``; only where the files come from differs:

- ``tiny-base``, ``tiny-chat``, ``tiny-base-cpt``: the folders ``SHIPPED_DIR/<name>``;
- an existing path: that folder (written by ``save_pretrained``);
- a hub id, ``name`` or ``org/name`` (e.g. ``Qwen/Qwen2.5-0.5B-Instruct``): the hub, or its local cache;
- anything else (absolute, ``./``, ``~``, a backslash, several ``/``): a local path that does not exist.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .profiles import PROFILE_ENV, default_device, default_dtype

TINY_MODELS = ("tiny-base", "tiny-chat", "tiny-base-cpt")
# Where the tiny world's weights are stored: a data folder of the package, written by `python -m posttrain.world
# build` (posttrain.world.build), which imports this path; the machinery imports nothing of the world.
SHIPPED_DIR = Path(__file__).parent.parent / "world" / "checkpoints"
# The form of a hub repo id; a string of this form that is not an existing path is fetched from the hub.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class ModelLoadError(RuntimeError):
    """A hub model could not be fetched (most often: no network access to the Hugging Face hub)."""


def resolve_model(name_or_path: str | Path) -> Path | str:
    """Where ``name_or_path`` is loaded from: a local folder (a ``Path``) or a hub repo id (a ``str``).

    Raises ``FileNotFoundError`` for a tiny-world model that has not been built and for a path that does not exist.
    """
    name = str(name_or_path)
    if name in TINY_MODELS:
        folder = SHIPPED_DIR / name
        if not folder.is_dir():
            raise FileNotFoundError(
                f"the tiny-world model {name!r} is missing: no folder {folder}. "
                "Build the tiny world's models with `python -m posttrain.world build`."
            )
        return folder
    path = Path(name).expanduser()
    if path.exists():
        return path
    if _HUB_ID.fullmatch(name):
        return name
    raise FileNotFoundError(
        f"no model folder at {name!r} (resolved to {path.resolve()}): pass a folder written by "
        f"save_pretrained, a hub id such as 'Qwen/Qwen2.5-0.5B-Instruct', or one of {', '.join(TINY_MODELS)}"
    )


def _hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for the hub cache only (read at call time, so tests can set it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def load_model(
    name_or_path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM in eval mode on ``device`` in ``dtype`` and its tokenizer, ready for batched generation.

    ``device`` defaults to ``default_device()`` and ``dtype`` to ``default_dtype(device)``. The tokenizer pads on
    the left and uses the end-of-sequence token as padding when it has no pad token. A hub id that cannot be
    fetched raises ``ModelLoadError`` (see the module docstring for how names resolve).
    """
    source = resolve_model(name_or_path)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype if dtype is not None else default_dtype(device)
    local_only = isinstance(source, Path) or _hub_offline()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only)
    except OSError as error:  # transformers reports every failed download or cache miss as an OSError
        if isinstance(source, Path):
            raise
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelLoadError(
            f"could not fetch the model {source!r} from the Hugging Face hub ({reason}); no local folder of that "
            "name exists either. The colab profile downloads its models and needs network access to the Hugging "
            f"Face hub (huggingface.co). Without it, use the shipped tiny models: set {PROFILE_ENV}=tiny "
            f"(`export {PROFILE_ENV}=tiny`, or `os.environ['{PROFILE_ENV}'] = 'tiny'` before resolving the profile)."
        ) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.to(device).eval(), tokenizer


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
