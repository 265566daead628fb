"""Regularisation toward the pre-trained weights, and the spectrum of the weight change it limits.

Both penalties are R(θ) = λ/2 · Σ_j b_j (θ_j − θ⁰_j)² around the pre-trained weights θ⁰:
b_j = 1 is L2-SP (Xuhong Li et al. 2018, "Explicit Inductive Bias for Transfer Learning with Convolutional
Networks", arXiv:1802.01483, sec. 3), b_j = F_j, the diagonal Fisher information on old-task data, is EWC
(Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks", arXiv:1612.00796, eq. 3).
The penalties are closures for ``posttrain.core.train.train(..., extra_loss=...)``.

``weight_deltas``, ``spectrum`` and ``effective_rank`` describe how a fine-tune moved each weight matrix, as in
the spectral analysis of Biderman et al. 2024, "LoRA Learns Less and Forgets Less" (arXiv:2405.09673).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..core.data import IGNORE_INDEX, Example, collate

ParamFilter = Callable[[str, nn.Parameter], bool]
Penalty = Callable[[nn.Module], torch.Tensor]


def anchor(model: nn.Module, names: ParamFilter | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of the pre-trained weights θ⁰ of the trainable parameters, keyed by parameter name.

    θ⁰ is the centre of the L2-SP and EWC penalties (arXiv:1802.01483 sec. 3; arXiv:1612.00796 eq. 3).
    A parameter is kept when it requires grad and ``names(name, param)`` is true; ``names`` has the signature
    of ``train``'s ``trainable`` filter, so one filter can select both what is trained and what is anchored.
    """
    return {
        name: param.detach().clone()
        for name, param in model.named_parameters()
        if param.requires_grad and (names is None or names(name, param))
    }


def _quadratic_penalty(
    anchor: dict[str, torch.Tensor], weights: dict[str, torch.Tensor] | None, strength: float
) -> Penalty:
    """The closure model ↦ λ/2 · Σ_j b_j (θ_j − θ⁰_j)² over the anchored parameters (b_j = 1 when no weights)."""

    def penalty(model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        missing = anchor.keys() - params.keys()
        if missing:
            raise KeyError(f"the model has no parameters named {sorted(missing)[:3]}; was the anchor taken from it?")
        total = torch.zeros((), device=next(iter(params.values())).device)
        for name, centre in anchor.items():
            squared = (params[name].float() - centre.float()) ** 2
            total = total + (squared if weights is None else weights[name] * squared).sum()
        return 0.5 * strength * total

    return penalty


def l2_sp_penalty(anchor: dict[str, torch.Tensor], strength: float) -> Penalty:
    """L2-SP: the closure model ↦ λ/2 · Σ_j (θ_j − θ⁰_j)², whose gradient is λ (θ − θ⁰).

    Li et al. 2018 (arXiv:1802.01483, sec. 3), the α/2 ‖w_S − w⁰_S‖² term on the pre-trained parameters; λ is
    ``strength``. Pass the result as ``train(..., extra_loss=...)``.
    """
    return _quadratic_penalty(anchor, None, strength)


def ewc_penalty(anchor: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor], strength: float) -> Penalty:
    """EWC: the closure model ↦ λ/2 · Σ_j F_j (θ_j − θ⁰_j)², whose gradient is λ F (θ − θ⁰).

    Kirkpatrick et al. 2017 (arXiv:1612.00796, eq. 3) with λ = ``strength`` and F the diagonal Fisher of the old
    task (``diagonal_fisher``). Pass the result as ``train(..., extra_loss=...)``.
    """
    missing = anchor.keys() - fisher.keys()
    if missing:
        raise KeyError(f"no Fisher information for anchored parameters {sorted(missing)[:3]}")
    weights = {name: fisher[name].detach().float() for name in anchor}
    for name, centre in anchor.items():
        if weights[name].shape != centre.shape:
            raise ValueError(f"Fisher of {name} has shape {tuple(weights[name].shape)}, not {tuple(centre.shape)}")
    return _quadratic_penalty(anchor, weights, strength)


def sequence_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(y | x) of each sequence: the sum of the answer tokens' log-probabilities, shape (B,).

    logits: (B, T, V); labels: (B, T) with ``IGNORE_INDEX`` off the answer. As in ``masked_sft_loss``, position t
    predicts label t + 1: log p(y | x) = Σ_{t∈M} log p(y_{t+1} | x_≤t), summed rather than averaged so that each
    example is one draw of the log-likelihood whose score the Fisher squares (arXiv:1612.00796, sec. 2.1).
    """
    shifted_labels = labels[:, 1:]
    answer = shifted_labels != IGNORE_INDEX
    log_probs = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
    token_log_probs = log_probs.gather(-1, shifted_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_log_probs * answer).sum(dim=-1)


def diagonal_fisher(
    model: nn.Module,
    examples: Sequence[Example],
    pad_id: int,
    *,
    batch_size: int = 1,
    max_examples: int | None = None,
) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher F_j = E_x[(∂ log p(y|x) / ∂θ_j)²] on old-task examples, per trainable parameter.

    The diagonal of the Fisher information that weights the EWC penalty (Kirkpatrick et al. 2017,
    arXiv:1612.00796, eq. 3), in its empirical form: y is the dataset's answer, not a sample from the model, and
    log p(y|x) is ``sequence_log_likelihood`` (the sum over the answer tokens). The model must map
    ``input_ids``/``attention_mask`` to an output with ``.logits``. The first ``max_examples`` examples are used
    (all when None), in order, in eval mode; ``.grad`` is left untouched.

    With ``batch_size = 1`` this is exact: F̂ = 1/N Σ_i g_i², g_i the gradient of example i's log-likelihood.

    With ``batch_size = B > 1`` it is the mini-batch approximation F̂ = 1/N Σ_batches (Σ_{i∈batch} g_i)²: one
    backward pass per batch, on the summed log-likelihood. Squaring a mini-batch gradient is not averaging squared
    per-sample gradients: the square of the batch mean ḡ is (Σ g_i²)/B² plus the cross terms g_i g_k, and over
    random batches E[ḡ²] = (E g)² + Var(g)/B while F = E[g²] = (E g)² + Var(g). So ḡ² underestimates F, by the
    factor 1/B at a stationary point of the old-task loss (E g = 0, where EWC's θ⁰ is meant to be). Summing instead
    of averaging inside a batch multiplies by B: E[F̂] = F + (B − 1)(E g)², unbiased at such a stationary point and
    an overestimate by (B − 1)(E g)² away from it; the cross terms make it noisier than the exact estimate.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    data = list(examples)[:max_examples]
    if not data:
        raise ValueError("diagonal_fisher() got no examples")
    params = {name: param for name, param in model.named_parameters() if param.requires_grad}
    fisher = {name: torch.zeros_like(param, dtype=torch.float32) for name, param in params.items()}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for start in range(0, len(data), batch_size):
        batch = {k: v.to(device) for k, v in collate(data[start : start + batch_size], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        log_likelihood = sequence_log_likelihood(logits, batch["labels"]).sum()
        grads = torch.autograd.grad(log_likelihood, list(params.values()), allow_unused=True, materialize_grads=True)
        for name, grad in zip(params, grads, strict=True):
            fisher[name] += grad.float() ** 2
    model.train(was_training)
    return {name: value / len(data) for name, value in fisher.items()}


def weight_deltas(before: dict[str, torch.Tensor], after: nn.Module) -> dict[str, torch.Tensor]:
    """ΔW = W_after − W_before for every 2-D weight in ``before`` (e.g. an ``anchor``), in float32.

    The perturbation matrices whose spectra Biderman et al. 2024 (arXiv:2405.09673) compare between full
    fine-tuning and LoRA.
    """
    params = dict(after.named_parameters())
    return {
        name: params[name].detach().float() - weight.float()
        for name, weight in before.items()
        if weight.ndim == 2 and name in params
    }


def spectrum(delta: torch.Tensor) -> torch.Tensor:
    """Singular values σ_1 ≥ σ_2 ≥ … of a 2-D ``delta`` divided by ‖delta‖_F = √(Σ σ_i²), on the CPU.

    Normalised so that the squares sum to 1: σ_i² is the share of the squared Frobenius norm in direction i, the
    quantity behind the rank analysis of Biderman et al. 2024 (arXiv:2405.09673). All zeros for a zero matrix.
    """
    values = torch.linalg.svdvals(delta.detach().float().cpu())
    norm = values.square().sum().sqrt()
    return values / norm if norm > 0 else values


def effective_rank(delta: torch.Tensor, energy: float = 0.9) -> int:
    """The smallest k with Σ_{i≤k} σ_i² ≥ ``energy`` · Σ_i σ_i²: how many directions hold that share of ‖delta‖_F².

    The rank needed to explain a share of a weight perturbation's variance, the measure of the spectral analysis of
    Biderman et al. 2024 (arXiv:2405.09673), who read it at 90 %. 0 for a zero matrix.
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    shares = spectrum(delta).square()
    if shares.sum() == 0:
        return 0
    below = torch.cumsum(shares, dim=0) < energy * shares.sum()
    return min(int(below.sum()) + 1, shares.numel())
