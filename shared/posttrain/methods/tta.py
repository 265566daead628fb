"""Test-time adaptation: the model keeps learning from its test inputs, without their labels (Lab 06).

- **Entropy minimisation** (TENT, Wang et al. 2021, arXiv:2006.10726): minimise the entropy of the predictions on a
  test batch (eq. 1), updating only the affine parameters of the normalisation layers, which normalise with the
  test batch's own statistics (sec. 3.2). ``use_batch_statistics`` alone, without a gradient step, is "BN-adapt".
- **SUTA** (Lin et al. 2022, arXiv:2203.14222): one utterance, a few steps, then reset. Its loss mixes the entropy
  of the non-blank CTC frames at temperature T (eq. 2) and minimum class confusion (Jin et al. 2020,
  arXiv:1912.03699, eqs. 1-5; SUTA eq. 3), on the layer norms and the convolutional feature extractor.
- **Sample filters** (EATA, Niu et al. 2022, arXiv:2204.02610, eqs. 6-8; SAR, Niu et al. 2023, arXiv:2302.12400,
  eq. 2): only samples whose entropy is below 0.4·ln C adapt, weighted by exp(E0 - H) in EATA.
- **Resets**: episodic (before every input), periodic (RDumb, Press et al. 2023, arXiv:2306.05401) and on a
  detected shift (``ShiftDetector``, after Dynamic SUTA's dynamic reset, Lin et al. 2024, arXiv:2406.11064).
- **Pretext TTT** (Sun et al. 2020, arXiv:1909.13231): update the shared encoder on a self-supervised task of the
  test input itself, the prediction of its rotation (``rotation_batch``, ``pretext_ttt``).
- **Nearest-neighbour TTT** for language models (Hardt & Sun 2024, arXiv:2305.18466): retrieve the training texts
  nearest the prompt (``TfidfIndex``), fine-tune on them, answer, restore the exact weights.

Every function takes the model and the data as arguments: the same code adapts our digits CNN, a
``Wav2Vec2ForCTC`` and any causal LM of the course.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..core.data import text_example
from ..core.train import masked_sft_loss

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Shannon entropy H(p) = -Σ_c p_c log p_c of p = softmax(logits / T) over the last dimension, per row
    (TENT eq. 1; SUTA's temperature T, eq. 2)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def entropy_loss(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """TENT's objective: the mean entropy of a batch's predictions (eq. 1). With ``weights`` (one per row, 0 drops a
    row: ``reliable_sample_weights``), the weighted mean over the rows kept; zero when every row is dropped."""
    per_row = entropy(logits)
    if weights is None:
        return per_row.mean()
    return (weights * per_row).sum() / (weights > 0).sum().clamp(min=1)


def reliable_sample_weights(logits: torch.Tensor, margin: float = 0.4, reweight: bool = True) -> torch.Tensor:
    """EATA's sample selection (arXiv:2204.02610, eqs. 6-8; SAR's reliable-entropy filter, arXiv:2302.12400, eq. 2):
    a row adapts only when its entropy H is below E0 = ``margin``·ln C (C classes), and with ``reweight`` it counts
    exp(E0 - H) times (EATA's 1/exp(H - E0), so the most confident rows count most). The weights carry no gradient."""
    with torch.no_grad():
        h = entropy(logits)
        threshold = margin * math.log(logits.shape[-1])
        kept = (h < threshold).float()
        return kept * torch.exp(threshold - h) if reweight else kept


def non_blank_entropy(logits: torch.Tensor, blank: int = 0, temperature: float = 1.0) -> torch.Tensor:
    """SUTA's entropy term (arXiv:2203.14222, eq. 2): the mean entropy at temperature T over the CTC frames whose
    arg-max is not the blank, for logits (batch, frames, vocabulary). Blank frames dominate CTC output and are
    already confident; when every frame is blank, the mean is over all frames, so adaptation can still start."""
    per_frame = entropy(logits, temperature)
    speaking = logits.argmax(-1) != blank
    return per_frame[speaking].mean() if speaking.any() else per_frame.mean()


def minimum_class_confusion(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Minimum class confusion (Jin et al. 2020, arXiv:1912.03699, eqs. 1-5, without the entropy reweighting, as in
    SUTA eq. 3): for each utterance, P = softmax(logits / T) over its frames (frames, C), the class correlation
    C̃ = PᵀP with each row normalised to sum 1, and the loss Σ_{j≠j'} C̃_jj' / C, the share of probability mass that
    two classes share across frames; mean over the batch. Logits (frames, C) are one utterance."""
    probabilities = torch.softmax(logits.float() / temperature, dim=-1)
    if probabilities.dim() == 2:
        probabilities = probabilities[None]
    correlation = probabilities.transpose(1, 2) @ probabilities  # (batch, C, C)
    correlation = correlation / correlation.sum(-1, keepdim=True)
    classes = probabilities.shape[-1]
    off_diagonal = correlation.sum((1, 2)) - correlation.diagonal(dim1=1, dim2=2).sum(-1)
    return (off_diagonal / classes).mean()


def suta_loss(
    logits: torch.Tensor, blank: int = 0, temperature: float = 2.5, entropy_weight: float = 0.3
) -> torch.Tensor:
    """SUTA's objective (arXiv:2203.14222, eq. 4): α·``non_blank_entropy`` + (1 - α)·``minimum_class_confusion``,
    both at temperature T; the paper's defaults α = 0.3 and T = 2.5."""
    return entropy_weight * non_blank_entropy(logits, blank, temperature) + (
        1 - entropy_weight
    ) * minimum_class_confusion(logits, temperature)


def norm_affine_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """TENT's parameters (arXiv:2006.10726, sec. 3.2): the scale and shift of every normalisation layer (batch, layer
    and group norm), by name. Everything else stays fixed."""
    return {
        f"{name}.{kind}" if name else kind: parameter
        for name, module in model.named_modules()
        if isinstance(module, NORM_LAYERS)
        for kind, parameter in module.named_parameters(recurse=False)
    }


def suta_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """SUTA's parameters (arXiv:2203.14222, sec. 3.3, "LN + feat."): every layer norm's scale and shift, and every
    parameter of the convolutional feature extractor and its projection (``Wav2Vec2ForCTC``'s ``feature_extractor``
    and ``feature_projection``), by name."""
    chosen = {
        name: parameter
        for name, parameter in model.named_parameters()
        if {"feature_extractor", "feature_projection"} & set(name.split("."))
    }
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            chosen |= {f"{name}.{kind}": p for kind, p in module.named_parameters(recurse=False)}
    if not chosen:
        raise ValueError(f"{type(model).__name__} has no layer norm and no feature extractor for SUTA to adapt")
    return chosen


def use_batch_statistics(model: nn.Module) -> nn.Module:
    """Make every batch norm of ``model`` normalise with the statistics of the batch it sees, not the running ones
    from training (TENT sec. 3.2; on its own, with no gradient step, "BN-adapt", Schneider et al. 2020,
    arXiv:2006.16971). The running statistics are dropped; the rest of the model keeps its mode. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
    return model


def anchor_penalty(
    parameters: dict[str, torch.Tensor], start: dict[str, torch.Tensor], weights: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """Σ_i ω_i (θ_i − θ⁰_i)² over the named ``parameters`` against their ``start`` values: EATA's anti-forgetting
    regulariser (arXiv:2204.02610, eq. 9), whose ω is the Fisher information of the starting model; ω = 1 without
    ``weights`` (L2-SP, Li et al. 2018, arXiv:1802.01483)."""
    return sum(
        ((1.0 if weights is None else weights[name]) * (p - start[name]) ** 2).sum() for name, p in parameters.items()
    )


def save_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Deep copies of the model's state (weights and buffers) and the optimiser's (Adam's moments and step count):
    the start an episodic adapter goes back to."""
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


def restore_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: tuple[dict, dict]) -> None:
    """Put ``save_state``'s copies back, exactly. The optimiser's is copied again on the way in: ``load_state_dict``
    keeps the tensors it is given, and Adam's in-place updates would otherwise change the saved start."""
    model_state, optimizer_state = state
    model.load_state_dict(model_state)
    optimizer.load_state_dict(copy.deepcopy(optimizer_state))


@dataclass
class Adapter:
    """Adapts ``parameters`` of ``model`` by minimising ``loss(logits)`` on each test input, without its label.

    ``adapt(x)`` takes ``steps`` optimiser steps (Adam at ``lr``) and returns the logits it predicts with: those of
    the last forward pass that computed the loss (TENT's online protocol, arXiv:2006.10726, sec. 3.3) or, with
    ``predict_after``, of a forward pass after the last step (SUTA's). ``reset()`` restores the weights, buffers and
    optimiser to the copy taken when the adapter was made, exactly. ``forward(model, x)`` returns logits (default:
    ``model(x)``, or its ``.logits`` for a transformers model). Only ``parameters`` get gradients. ``anchor`` > 0 adds
    ``anchor`` × ``anchor_penalty`` to the loss: EATA's anti-forgetting regulariser (arXiv:2204.02610, eq. 9) with
    unit weights in place of its Fisher information, i.e. Lab 02's L2-SP pull toward the starting weights.
    ``save`` and ``restore`` take and put back the start (``save_state``, ``restore_state``).
    """

    model: nn.Module
    parameters: dict[str, nn.Parameter]
    loss: Callable[[torch.Tensor], torch.Tensor]
    lr: float = 1e-3
    steps: int = 1
    predict_after: bool = False
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    anchor: float = 0.0
    save: Callable[[nn.Module, torch.optim.Optimizer], object] = save_state
    restore: Callable[[nn.Module, torch.optim.Optimizer, object], None] = restore_state
    optimizer: torch.optim.Optimizer = field(init=False)
    _start: object = field(init=False, repr=False)
    _anchor_point: dict[str, torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.parameters:
            raise ValueError("nothing to adapt: the parameter selection is empty")
        self.model.requires_grad_(False)
        for parameter in self.parameters.values():
            parameter.requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.parameters.values(), lr=self.lr)
        self._start = self.save(self.model, self.optimizer)
        self._anchor_point = {name: p.detach().clone() for name, p in self.parameters.items()}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits for ``x`` (``forward``)."""
        if self.forward is not None:
            return self.forward(self.model, x)
        out = self.model(x)
        return out.logits if hasattr(out, "logits") else out

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """``steps`` steps on ``loss`` of ``x``'s logits; returns the logits predicted with (detached)."""
        for _ in range(self.steps):
            logits = self.logits(x)
            loss = self.loss(logits)
            if self.anchor:
                loss = loss + self.anchor * anchor_penalty(self.parameters, self._anchor_point)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        if self.predict_after or self.steps == 0:
            with torch.no_grad():
                logits = self.logits(x)
        return logits.detach()

    def reset(self) -> None:
        """Restore the model's weights and buffers and the optimiser's state to the start, exactly."""
        self.restore(self.model, self.optimizer, self._start)


def is_shift(seen: torch.Tensor, value: torch.Tensor, threshold: float) -> bool:
    """Whether ``value`` (d,) departs from the rows of ``seen`` (n, d): the z-score of any component against their
    mean and (unbiased) standard deviation exceeds ``threshold`` in either direction."""
    z = (value - seen.mean(0)) / seen.std(0).clamp(min=1e-8)
    return bool((z.abs() > threshold).any())


class ShiftDetector:
    """Flags a distribution shift when a per-input statistic jumps: the z-score of any of its components against the
    values seen since the last shift exceeds ``threshold`` in either direction, once ``warmup`` values are in.

    After Dynamic SUTA's dynamic reset (Lin et al. 2024, arXiv:2406.11064, sec. 3.3), which resets the model when the
    incoming utterances depart from the current domain. What to watch is the caller's choice (``adapt_stream``'s
    ``statistic``): the inputs' own statistics (``input_statistics``) mark a change of corruption, while the
    adaptation loss also moves with the classes of a class-sorted stream, so it misses shifts or flags classes.
    """

    def __init__(
        self,
        threshold: float = 4.0,
        warmup: int = 5,
        trigger: Callable[[torch.Tensor, torch.Tensor, float], bool] = is_shift,
    ) -> None:
        if warmup < 2:
            raise ValueError(f"warmup must be at least 2 values to estimate a spread, got {warmup}")
        self.threshold, self.warmup, self.trigger = threshold, warmup, trigger
        self.values: list[torch.Tensor] = []

    def update(self, value: float | Sequence[float] | torch.Tensor) -> bool:
        """Record ``value`` (a number or a vector of them); True, forgetting the old domain's values, when ``trigger``
        (``is_shift``) says it departs from them."""
        value = torch.as_tensor(value, dtype=torch.float64).flatten()
        if len(self.values) >= self.warmup and self.trigger(torch.stack(self.values), value, self.threshold):
            self.values = [value]
            return True
        self.values.append(value)
        return False


def input_statistics(batch: torch.Tensor) -> torch.Tensor:
    """The mean and standard deviation of a batch's input values: what a corruption (noise, blur, contrast, a
    brightness shift, an SNR) moves first, and what ``ShiftDetector`` watches by default."""
    return torch.stack([batch.float().mean(), batch.float().std()]).detach()


RESETS = ("never", "episodic", "periodic", "on_shift")


def adapt_stream(
    adapter: Adapter,
    batches: Sequence[torch.Tensor],
    reset: str = "never",
    every: int = 10,
    detector: ShiftDetector | None = None,
    statistic: Callable[[torch.Tensor], torch.Tensor] = input_statistics,
) -> list[torch.Tensor]:
    """Adapt on a stream of test batches in order and return each batch's predicted logits.

    ``reset``: ``never`` (continual adaptation, which drifts and can collapse on a long stream), ``episodic``
    (before every batch), ``periodic`` (before every ``every``-th batch, blind to the domains: RDumb,
    arXiv:2306.05401) or ``on_shift`` (before a batch whose ``statistic`` ``detector`` flags, after Dynamic SUTA,
    arXiv:2406.11064).
    """
    if reset not in RESETS:
        raise ValueError(f"unknown reset {reset!r}; choose one of {', '.join(RESETS)}")
    if reset == "on_shift" and detector is None:
        raise ValueError("reset='on_shift' needs a ShiftDetector")
    predictions = []
    for number, batch in enumerate(batches):
        if (
            reset == "episodic"
            or (reset == "periodic" and number > 0 and number % every == 0)
            or (reset == "on_shift" and detector.update(statistic(batch)))
        ):
            adapter.reset()
        predictions.append(adapter.adapt(batch))
    return predictions


def rotation_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sun et al.'s pretext task (arXiv:1909.13231, sec. 2): each image (…, H, W) rotated by 0, 90, 180 and 270
    degrees, with the rotation's index as its label: (4·batch images, labels)."""
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
    labels = torch.arange(4, device=images.device).repeat_interleave(len(images))
    return rotated, labels


def pretext_loss(encoder: nn.Module, pretext_head: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The rotation-prediction cross-entropy of ``pretext_head(encoder(·))`` on ``rotation_batch(images)``: the
    self-supervised loss trained jointly with the main task and minimised again at test time (arXiv:1909.13231,
    eqs. 1-2)."""
    rotated, labels = rotation_batch(images)
    return nn.functional.cross_entropy(pretext_head(encoder(rotated)), labels)


def pretext_ttt(
    encoder: nn.Module, pretext_head: nn.Module, images: torch.Tensor, steps: int = 1, lr: float = 1e-3
) -> None:
    """Test-time training on the pretext task (arXiv:1909.13231, eq. 3): ``steps`` SGD steps on ``pretext_loss``
    of the test ``images``, updating the shared ``encoder`` only (the pretext head and the main head stay fixed);
    the caller predicts with the main head afterwards and resets for the next input (the episodic version)."""
    optimizer = torch.optim.SGD(encoder.parameters(), lr=lr)
    heads = [p.requires_grad for p in pretext_head.parameters()]
    pretext_head.requires_grad_(False)
    try:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            pretext_loss(encoder, pretext_head, images).backward()
            optimizer.step()
    finally:
        for parameter, wanted in zip(pretext_head.parameters(), heads, strict=True):
            parameter.requires_grad_(wanted)


@contextmanager
def restored(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block on ``model`` and put back its exact weights and buffers afterwards (episodic adaptation,
    nearest-neighbour TTT's reset)."""
    saved = copy.deepcopy(model.state_dict())
    try:
        yield model
    finally:
        model.load_state_dict(saved)


class TfidfIndex:
    """The texts nearest a query by TF-IDF cosine similarity (scikit-learn's ``TfidfVectorizer``): the retrieval of
    nearest-neighbour TTT (Hardt & Sun, arXiv:2305.18466, who embed with a large model; words suffice for the tiny
    world's statements)."""

    def __init__(self, texts: Sequence[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if not texts:
            raise ValueError("a retrieval index needs at least one text")
        self.texts = list(texts)
        self.vectorizer = TfidfVectorizer(token_pattern=r"[^ ]+")
        self.matrix = self.vectorizer.fit_transform(self.texts)

    def nearest(self, query: str, k: int) -> list[str]:
        """The ``k`` texts most similar to ``query``, most similar first (ties by corpus order)."""
        scores = (self.matrix @ self.vectorizer.transform([query]).T).toarray().ravel()
        return [self.texts[i] for i in np.argsort(-scores, kind="stable")[:k]]


def nearest_neighbour_ttt(
    model: nn.Module,
    tokenizer,
    neighbours: Sequence[str],
    answer: Callable[[nn.Module], object],
    epochs: int = 1,
    lr: float = 1e-3,
    save: Callable[[nn.Module, torch.optim.Optimizer], object] = save_state,
    restore: Callable[[nn.Module, torch.optim.Optimizer, object], None] = restore_state,
):
    """Hardt & Sun's test-time training on nearest neighbours (arXiv:2305.18466, sec. 3): given the training texts
    nearest the query (``TfidfIndex.nearest``, nearest first), take one Adam step of the next-token loss on each
    (batch size one, in that order, ``epochs`` times), return ``answer(model)``, then restore the model's exact
    weights for the next query (``save`` / ``restore``, the episodic reset). The caller retrieves, so the same texts
    can also be given in context."""
    device = next(model.parameters()).device
    examples = [text_example(tokenizer, text) for text in neighbours]
    was_training = model.training
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    start = save(model, optimizer)
    try:
        model.train()
        for _ in range(epochs):
            for example in examples:
                ids = torch.tensor([example.input_ids], device=device)
                loss = masked_sft_loss(model(input_ids=ids).logits, torch.tensor([example.labels], device=device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        model.train(was_training)
        return answer(model)
    finally:
        restore(model, optimizer, start)
        model.train(was_training)
