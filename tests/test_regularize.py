"""L2-SP and EWC penalties, the diagonal Fisher against logistic regression, and the effective rank of ΔW."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from posttrain.core.data import IGNORE_INDEX, Example
from posttrain.core.train import TrainConfig, train
from posttrain.methods.regularize import (
    anchor,
    diagonal_fisher,
    effective_rank,
    ewc_penalty,
    l2_sp_penalty,
    spectrum,
    weight_deltas,
)


def two_parameter_model() -> nn.Linear:
    """nn.Linear(1, 1): weight and bias, one number each, set to θ⁰ = (1.0, -2.0)."""
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(-2.0)
    return model


def move_to(model: nn.Linear, weight: float, bias: float) -> None:
    """Set θ = (weight, bias) in place."""
    with torch.no_grad():
        model.weight.fill_(weight)
        model.bias.fill_(bias)


def test_ewc_penalty_matches_hand_computation():
    model = two_parameter_model()
    centre = anchor(model)
    move_to(model, 1.5, 0.0)  # θ − θ⁰ = (0.5, 2.0); the anchor must not follow
    fisher = {"weight": torch.tensor([[4.0]]), "bias": torch.tensor([0.5])}
    # λ/2 · Σ F (θ − θ⁰)² = 3/2 · (4 · 0.25 + 0.5 · 4) = 1.5 · 3 = 4.5
    assert ewc_penalty(centre, fisher, strength=3.0)(model).item() == pytest.approx(4.5)
    with pytest.raises(KeyError):
        ewc_penalty(centre, {"weight": fisher["weight"]}, strength=3.0)


def test_l2_sp_penalty_and_its_gradient():
    model = two_parameter_model()
    centre = anchor(model)
    move_to(model, 1.5, 0.0)
    penalty = l2_sp_penalty(centre, strength=3.0)(model)
    # λ/2 · Σ (θ − θ⁰)² = 3/2 · (0.25 + 4) = 6.375
    assert penalty.item() == pytest.approx(6.375)
    penalty.backward()
    # gradient λ (θ − θ⁰) = 3 · (0.5, 2.0)
    assert model.weight.grad.item() == pytest.approx(1.5)
    assert model.bias.grad.item() == pytest.approx(6.0)


def test_anchor_filter_selects_parameters():
    model = two_parameter_model()
    assert set(anchor(model, lambda name, _: name == "bias")) == {"bias"}
    model.bias.requires_grad_(False)
    assert set(anchor(model)) == {"weight"}


class LogisticLM(nn.Module):
    """Logistic regression p(y=1|x) = σ(wᵀx) dressed as a 2-token causal LM for ``diagonal_fisher``.

    Token id i stands for the feature vector ``features[i]``; the logits over the vocabulary {0, 1} are (0, wᵀx), so
    log_softmax gives log(1 − σ(wᵀx)) and log σ(wᵀx).
    """

    def __init__(self, features: torch.Tensor, w: torch.Tensor):
        super().__init__()
        self.register_buffer("features", features)
        self.w = nn.Parameter(w.clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        z = self.features[input_ids] @ self.w
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(z), z], dim=-1))


def logistic_problem(n: int = 10, d: int = 3) -> tuple[LogisticLM, list[Example], torch.Tensor]:
    """A random (unfitted) logistic model, one example per sample (prompt token i, answer token y_i) and the
    per-sample scores g_i = ∂ log p(y_i|x_i) / ∂w = (y_i − σ(wᵀx_i)) x_i, shape (n, d)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=generator)
    w = torch.randn(d, generator=generator)
    y = torch.randint(0, 2, (n,), generator=generator)
    examples = [Example([i, i], [IGNORE_INDEX, int(y[i])]) for i in range(n)]
    scores = (y.float() - torch.sigmoid(x @ w)).unsqueeze(1) * x
    return LogisticLM(x, w), examples, scores


def test_fisher_matches_logistic_regression():
    model, examples, scores = logistic_problem()
    fisher = diagonal_fisher(model, examples, pad_id=0)
    # F_j = 1/n Σ_i (y_i − σ(wᵀx_i))² x_ij²
    torch.testing.assert_close(fisher["w"], scores.square().mean(0), rtol=1e-5, atol=1e-5)
    assert model.w.grad is None
    head = diagonal_fisher(model, examples, pad_id=0, max_examples=4)
    torch.testing.assert_close(head["w"], scores[:4].square().mean(0), rtol=1e-5, atol=1e-5)


def test_fisher_mini_batch_approximation():
    model, examples, scores = logistic_problem()
    fisher = diagonal_fisher(model, examples, pad_id=0, batch_size=3)
    # F̂ = 1/N Σ_batches (Σ_{i∈batch} g_i)², batches {0,1,2} {3,4,5} {6,7,8} {9}
    batch_sums = torch.stack([scores[start : start + 3].sum(0) for start in range(0, 10, 3)])
    expected = batch_sums.square().sum(0) / 10
    torch.testing.assert_close(fisher["w"], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fisher["w"], scores.square().mean(0), rtol=1e-3)


def random_rank_k(k: int, n: int = 64) -> torch.Tensor:
    """U diag(1..k) Vᵀ with orthonormal U, V: an n × n matrix of rank exactly k."""
    generator = torch.Generator().manual_seed(k)
    u, _ = torch.linalg.qr(torch.randn(n, k, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=generator))
    return u @ torch.diag(torch.arange(1, k + 1, dtype=torch.float32)) @ v.T


@pytest.mark.parametrize("k", [1, 4, 9])
def test_effective_rank_of_rank_k_matrix(k):
    assert effective_rank(random_rank_k(k), energy=0.999) == k


def test_effective_rank_of_decaying_spectrum():
    generator = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(64, 64, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(64, 64, generator=generator))
    sigma = 0.5 ** torch.arange(64, dtype=torch.float32)  # σ_i² = 4^-i: 3/4 of the energy in σ_1, 15/16 in σ_1, σ_2
    delta = u @ torch.diag(sigma) @ v.T
    assert effective_rank(delta, energy=0.9) == 2
    assert effective_rank(delta, energy=0.99) == 4
    assert effective_rank(torch.zeros(8, 8)) == 0
    torch.testing.assert_close(spectrum(delta), sigma / sigma.norm(), rtol=1e-4, atol=1e-6)


def tiny_llama() -> LlamaForCausalLM:
    """A random 2-layer Llama with hidden size 16 over a 32-token vocabulary."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config)


def random_examples(seed: int, n: int = 8) -> list[Example]:
    """Random token sequences of varied length, the loss on their second half."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for length in torch.randint(6, 12, (n,), generator=generator).tolist():
        ids = torch.randint(1, 32, (length,), generator=generator).tolist()
        examples.append(Example(ids, [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]))
    return examples


def squared_distance(
    before: dict[str, torch.Tensor], model: nn.Module, weights: dict[str, torch.Tensor] | None
) -> float:
    """Σ_j b_j (θ_j − θ⁰_j)² over the anchored parameters (b_j = 1 when no weights)."""
    params = dict(model.named_parameters())
    return sum(
        float(((params[n].detach() - w).square() * (1 if weights is None else weights[n])).sum())
        for n, w in before.items()
    )


def test_penalties_keep_a_tiny_llama_near_its_start():
    base = tiny_llama()
    centre = anchor(base)
    fisher = diagonal_fisher(base, random_examples(seed=1), pad_id=0, batch_size=2)
    assert set(fisher) == set(centre) and all(f.shape == centre[n].shape for n, f in fisher.items())
    config = TrainConfig(steps=10, lr=1e-2, batch_size=4, warmup_steps=1, progress=False)
    new_task = random_examples(seed=2)

    def fine_tune(extra_loss=None) -> nn.Module:
        model = copy.deepcopy(base)
        train(model, new_task, config, pad_id=0, extra_loss=extra_loss)
        return model

    plain = fine_tune()
    l2_sp = fine_tune(l2_sp_penalty(centre, strength=100.0))
    ewc = fine_tune(ewc_penalty(centre, fisher, strength=1e4))
    assert squared_distance(centre, l2_sp, None) < 0.5 * squared_distance(centre, plain, None)
    assert squared_distance(centre, ewc, fisher) < 0.5 * squared_distance(centre, plain, fisher)
    deltas = weight_deltas(centre, plain)
    assert deltas and all(d.ndim == 2 for d in deltas.values())
    assert 1 <= effective_rank(deltas["model.layers.0.self_attn.q_proj.weight"]) <= 16
