"""Task vectors and model merging: task arithmetic, TIES, DARE and the chat vector as settings of one merge.

A fine-tune is a point in weight space, and its difference from the start is a *task vector*
τ = θ_ft − θ_pre (Ilharco et al. 2023, "Editing Models with Task Arithmetic", arXiv:2212.04089). Every method
here is one pipeline, applied tensor by tensor (the shape of mergekit's ``generalized_task_arithmetic``):

1. task vectors   τ_i = θ_i − θ_base;
2. sparsify       ``none`` | ``magnitude`` (TIES's trim: keep the top-k |τ|) | ``random`` (DARE: drop with
                  probability p, rescale the rest by 1 / (1 − p));
3. weights        w_i τ_i (a negative weight negates a task);
4. consensus      ``none`` | ``ties`` (elect the sign of Σ_i w_i τ_i per entry, keep the entries that agree);
5. combine        Σ_i w_i τ_i, or with ``normalize`` the (disjoint) mean: divided by Σ_i w_i over the kept entries;
6. θ = θ_base + λ · combined.

``METHODS`` names the settings: ``task_arithmetic`` (addition θ_pre + λ Σ τ_i, negation θ_pre − λ τ, analogy
τ_C + (τ_B − τ_A)), ``linear`` (the weighted average of the models), ``ties`` (Yadav et al. 2023,
arXiv:2306.01708), ``dare_linear`` and ``dare_ties`` (Yu et al. 2023, arXiv:2311.03099). The chat vector
(Huang et al. 2024, arXiv:2310.04799) is task arithmetic with base tiny-base: θ_cpt + λ (θ_chat − θ_base).

``merge_state_dicts`` merges tensors in memory (the labs' tiny models); ``merge_checkpoints`` streams over the
tensors of safetensors checkpoints, holding one tensor per input at a time and writing the result in shards;
``python -m posttrain.methods.merging CONFIG.yaml --out DIR`` reads a mergekit-style YAML file.

Where we differ from mergekit (on purpose): DARE's ``rescale`` is the paper's 1 / (1 − p) (mergekit rescales each
tensor to keep its L1 norm); DARE's drop mask comes from a generator seeded per tensor and model (mergekit draws
from torch's global generator), so a merge is reproducible in any tensor order; arithmetic runs in float32 and is
cast to the output dtype at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.models import resolve_model

Sparsify = Literal["none", "magnitude", "random"]
Consensus = Literal["none", "ties"]


@dataclass(frozen=True)
class Method:
    """The settings that make a named merge method out of the one pipeline (module docstring)."""

    sparsify: Sparsify = "none"
    consensus: Consensus = "none"
    normalize: bool = False


METHODS: dict[str, Method] = {
    "task_arithmetic": Method(),
    "linear": Method(normalize=True),
    "ties": Method(sparsify="magnitude", consensus="ties", normalize=True),
    "dare_linear": Method(sparsify="random"),
    "dare_ties": Method(sparsify="random", consensus="ties"),
}


@dataclass(frozen=True)
class Merge:
    """One merge: a method of ``METHODS`` and its parameters.

    ``weights`` and ``densities`` hold one entry per fine-tuned model (empty: 1.0 each); a density is the
    fraction of a task vector's entries kept (TIES's k, DARE's 1 − p). ``scale`` is λ; ``normalize`` overrides
    the method's default; ``seed`` fixes DARE's drop masks.
    """

    method: str = "task_arithmetic"
    weights: tuple[float, ...] = ()
    densities: tuple[float, ...] = ()
    scale: float = 1.0
    normalize: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown merge method {self.method!r}; choose one of: {', '.join(METHODS)}")
        for density in self.densities:
            if not 0.0 < density <= 1.0:
                raise ValueError(f"a density is the fraction of entries kept and must lie in (0, 1]; got {density}")

    @property
    def settings(self) -> Method:
        """The method's pipeline settings, with ``normalize`` overridden when given."""
        method = METHODS[self.method]
        return method if self.normalize is None else replace(method, normalize=self.normalize)

    def for_models(self, n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The weights and densities of ``n`` fine-tuned models (1.0 where none were given)."""
        weights = self.weights or (1.0,) * n
        densities = self.densities or (1.0,) * n
        if len(weights) != n or len(densities) != n:
            raise ValueError(
                f"{n} fine-tuned models but {len(weights)} weights and {len(densities)} densities: give one weight "
                "and one density per model, or none (1.0 each)"
            )
        return weights, densities


# --------------------------------------------------------------------------- the pipeline's steps
def task_vector(finetuned: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """τ = θ_ft − θ_pre for every tensor (Ilharco et al. 2023, arXiv:2212.04089, §2), computed in float32.

    The two state dicts must hold the same tensor names with the same shapes. Models with different vocabularies
    (embedding or output layers of different sizes) are refused: their rows do not name the same tokens.
    """
    _check_compatible(base, finetuned, "the fine-tuned model")
    return {name: finetuned[name].float() - base[name].float() for name in base}


def _check_compatible(base: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], label: str) -> None:
    missing, extra = sorted(set(base) - set(other)), sorted(set(other) - set(base))
    if missing or extra:
        raise ValueError(
            f"{label} does not have the base's tensors (missing: {missing[:5]}, extra: {extra[:5]}); task vectors "
            "need models of one architecture"
        )
    for name, tensor in base.items():
        _check_shapes(name, tensor.shape, other[name].shape, label)


def _check_shapes(name: str, base_shape: torch.Size, shape: torch.Size, label: str) -> None:
    if base_shape == shape:
        return
    hint = (
        " The vocabularies differ: merge models that share one tokenizer, or resize both models' token embeddings "
        "to a common vocabulary first (model.resize_token_embeddings) so that row i names the same token in both."
        if len(shape) == len(base_shape) and shape[1:] == base_shape[1:]
        else ""
    )
    raise ValueError(f"tensor {name!r} has shape {tuple(shape)} in {label} but {tuple(base_shape)} in the base.{hint}")


def magnitude_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES's *trim* step: keep the ``int(density · numel)`` entries of largest magnitude, zero the rest
    (Yadav et al. 2023, arXiv:2306.01708, §3, step 1)."""
    if density >= 1.0:
        return delta
    keep = int(density * delta.numel())
    flat = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    top = delta.abs().flatten().topk(keep).indices
    flat[top] = delta.flatten()[top]
    return flat.view_as(delta)


def dare_drop(delta: torch.Tensor, density: float, generator: torch.Generator, rescale: bool = True) -> torch.Tensor:
    """DARE: drop each entry with probability p = 1 − ``density`` and rescale the kept ones by 1 / (1 − p), so
    that the expected task vector is unchanged (Yu et al. 2023, arXiv:2311.03099, eq. 2)."""
    if density >= 1.0:
        return delta
    keep = torch.rand(delta.shape, generator=generator, device=generator.device) < density
    kept = delta * keep.to(delta.device)
    return kept / density if rescale else kept


def elect_sign(deltas: torch.Tensor) -> torch.Tensor:
    """TIES's *elect* step: per entry, the sign of the total mass Σ_i τ_i over the stacked task vectors
    ``deltas`` (n, ...) → (...), +1 where the sum is 0 (Yadav et al. 2023, §3, step 2, γ = sgn(Σ_t τ̂_t))."""
    return torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)


def agreement_mask(deltas: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Which entries of the stacked task vectors (n, ...) agree with the elected ``sign`` (a zero never does)."""
    return deltas.sign() == sign


def disjoint_mean(deltas: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """TIES's *disjoint merge*: per entry, the (weighted) mean over the task vectors kept by ``mask``, 0 where none is
    kept (Yadav et al. 2023, §3, step 3: τ_m = Σ_{t∈A} τ̂_t / |A|). ``deltas`` are already weighted, (n, ...);
    ``weights`` (n, 1, ..., 1)."""
    divisor = (weights * mask).sum(dim=0)
    divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return (deltas * mask).sum(dim=0) / divisor


def merge_tensor(
    base: torch.Tensor, finetuned: Sequence[torch.Tensor], merge: Merge, seed: int | None = None
) -> torch.Tensor:
    """One tensor through the pipeline of the module docstring: θ_base + λ · combine(consensus(w_i · sparsify(τ_i))),
    returned in ``base``'s dtype. ``seed`` seeds DARE's masks (default ``merge.seed``)."""
    settings = merge.settings
    weights, densities = merge.for_models(len(finetuned))
    deltas = []
    for i, (tensor, density) in enumerate(zip(finetuned, densities, strict=True)):
        delta = tensor.float() - base.float()
        if settings.sparsify == "magnitude":
            delta = magnitude_trim(delta, density)
        elif settings.sparsify == "random":
            generator = torch.Generator(device=delta.device).manual_seed(_mix(merge.seed if seed is None else seed, i))
            delta = dare_drop(delta, density, generator)
        deltas.append(delta)
    stacked = torch.stack(deltas)
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device).view(-1, *([1] * base.dim()))
    weighted = stacked * w
    if settings.consensus == "ties":
        mask = agreement_mask(weighted, elect_sign(weighted))
    else:
        mask = torch.ones_like(weighted, dtype=torch.bool)
    combined = disjoint_mean(weighted, mask, w) if settings.normalize else (weighted * mask).sum(dim=0)
    return (base.float() + merge.scale * combined).to(base.dtype)


def _mix(*parts: int | str) -> int:
    """A stable 63-bit seed from ``parts`` (the same in every process, unlike ``hash``)."""
    return zlib.crc32(":".join(map(str, parts)).encode()) * 0x9E3779B1 % (2**63)


def merge_state_dicts(
    base: Mapping[str, torch.Tensor], finetuned: Sequence[Mapping[str, torch.Tensor]], merge: Merge
) -> dict[str, torch.Tensor]:
    """Merge in memory: ``merge_tensor`` on every tensor of ``base`` (DARE seeded per tensor name)."""
    for i, state in enumerate(finetuned):
        _check_compatible(base, state, f"fine-tuned model {i}")
    return {
        name: merge_tensor(tensor, [state[name] for state in finetuned], merge, seed=_mix(merge.seed, name))
        for name, tensor in base.items()
    }


def merge_models(base: torch.nn.Module, finetuned: Sequence[torch.nn.Module], merge: Merge) -> torch.nn.Module:
    """A new model: a copy of ``base`` whose weights are the merge of ``finetuned`` onto ``base``."""
    merged = copy.deepcopy(base)
    states = [model.state_dict() for model in finetuned]
    merged.load_state_dict(merge_state_dicts(base.state_dict(), states, merge))
    return merged


def add_task_vector(model: torch.nn.Module, vector: Mapping[str, torch.Tensor], scale: float = 1.0) -> torch.nn.Module:
    """A copy of ``model`` moved along a task vector: θ + λ τ (Ilharco et al. 2023, eq. 1; the chat vector of
    Huang et al. 2024, arXiv:2310.04799, is θ_cpt + λ (θ_chat − θ_base))."""
    merged = copy.deepcopy(model)
    state = merged.state_dict()
    _check_compatible(state, vector, "the task vector")
    merged.load_state_dict({name: (t.float() + scale * vector[name]).to(t.dtype) for name, t in state.items()})
    return merged


# --------------------------------------------------------------------------- checkpoints on disk, streamed
WEIGHTS_INDEX = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"


class Checkpoint:
    """The tensors of an HF-format folder (``model.safetensors`` or a sharded index), read one at a time from the
    memory-mapped files, never all at once."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index = self.folder / WEIGHTS_INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.folder / WEIGHTS_FILE).is_file():
            with safe_open(self.folder / WEIGHTS_FILE, framework="pt") as f:
                weight_map = dict.fromkeys(f.keys(), WEIGHTS_FILE)
        else:
            raise FileNotFoundError(
                f"{self.folder} holds no {WEIGHTS_FILE} or {WEIGHTS_INDEX}: save the model with "
                "save_pretrained(..., safe_serialization=True)"
            )
        self.weight_map: dict[str, str] = weight_map
        self._files: dict[str, object] = {}

    def names(self) -> list[str]:
        return list(self.weight_map)

    def shape(self, name: str) -> torch.Size:
        return torch.Size(self._file(name).get_slice(name).get_shape())

    def tensor(self, name: str) -> torch.Tensor:
        return self._file(name).get_tensor(name)

    def _file(self, name: str):
        shard = self.weight_map[name]
        if shard not in self._files:
            self._files[shard] = safe_open(self.folder / shard, framework="pt")
        return self._files[shard]


def merge_checkpoints(
    base: Path,
    finetuned: Sequence[Path],
    merge: Merge,
    out: Path,
    dtype: torch.dtype | None = None,
    config_source: Path | None = None,
    shard_bytes: int = 256 * 2**20,
) -> Path:
    """Merge HF-format checkpoints tensor by tensor, streaming: each step reads one tensor of each input from its
    memory-mapped safetensors file, merges it (``merge_tensor``, seeded per tensor name as ``merge_state_dicts``,
    so both give the same tensors) and appends it to an output shard of at most ``shard_bytes``.

    ``out`` gets the shards, their index, and the config and tokenizer files of ``config_source`` (default
    ``base``). ``dtype`` is the output dtype (default: each tensor's dtype in ``base``). Returns ``out``.
    """
    inputs = [Checkpoint(folder) for folder in finetuned]
    reference = Checkpoint(base)
    for i, checkpoint in enumerate(inputs):
        missing = sorted(set(reference.names()) - set(checkpoint.names()))
        if missing:
            raise ValueError(f"{finetuned[i]} lacks tensors of the base {base}: {missing[:5]}")
        for name in reference.names():
            _check_shapes(name, reference.shape(name), checkpoint.shape(name), str(finetuned[i]))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size, weight_map, written = 0, {}, []
    for name in reference.names():
        tensor = merge_tensor(
            reference.tensor(name), [c.tensor(name) for c in inputs], merge, seed=_mix(merge.seed, name)
        )
        tensor = tensor.to(dtype or tensor.dtype).contiguous()
        if size and size + tensor.nbytes > shard_bytes:
            written.append(_write_shard(out, shards[-1], len(written)))
            shards[-1], size = {}, 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    written.append(_write_shard(out, shards[-1], len(written)))
    for shard_name, names in written:
        weight_map |= dict.fromkeys(names, shard_name)
    if len(written) == 1:
        (out / written[0][0]).rename(out / WEIGHTS_FILE)
    else:
        total = sum(reference.shape(n).numel() for n in weight_map)
        (out / WEIGHTS_INDEX).write_text(
            json.dumps({"metadata": {"total_parameters": total}, "weight_map": weight_map})
        )
    _copy_configs(Path(config_source or base), out)
    return out


def _write_shard(out: Path, tensors: dict[str, torch.Tensor], index: int) -> tuple[str, list[str]]:
    name = f"model-{index + 1:05d}.safetensors"
    save_file(tensors, out / name, metadata={"format": "pt"})
    return name, list(tensors)


def _copy_configs(source: Path, out: Path) -> None:
    """Copy every non-weight file of an HF folder (config, generation config, tokenizer, chat template)."""
    for path in source.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors") and path.name != WEIGHTS_INDEX:
            shutil.copy2(path, out / path.name)


# --------------------------------------------------------------------------- mergekit-style YAML
class MergeConfigError(ValueError):
    """A merge configuration file that cannot be run: malformed, or asking for something we do not support."""


UNSUPPORTED_KEYS = ("slices", "modules", "tokenizer", "chat_template")
TOP_LEVEL_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source"}
METHOD_PARAMETERS = {"normalize", "lambda", "rescale", "int8_mask"}
MODEL_PARAMETERS = {"weight", "density"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class MergeConfig:
    """A parsed configuration file: what ``merge_checkpoints`` needs."""

    base: str
    models: list[str]
    merge: Merge
    dtype: torch.dtype | None = None
    config_source: str | None = None


def parse_config(text: str) -> MergeConfig:
    """Read a mergekit-style YAML merge configuration (the subset of ``METHODS``).

    Accepted: ``merge_method``; ``base_model``; ``models`` (each ``model`` with ``parameters`` ``weight`` and
    ``density``, numbers only); ``parameters`` ``lambda`` and ``normalize`` (``int8_mask`` is accepted and has no
    effect: the arithmetic is float32); ``dtype`` / ``out_dtype``; ``tokenizer_source`` (``base`` or one of the
    models). Anything else raises ``MergeConfigError`` naming it. ``linear`` needs no base model: the first model
    serves as the reference, which leaves the weighted average unchanged.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise MergeConfigError(f"the merge configuration is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise MergeConfigError("a merge configuration is a YAML mapping with merge_method, base_model and models")
    for key in UNSUPPORTED_KEYS:
        if key in raw:
            raise MergeConfigError(
                f"{key!r} is not supported by posttrain.merging (only whole-model merges of `models`); use mergekit"
            )
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise MergeConfigError(f"unknown keys {unknown}; a configuration may hold {sorted(TOP_LEVEL_KEYS)}")
    method = raw.get("merge_method")
    if method not in METHODS:
        raise MergeConfigError(
            f"merge_method {method!r} is not supported by posttrain.merging; supported: {', '.join(METHODS)} "
            "(mergekit implements the others)"
        )
    entries = raw.get("models")
    if not isinstance(entries, list) or not entries:
        raise MergeConfigError("`models` must be a non-empty list of entries like {model: PATH, parameters: {...}}")
    base = raw.get("base_model")
    if base is None and method != "linear":
        raise MergeConfigError(f"merge_method {method!r} needs a base_model: task vectors are differences from it")
    models, weights, densities = [], [], []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise MergeConfigError(f"each entry of `models` needs a `model` path or hub id; got {entry!r}")
        if entry["model"] == base:  # mergekit lets the base appear among the models; it adds no task vector
            continue
        params = entry.get("parameters") or {}
        if not isinstance(params, dict) or set(params) - MODEL_PARAMETERS:
            raise MergeConfigError(
                f"model {entry['model']!r}: parameters may be {sorted(MODEL_PARAMETERS)}; got {params!r}"
            )
        for key in params:
            if isinstance(params[key], bool) or not isinstance(params[key], int | float):
                raise MergeConfigError(
                    f"model {entry['model']!r}: {key} must be a number (gradients and filters are not supported)"
                )
        if method != "linear" and "weight" not in params:
            raise MergeConfigError(f"model {entry['model']!r} needs a `weight` for merge_method {method!r}")
        models.append(entry["model"])
        weights.append(float(params.get("weight", 1.0)))
        densities.append(float(params.get("density", 1.0)))
    if base is None:
        base = models[0]
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict) or set(parameters) - METHOD_PARAMETERS:
        raise MergeConfigError(f"`parameters` may be {sorted(METHOD_PARAMETERS)}; got {parameters!r}")
    if parameters.get("rescale") is False and METHODS[method].sparsify == "random":
        raise MergeConfigError("rescale: false is not supported: DARE here always rescales by 1 / density")
    dtype_name = raw.get("out_dtype") or raw.get("dtype")
    if dtype_name is not None and dtype_name not in DTYPES:
        raise MergeConfigError(f"dtype {dtype_name!r} is not one of {', '.join(DTYPES)}")
    source = raw.get("tokenizer_source")
    if source not in (None, "base", *models):
        raise MergeConfigError(f"tokenizer_source {source!r} must be 'base' or one of the models (not 'union')")
    try:
        merge = Merge(
            method,
            tuple(weights),
            tuple(densities),
            scale=float(parameters.get("lambda", 1.0)),
            normalize=parameters.get("normalize"),
        )
    except ValueError as error:
        raise MergeConfigError(str(error)) from error
    return MergeConfig(base, models, merge, DTYPES.get(dtype_name), None if source in (None, "base") else source)


def _local_folder(reference: str, relative_to: Path) -> Path:
    """A model reference as a local folder: a tiny-world name, a path (relative to the config file's folder), or a
    hub id, downloaded (weights and configs only)."""
    candidate = relative_to / reference
    if candidate.is_dir():
        return candidate
    source = resolve_model(reference)
    if isinstance(source, Path):
        return source
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, allow_patterns=["*.safetensors", "*.json", "*.txt", "*.model", "*.jinja"]))


def merge_from_config(config_file: Path, out: Path) -> Path:
    """Run the merge a YAML configuration file describes (``parse_config``) with ``merge_checkpoints``."""
    config_file = Path(config_file)
    config = parse_config(config_file.read_text())
    here = config_file.parent
    return merge_checkpoints(
        _local_folder(config.base, here),
        [_local_folder(m, here) for m in config.models],
        config.merge,
        out,
        dtype=config.dtype,
        config_source=_local_folder(config.config_source, here) if config.config_source else None,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m posttrain.methods.merging CONFIG.yaml --out DIR``: merge as the configuration says."""
    parser = argparse.ArgumentParser(prog="python -m posttrain.methods.merging", description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path, help="a mergekit-style YAML file (task_arithmetic, linear, ties, dare_*)")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write the merged model to")
    args = parser.parse_args(argv)
    try:
        out = merge_from_config(args.config, args.out)
    except (MergeConfigError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"merged model written to {out}")


if __name__ == "__main__":
    main()
