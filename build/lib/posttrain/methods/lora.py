"""LoRA: low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685).

A pretrained weight W0 (out × in) stays frozen; training learns only a low-rank update ΔW = B A, with
A (r × in), B (out × r) and r ≪ min(in, out). The adapted layer computes (paper eq. 3, scaled as in sec. 4.1)

    h = W0 x + (alpha / r) · B A x

A starts Kaiming-uniform and B at zero, so ΔW = 0: the adapted model starts exactly as the base model.
After training, W0 + (alpha / r) · B A can be merged into one weight, so inference costs nothing extra.

The layout is Hugging Face PEFT's (``peft/tuners/lora/layer.py``), and the tests check the two agree: the layer
keeps the frozen ``base_layer`` and two bias-free ``nn.Linear`` called ``lora_A`` and ``lora_B``, modules are
targeted by name suffix, and ``save_peft_adapter`` / ``load_peft_adapter`` read and write PEFT's adapter folders.
GPT-2's ``Conv1D`` stores its weight transposed (in × out); PEFT calls this ``fan_in_fan_out``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

# A PeftModel wraps the model as ``base_model.model``, so PEFT names an adapter's tensors with this prefix.
PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# PEFT LoRA options this module does not implement; an adapter that sets one of them cannot be loaded faithfully.
UNSUPPORTED_PEFT_OPTIONS = (
    "use_dora",
    "use_rslora",
    "lora_bias",
    "rank_pattern",
    "alpha_pattern",
    "modules_to_save",
    "layers_to_transform",
    "exclude_modules",
    "target_parameters",
    "layer_replication",
    "trainable_token_indices",
)


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: h = W0 x + (alpha / r) · B A dropout(x)."""

    def __init__(self, base_layer: nn.Linear | Conv1D, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"the LoRA rank r must be a positive integer, got {r}")
        self.base_layer = base_layer.requires_grad_(False)
        # nn.Linear stores W0 as (out, in) and computes x W0ᵀ; GPT-2's Conv1D stores it as (in, out) and computes x W0.
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        weight_shape = tuple(base_layer.weight.shape)
        in_features, out_features = weight_shape if self.fan_in_fan_out else weight_shape[::-1]
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r  # sec. 4.1: keeps the update's size stable when r changes, so lr need not be retuned
        self.dropout = nn.Dropout(dropout)
        self.lora_A = nn.Linear(in_features, r, bias=False)  # A: (r, in)
        self.lora_B = nn.Linear(r, out_features, bias=False)  # B: (out, r)
        self.reset_parameters()
        # Adapters train in at least float32 (PEFT's autocast_adapter_dtype): in bf16, small updates to B round away.
        self.lora_A.to(base_layer.weight.device, torch.promote_types(base_layer.weight.dtype, torch.float32))
        self.lora_B.to(self.lora_A.weight)
        self.merged = False

    def reset_parameters(self) -> None:
        """Initialise A ~ U(±1/sqrt(in)) (nn.Linear's Kaiming-uniform, as loralib and PEFT) and B = 0, so B A = 0."""
        # Building lora_A and lora_B already drew their default init; drawing A again follows PEFT's order of
        # random draws, so the same seed gives the same A as PEFT's.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """h = W0 x + (alpha / r) · B A dropout(x); x: (..., in) → h: (..., out). Once merged, W0 holds the update."""
        result = self.base_layer(x)
        if self.merged:
            return result
        update = self.lora_B(self.lora_A(self.dropout(x.to(self.lora_A.weight.dtype))))  # (..., r) → (..., out)
        return (result + update * self.scaling).to(result.dtype)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (alpha / r) · B A in the base weight's layout: (out, in), or (in, out) for a Conv1D (eq. 3)."""
        delta = self.scaling * (self.lora_B.weight @ self.lora_A.weight)
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        """W0 ← W0 + ΔW (sec. 4.1, "no additional inference latency"); forward then skips the low-rank path."""
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged")
        self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 ← W0 − ΔW: undoes ``merge`` (up to floating-point rounding), e.g. to keep training or swap adapters."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged")
        self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        """The hyper-parameters shown by ``print(model)``."""
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def find_targets(model: nn.Module, target_modules: list[str]) -> list[str]:
    """Names of the layers LoRA wraps: each ``nn.Linear`` or GPT-2 ``Conv1D`` whose name ends with a target.

    As in PEFT, a module is targeted when its name equals ``<target>`` or ends with ``.<target>``: ``q_proj`` matches
    ``model.layers.0.self_attn.q_proj``, and GPT-2's ``c_proj`` matches both ``attn.c_proj`` and ``mlp.c_proj``.
    Raises ``ValueError``, listing the model's linear layer names, when no target matches.
    """
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear | Conv1D)]
    targets = [name for name in linear if any(name == t or name.endswith(f".{t}") for t in target_modules)]
    if not targets:
        suffixes = sorted({name.rpartition(".")[2] for name in linear})
        raise ValueError(
            f"no linear module matches target_modules={target_modules}; this model's linear modules are named "
            f"...{', ...'.join(suffixes)}"
        )
    return targets


def inject_lora(
    model: nn.Module,
    target_modules: list[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
    seed: int | None = None,
) -> list[str]:
    """Wrap each layer ``find_targets`` names in a ``LoRALinear`` (in place) and freeze every other parameter.

    With ``seed``, the A matrices are those PEFT's ``get_peft_model`` draws after ``torch.manual_seed(seed)``, and
    the global random state is left as it was. Returns the wrapped layers' names.
    """
    targets = find_targets(model, target_modules)
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.default_generator.manual_seed(seed)  # LoRA weights are drawn on the CPU, then moved
        for name in targets:
            _set_submodule(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout))
    return targets


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every ``LoRALinear`` (W0 ← W0 + (alpha / r) · B A) and put its plain, still frozen, layer back."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            if not module.merged:
                module.merge()
            _set_submodule(model, name, module.base_layer)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights by name: ``<module>.lora_A.weight`` (r, in) and ``<module>.lora_B.weight`` (out, r).

    Like ``state_dict``, the tensors are detached but share storage with the model: clone them to keep a snapshot.
    """
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            state[f"{name}.lora_A.weight"] = module.lora_A.weight.detach()
            state[f"{name}.lora_B.weight"] = module.lora_B.weight.detach()
    return state


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared tensors counted once; LoRA trains a small fraction (sec. 4.2)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def save_peft_adapter(
    model: nn.Module,
    path: str | Path,
    target_modules: list[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
    base_model_name_or_path: str | None = None,
) -> None:
    """Write the LoRA weights of ``model`` as a PEFT adapter folder, loadable by ``PeftModel.from_pretrained``.

    The folder holds ``adapter_model.safetensors`` (tensors named ``base_model.model.<module>.lora_A.weight`` /
    ``.lora_B.weight``, as ``PeftModel.save_pretrained`` names them) and ``adapter_config.json``.
    """
    layers = [module for module in model.modules() if isinstance(module, LoRALinear)]
    found = {(layer.r, layer.alpha) for layer in layers}
    if found != {(r, alpha)}:
        raise ValueError(f"the config says (r, alpha) = ({r}, {alpha}), but the model's LoRA layers have {found}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {PEFT_PREFIX + name: tensor.contiguous() for name, tensor in lora_state_dict(model).items()}
    save_file(tensors, path / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": list(target_modules),
        "fan_in_fan_out": any(layer.fan_in_fan_out for layer in layers),
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
    }
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def load_peft_adapter(model: nn.Module, path: str | Path) -> list[str]:
    """Wrap ``model``'s layers as the PEFT adapter folder at ``path`` says and load its LoRA weights (in place).

    Reads ``adapter_config.json`` (r, lora_alpha, lora_dropout, target_modules) and ``adapter_model.safetensors``
    as written by ``PeftModel.save_pretrained`` or ``save_peft_adapter``. Returns the wrapped modules' names.
    """
    path = Path(path)
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path} holds a {config.get('peft_type')} adapter, not a LoRA one")
    unsupported = {option: config[option] for option in UNSUPPORTED_PEFT_OPTIONS if config.get(option)}
    if config.get("bias", "none") != "none":
        unsupported["bias"] = config["bias"]
    if isinstance(config["target_modules"], str):  # PEFT reads a string as a regular expression
        unsupported["target_modules"] = config["target_modules"]
    if unsupported:
        raise ValueError(
            f"the adapter at {path} uses PEFT options that posttrain.methods.lora does not implement: {unsupported}"
        )
    state = {key.removeprefix(PEFT_PREFIX): tensor for key, tensor in load_file(path / ADAPTER_WEIGHTS).items()}
    targets = find_targets(model, config["target_modules"])
    expected = {f"{name}.{matrix}.weight" for name in targets for matrix in ("lora_A", "lora_B")}
    if state.keys() != expected:
        raise ValueError(
            f"the adapter at {path} does not fit this model: missing {sorted(expected - state.keys())}, "
            f"unexpected {sorted(state.keys() - expected)}"
        )
    inject_lora(model, config["target_modules"], config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0))
    model.load_state_dict(state, strict=False)
    return targets
