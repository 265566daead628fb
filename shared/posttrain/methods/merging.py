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
import json
import shutil
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import yaml
from safetensors import safe_open

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


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Which entries TIES's *trim* keeps: those whose magnitude is at least the k-th largest, k = ``int(density ·
    numel)`` (entries tied with the k-th are all kept, as with the threshold of the paper's code)."""
    keep = int(density * delta.numel())
    if keep >= delta.numel():
        return torch.ones_like(delta, dtype=torch.bool)
    if keep == 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    threshold = _kth_largest(delta.abs(), keep)
    return (delta >= threshold) | (delta <= -threshold)  # |δ| ≥ t without another float copy of δ


def _kth_largest(values: torch.Tensor, k: int) -> float:
    """The k-th largest entry of ``values`` (which it may reorder). On the CPU numpy's in-place partition needs no
    extra memory, where ``kthvalue`` needs three copies: what keeps a streaming merge of a large embedding small."""
    flat = values.flatten()
    if flat.device.type == "cpu" and flat.dtype == torch.float32:
        array = flat.numpy()
        array.partition(flat.numel() - k)
        return float(array[flat.numel() - k])
    return float(flat.kthvalue(flat.numel() - k + 1).values)


def magnitude_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES's *trim* step: keep the top ``density`` fraction of entries by magnitude, zero the rest (Yadav et al.
    2023, arXiv:2306.01708, §3, step 1; ``magnitude_mask``)."""
    return delta if density >= 1.0 else delta * magnitude_mask(delta, density)


def dare_mask(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Which entries DARE keeps: each independently with probability ``density`` = 1 − p."""
    return torch.rand(delta.shape, generator=generator, device=generator.device).to(delta.device) < density


def dare_drop(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: drop each entry with probability p = 1 − ``density`` and rescale the kept ones by 1 / (1 − p), so
    that the expected task vector is unchanged (Yu et al. 2023, arXiv:2311.03099, eq. 2)."""
    return delta if density >= 1.0 else delta * dare_mask(delta, density, generator) / density


def elect_sign(deltas: torch.Tensor) -> torch.Tensor:
    """TIES's *elect* step: per entry, the sign of the total mass Σ_i τ_i over the stacked task vectors
    ``deltas`` (n, ...) → (...), +1 where the sum is 0 (Yadav et al. 2023, §3, step 2, γ = sgn(Σ_t τ̂_t))."""
    return torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)


def agreement_mask(deltas: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Which entries of the stacked task vectors (n, ...) agree with the elected ``sign`` (a zero never does)."""
    return deltas.sign() == sign


def disjoint_mean(deltas: torch.Tensor, sign: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """TIES's *disjoint merge*: per entry, the weighted mean over the task vectors whose entry agrees with the elected
    ``sign``, 0 where none does (Yadav et al. 2023, §3, step 3: τ_m = Σ_{t∈A} τ̂_t / |A| with all weights 1).
    ``deltas`` (n, ...) are already weighted (w_i τ̂_i); ``weights`` (n, 1, ..., 1): Σ_{t∈A} w_t τ̂_t / Σ_{t∈A} w_t."""
    mask = agreement_mask(deltas, sign)
    divisor = (weights * mask).sum(dim=0)
    divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return (deltas * mask).sum(dim=0) / divisor


@dataclass(frozen=True)
class Steps:
    """The pipeline's steps that a lab's students write (``magnitude_trim``, ``dare_drop``, ``elect_sign``,
    ``disjoint_mean``): ``merge_tensor`` calls these, so a merge can run on their versions."""

    trim: Callable[[torch.Tensor, float], torch.Tensor] = magnitude_trim
    drop: Callable[[torch.Tensor, float, torch.Generator], torch.Tensor] = dare_drop
    elect: Callable[[torch.Tensor], torch.Tensor] = elect_sign
    disjoint_mean: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = disjoint_mean


PAPER_STEPS = Steps()


def merge_tensor(
    base: torch.Tensor,
    finetuned: Sequence[torch.Tensor],
    merge: Merge,
    seed: int | None = None,
    out: torch.Tensor | None = None,
    steps: Steps = PAPER_STEPS,
) -> torch.Tensor:
    """One tensor through the pipeline of the module docstring: θ_base + λ · combine(consensus(w_i · sparsify(τ_i))),
    returned in ``base``'s dtype. ``seed`` seeds DARE's masks (default ``merge.seed``). The result goes to ``out``
    when given, which may be ``base`` itself (overwritten block by block after each block is read); otherwise no
    input is modified. ``steps`` are the sparsification and consensus functions (``Steps``).

    Memory: the task vectors are built in one (n, ...) float32 buffer, each ``finetuned[i]`` read once (a lazy
    sequence can load it there), and the consensus and mean run over blocks of rows: about four copies of the
    tensor at the peak for two models.
    """
    settings = merge.settings
    weights, densities = merge.for_models(len(finetuned))
    deltas = torch.empty((len(finetuned), *base.shape), dtype=torch.float32, device=base.device)
    for i, density in enumerate(densities):
        torch.sub(finetuned[i].float(), base.float(), out=deltas[i])
        if settings.sparsify == "magnitude" and density < 1.0:
            deltas[i] = steps.trim(deltas[i], density)
        elif settings.sparsify == "random" and density < 1.0:
            generator = torch.Generator(device=deltas.device).manual_seed(_mix(merge.seed if seed is None else seed, i))
            deltas[i] = steps.drop(deltas[i], density, generator)
    w = torch.tensor(weights, dtype=torch.float32, device=deltas.device).view(-1, *([1] * base.dim()))
    deltas.mul_(w)
    total = sum(weights)  # the linear mean's divisor; a zero sum (e.g. τ_B − τ_A) is left undivided, as mergekit
    divisor = total if settings.normalize and abs(total) >= 1e-8 else 1.0
    merged = torch.empty_like(base) if out is None else out
    for rows in _row_blocks(base):
        block = deltas[:, rows]
        if settings.consensus == "ties":
            sign = steps.elect(block)
            combined = (
                steps.disjoint_mean(block, sign, w)
                if settings.normalize
                else (block * agreement_mask(block, sign)).sum(dim=0)
            )
        else:
            combined = block.sum(dim=0) / divisor
        merged[rows] = (base[rows].float() + merge.scale * combined).to(base.dtype)
    return merged


def _row_blocks(tensor: torch.Tensor, entries: int = 2**21) -> list[slice | type(Ellipsis)]:
    """Slices of ``tensor``'s first dimension of about ``entries`` entries each (``...``, all of it, for a 0-d one)."""
    if tensor.dim() == 0:
        return [...]
    rows = max(1, entries // max(1, tensor[0].numel()))
    return [slice(start, start + rows) for start in range(0, tensor.shape[0], rows)]


def _mix(*parts: int | str) -> int:
    """A stable 63-bit seed from ``parts`` (the same in every process, unlike ``hash``)."""
    return zlib.crc32(":".join(map(str, parts)).encode()) * 0x9E3779B1 % (2**63)


def merge_state_dicts(
    base: Mapping[str, torch.Tensor],
    finetuned: Sequence[Mapping[str, torch.Tensor]],
    merge: Merge,
    steps: Steps = PAPER_STEPS,
) -> dict[str, torch.Tensor]:
    """Merge in memory: ``merge_tensor`` on every tensor of ``base`` (DARE seeded per tensor name)."""
    for i, state in enumerate(finetuned):
        _check_compatible(base, state, f"fine-tuned model {i}")
    return {
        name: merge_tensor(
            tensor, [state[name] for state in finetuned], merge, seed=_mix(merge.seed, name), steps=steps
        )
        for name, tensor in base.items()
    }


def add_task_vector(
    state: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor], scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """Weights moved along a task vector: θ + λ τ per tensor, in ``state``'s dtypes (Ilharco et al. 2023, eq. 1;
    negation is λ < 0)."""
    _check_compatible(state, vector, "the task vector")
    return {name: (tensor.float() + scale * vector[name]).to(tensor.dtype) for name, tensor in state.items()}


def chat_vector(
    cpt: Mapping[str, torch.Tensor],
    chat: Mapping[str, torch.Tensor],
    base: Mapping[str, torch.Tensor],
    scale: float = 1.0,
    vector: Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], dict[str, torch.Tensor]] = task_vector,
) -> dict[str, torch.Tensor]:
    """The chat vector (Huang et al. 2024, arXiv:2310.04799, eq. 1): θ_cpt + λ (θ_chat − θ_base), a base model
    continually pre-trained on new data given its chat model's instruction following without chat training.
    ``vector`` computes θ_chat − θ_base (a lab passes its students' ``task_vector``)."""
    return add_task_vector(cpt, vector(chat, base), scale)


# --------------------------------------------------------------------------- checkpoints on disk, streamed
WEIGHTS_INDEX = "model.safetensors.index.json"
_TORCH_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
WEIGHTS_FILE = "model.safetensors"


class Checkpoint:
    """The tensors of an HF-format folder (``model.safetensors`` or a sharded index), read one at a time.

    Each read opens its shard and closes it again, so that no file stays memory-mapped: the pages a mapping has
    read count as the process's resident memory until it is unmapped."""

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
        self.shapes: dict[str, torch.Size] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        for shard in sorted(set(weight_map.values())):
            with safe_open(self.folder / shard, framework="pt") as f:
                for name in f.keys():
                    piece = f.get_slice(name)
                    self.shapes[name] = torch.Size(piece.get_shape())
                    self.dtypes[name] = _TORCH_DTYPES[piece.get_dtype()]

    def names(self) -> list[str]:
        return list(self.weight_map)

    def tensor(self, name: str) -> torch.Tensor:
        with safe_open(self.folder / self.weight_map[name], framework="pt") as f:
            return f.get_tensor(name)


class _Reads(Sequence[torch.Tensor]):
    """The tensor ``name`` of each checkpoint, read from disk when indexed (``merge_tensor`` reads each once)."""

    def __init__(self, checkpoints: Sequence[Checkpoint], name: str):
        self.checkpoints, self.name = checkpoints, name

    def __len__(self) -> int:
        return len(self.checkpoints)

    def __getitem__(self, i):
        return self.checkpoints[i].tensor(self.name)


def merge_checkpoints(
    base: Path,
    finetuned: Sequence[Path],
    merge: Merge,
    out: Path,
    dtype: torch.dtype | None = None,
    config_source: Path | None = None,
    shard_bytes: int = 2**30,
) -> Path:
    """Merge HF-format checkpoints tensor by tensor, streaming: each step reads one tensor of the base and then one
    of each fine-tuned model, merges them (``merge_tensor``, seeded per tensor name as in ``merge_state_dicts``, so
    both give the same tensors) and appends the result to its output shard on disk.

    ``out`` gets shards of at most ``shard_bytes`` (one ``model.safetensors`` when it fits), their index, and the
    config and tokenizer files of ``config_source`` (default ``base``). ``dtype`` is the output dtype (default:
    each tensor's dtype in ``base``). Returns ``out``.
    """
    reference, inputs = Checkpoint(base), [Checkpoint(folder) for folder in finetuned]
    for folder, checkpoint in zip(finetuned, inputs, strict=True):
        missing = sorted(set(reference.names()) - set(checkpoint.names()))
        if missing:
            raise ValueError(f"{folder} lacks tensors of the base {base}: {missing[:5]}")
        for name in reference.names():
            _check_shapes(name, reference.shapes[name], checkpoint.shapes[name], str(folder))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dtypes = {name: dtype or reference.dtypes[name] for name in reference.names()}
    shards = _plan_shards(reference.shapes, dtypes, shard_bytes)
    for shard, names in shards.items():
        with SafetensorsWriter(out / shard, {n: (reference.shapes[n], dtypes[n]) for n in names}) as writer:
            for name in names:
                # The base's tensor is read for this merge only, so it can hold the result (safetensors maps the
                # file copy-on-write, so the file is not touched); it is let go before the next tensor is read.
                merged = reference.tensor(name)
                merge_tensor(merged, _Reads(inputs, name), merge, seed=_mix(merge.seed, name), out=merged)
                writer.write(name, merged.to(dtypes[name]))
                del merged
    if len(shards) == 1:
        (out / next(iter(shards))).rename(out / WEIGHTS_FILE)
    else:
        weight_map = {name: shard for shard, names in shards.items() for name in names}
        total = sum(reference.shapes[n].numel() for n in weight_map)
        (out / WEIGHTS_INDEX).write_text(
            json.dumps({"metadata": {"total_parameters": total}, "weight_map": weight_map})
        )
    _copy_configs(Path(config_source or base), out)
    return out


def _plan_shards(shapes: dict[str, torch.Size], dtypes: dict[str, torch.dtype], shard_bytes: int) -> dict[str, list]:
    """Tensor names grouped into shards of at most ``shard_bytes`` (a larger tensor gets a shard of its own), in
    order, as ``{"model-00001-of-0000N.safetensors": [names]}``."""
    groups, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = shape.numel() * dtypes[name].itemsize
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return {f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors": names for i, names in enumerate(groups)}


SAFETENSORS_DTYPES = {dtype: code for code, dtype in _TORCH_DTYPES.items() if dtype.is_floating_point}


class SafetensorsWriter:
    """Writes a safetensors file one tensor at a time: the header (names, dtypes, shapes, offsets) is known in
    advance, so no tensor waits in memory for the others (the ``safetensors`` library writes whole dicts only).
    The tensors must come in the header's order; closing checks that all came."""

    def __init__(self, path: Path, layout: dict[str, tuple[torch.Size, torch.dtype]]):
        header, offset = {}, 0
        for name, (shape, dtype) in layout.items():
            if dtype not in SAFETENSORS_DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {dtype}; a merge writes {list(SAFETENSORS_DTYPES)}")
            nbytes = shape.numel() * dtype.itemsize
            header[name] = {
                "dtype": SAFETENSORS_DTYPES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        encoded = json.dumps({"__metadata__": {"format": "pt"}, **header}, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        self.order = list(layout)
        self.layout = layout
        self.file = open(path, "wb")
        self.file.write(len(encoded).to_bytes(8, "little") + encoded)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected = self.order.pop(0) if self.order else None
        if name != expected or (tensor.shape, tensor.dtype) != self.layout[name]:
            raise ValueError(
                f"wrote {name!r} {tuple(tensor.shape)} {tensor.dtype}; the header expects {expected!r} next"
            )
        self.file.write(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)  # no copy

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()
        if exc[0] is None and self.order:
            raise ValueError(f"the file was closed before its tensors {self.order[:5]} were written")


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
    from ..core.models import resolve_model  # here: the core's model loading costs 130 MB of imports a merge avoids

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
