"""Forward vs reverse KL on a two-mode Gaussian mixture (the theory of Lab 03).

An "old" skill is a mode at 0, a "new" one a mode at Δ; both have unit variance. The ideal model after post-training
is p* = ½ N(0, 1) + ½ N(Δ, 1): new skill learned, old one kept. The model is a learnable mixture
q = w N(μ_old, 1) + (1 − w) N(μ_new, 1), starting as an old-skill model (w = 0.9, μ_old = 0, μ_new = Δ − 1).

- **Forward KL on new data** (what SFT does): minimise −E_{x∼data} log q(x) with data from the new mode only. Its
  optimum puts no mass on the old mode: *mass forgetting*. Replay of a share ρ of old data moves the optimum to w = ρ.
- **Reverse KL** KL(q ‖ p*) = ∫ q (log q − log p*) (on-policy distillation, self-output targets): mode-seeking, its
  optimum here is p* itself, so the old mass is kept. The old mean only moves while the components overlap (the
  new component's error is blamed partly on the old one), so its drift shrinks with the Bhattacharyya coefficient
  BC = ∫ √(p q) = exp(−Δ²/8) of the two modes (Bhattacharyya 1943; for equal variances σ², exp(−Δ²/(8σ²))).
  With a finite batch drawn partly from replayed old data, the importance-weighted estimator has the same
  expectation: replay changes only its variance, not its optimum.

Integrals are exact sums on a fine grid; plain SGD is the default optimizer because Adam moves every parameter by
about its learning rate on the first step, which hides small drifts (``../shared/CALIBRATION.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_pdf(x: torch.Tensor, mean: torch.Tensor | float, std: float = 1.0) -> torch.Tensor:
    """log N(x; mean, std²), elementwise."""
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - LOG_SQRT_2PI


def mixture_log_prob(x: torch.Tensor, old_weight: torch.Tensor | float, old_mean, new_mean) -> torch.Tensor:
    """log [w N(x; μ_old, 1) + (1 − w) N(x; μ_new, 1)], computed stably with logsumexp."""
    w = torch.as_tensor(old_weight, dtype=x.dtype)
    parts = torch.stack([torch.log(w) + gaussian_log_pdf(x, old_mean), torch.log1p(-w) + gaussian_log_pdf(x, new_mean)])
    return torch.logsumexp(parts, dim=0)


class Mixture(nn.Module):
    """The learnable two-component mixture q: the old component's weight w = sigmoid(logit) and both means."""

    def __init__(self, old_weight: float, old_mean: float, new_mean: float) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.tensor(math.log(old_weight / (1 - old_weight)), dtype=torch.float64))
        self.means = nn.Parameter(torch.tensor([old_mean, new_mean], dtype=torch.float64))

    @property
    def old_weight(self) -> torch.Tensor:
        return torch.sigmoid(self.logit)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return mixture_log_prob(x, self.old_weight, self.means[0], self.means[1])


def grid(separation: float, points: int = 1000, margin: float = 8.0) -> torch.Tensor:
    """Equally spaced points covering both modes with ``margin`` standard deviations on each side."""
    return torch.linspace(-margin, separation + margin, points, dtype=torch.float64)


def reverse_kl(log_q: torch.Tensor, log_p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ p) = ∫ q(x) (log q(x) − log p(x)) dx by the trapezoid rule on the grid ``x`` (log-densities given)."""
    return torch.trapezoid(log_q.exp() * (log_q - log_p), x)


def bhattacharyya_coefficient(separation: float, std: float = 1.0) -> float:
    """BC = ∫ √(N(x; 0, σ²) N(x; Δ, σ²)) dx = exp(−Δ² / (8σ²)): the overlap of two equal-variance Gaussians whose
    means are ``separation`` apart (the Bhattacharyya distance of equal covariances is Δ²/(8σ²))."""
    return math.exp(-(separation**2) / (8 * std**2))


def old_mode_mass(model: Mixture, separation: float) -> float:
    """The model's probability mass on the old mode's side, q(x < Δ/2): what is left of the old skill, wherever the
    components have moved."""
    x = grid(separation)
    x = x[x < separation / 2]
    with torch.no_grad():
        return float(torch.trapezoid(model.log_prob(x).exp(), x))


@dataclass
class Trajectory:
    """The state of the mixture along training: old-mode mass, old weight and both means, every ``every`` steps."""

    objective: str
    separation: float
    replay: float
    steps: list[int] = field(default_factory=list)
    old_mass: list[float] = field(default_factory=list)
    old_weight: list[float] = field(default_factory=list)
    old_mean: list[float] = field(default_factory=list)
    new_mean: list[float] = field(default_factory=list)

    def record(self, step: int, model: Mixture) -> None:
        self.steps.append(step)
        self.old_mass.append(old_mode_mass(model, self.separation))
        self.old_weight.append(float(model.old_weight.detach()))
        self.old_mean.append(float(model.means[0].detach()))
        self.new_mean.append(float(model.means[1].detach()))

    @property
    def drift(self) -> float:
        """The largest distance of the old mean from its true value 0 along the run."""
        return max(abs(m) for m in self.old_mean)


def _new_data_nll(model: Mixture, separation: float, batch_size: int, replay: float, generator) -> torch.Tensor:
    """−mean log q over a batch from the data: a share ``replay`` from the old mode N(0, 1), the rest from N(Δ, 1)."""
    samples = torch.randn(batch_size, generator=generator, dtype=torch.float64)
    samples[round(batch_size * replay) :] += separation
    return -model.log_prob(samples).mean()


def sampled_reverse_kl(log_q: torch.Tensor, log_p: torch.Tensor, log_r: torch.Tensor) -> torch.Tensor:
    """Monte-Carlo estimate of KL(q ‖ p) from samples x_i of a proposal r: mean_i (q(x_i) / r(x_i)) (log q(x_i) −
    log p(x_i)), given the three log-densities at the samples. With r = q (``log_r`` = ``log_q`` detached) it is the
    plain on-policy estimator mean_i (log q − log p); for any fixed r it is unbiased (importance sampling)."""
    return ((log_q - log_r).exp() * (log_q - log_p)).mean()


ReverseKLEstimator = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _sampled_reverse_kl(
    model: Mixture, separation: float, batch_size: int, replay: float, generator, estimator: ReverseKLEstimator
) -> torch.Tensor:
    """KL(q ‖ p*) estimated on a batch from the proposal r = (1 − ρ) q + ρ N(0, 1), each term weighted by q / r.

    r is held fixed (no gradient), so E_r[(q / r)(log q − log p*)] = KL(q ‖ p*) and its gradient is the exact one for
    every ρ: replayed old samples change the estimator's variance, not what it converges to.
    """
    n_old = round(batch_size * replay)
    with torch.no_grad():
        from_old = torch.rand(batch_size - n_old, generator=generator, dtype=torch.float64) < model.old_weight
        means = torch.where(from_old, model.means[0], model.means[1])
        noise = torch.randn(batch_size, generator=generator, dtype=torch.float64)
        samples = torch.cat([means, torch.zeros(n_old, dtype=torch.float64)]) + noise
        log_r = model.log_prob(samples)
        if replay:
            rho = torch.tensor(replay, dtype=torch.float64)
            log_r = torch.logaddexp(torch.log1p(-rho) + log_r, torch.log(rho) + gaussian_log_pdf(samples, 0.0))
    return estimator(model.log_prob(samples), mixture_log_prob(samples, 0.5, 0.0, separation), log_r)


def train_mixture(
    objective: str,
    separation: float,
    steps: int = 2000,
    lr: float = 0.05,
    replay: float = 0.0,
    batch_size: int | None = None,
    optimizer: str = "sgd",
    seed: int = 0,
    every: int = 10,
    estimator: ReverseKLEstimator = sampled_reverse_kl,
) -> Trajectory:
    """Train the old-skill mixture toward the new skill and return its ``Trajectory``.

    ``objective="forward"``: minimise the negative log-likelihood of a batch (default 256) of samples, a share
    ``replay`` of them from the old mode and the rest from the new one (forward KL to the data, up to a constant).
    ``objective="reverse"``: minimise KL(q ‖ p*) exactly on the grid when ``batch_size`` is None; with a batch size,
    estimate it from samples of the proposal r = (1 − ρ) q + ρ N(0, 1) (ρ = ``replay``) weighted by q / r, an
    estimator whose expectation and gradient do not depend on ρ (``estimator``, default ``sampled_reverse_kl``).
    """
    if objective not in ("forward", "reverse"):
        raise ValueError(f"objective must be 'forward' or 'reverse', got {objective!r}")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if not 0 <= replay < 1:
        raise ValueError(f"replay is a share of the batch in [0, 1), got {replay}")
    generator = torch.Generator().manual_seed(seed)
    model = Mixture(0.9, 0.0, separation - 1.0)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.Adam(params, lr=lr)
    trajectory = Trajectory(objective, separation, replay)
    x = grid(separation)
    target = mixture_log_prob(x, 0.5, 0.0, separation)
    for step in range(steps + 1):
        if step % every == 0:
            trajectory.record(step, model)
        if step == steps:
            break
        if objective == "forward":
            loss = _new_data_nll(model, separation, batch_size or 256, replay, generator)
        elif batch_size is None:
            loss = reverse_kl(model.log_prob(x), target, x)
        else:
            loss = _sampled_reverse_kl(model, separation, batch_size, replay, generator, estimator)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return trajectory


def log_correlation(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation of log x with log y: how well a power law y ∝ x^k describes the points."""
    logs = torch.tensor([[math.log(x), math.log(y)] for x, y in zip(xs, ys, strict=True)], dtype=torch.float64)
    return float(torch.corrcoef(logs.T)[0, 1])
