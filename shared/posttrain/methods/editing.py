"""Knowledge editing: find where a fact lives (causal tracing), rewrite it there (ROME), and measure what changed
(Meng et al. 2022, "Locating and Editing Factual Associations in GPT", arXiv:2202.05262).

**Causal tracing** (sec. 2.1). Run the model on a factual prompt such as "ada stone works as a" → "baker" three ways:
1. clean: record every hidden state h_i^(l) (residual stream, MLP output or attention output) and p(answer);
2. corrupted: add Gaussian noise (3 × the subject embeddings' standard deviation) to the subject tokens'
   embeddings; p(answer) drops to p*;
3. corrupted-with-restoration: as 2, but set one state h_i^(l) (with MLP / attention states: the states of a
   window of layers around l) back to its clean value.
The indirect effect of (l, i) is p_restored − p*: where restoring brings the answer back, the fact is carried.

**ROME** (sec. 3). An MLP's output projection W is a linear key–value memory: at the subject's last token its
input k (the *key*, ``down_proj``'s input in Llama, ``c_proj``'s in GPT-2) selects the value W k written into the
residual stream. To make the model say a new object, find k* (the key averaged over a few context prefixes), a
value v* that makes the new object likely (optimise a vector added to the MLP output, eq. 4 and the reference
code's KL and weight-decay terms), and insert the pair with the smallest change to W's behaviour on all other keys,
weighted by their second moment C = E[k kᵀ] (eq. 2):

    W' = W + (v* − W k*) (C⁻¹ k*)ᵀ / (k*ᵀ C⁻¹ k*),   so that W' k* = v* and W' k = W k whenever kᵀ C⁻¹ k* = 0.

Baselines: constrained fine-tuning of the same projection (FT-L, sec. 4.2: gradient steps on the new object with
every weight kept within ε of its original in L∞) and in-context editing (IKE, Zheng et al. 2023, arXiv:2305.12740:
the new fact in the prompt, no weight changes). ``fact_scores`` scores an edit as CounterFact does (sec. 4.2,
efficacy / paraphrase / neighbourhood), plus the subject's other attributes, portability and fluency (KnowEdit,
arXiv:2401.01286). One hook context manager (``hooked``) serves tracing and editing; every function takes the
model's own device; Llama-style (``model.model.layers``) and GPT-2 (``model.transformer.h``, Conv1D) models work.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from transformers.pytorch_utils import Conv1D

from ..core.edits import EditCase, EditRequest
from ..core.evaluate import encode, next_token_ids, pad_id, right_padded

STATE_KINDS = ("residual", "mlp", "attn")


# ----------------------------------------------------------------------------------------- where things are
@dataclass(frozen=True)
class Anatomy:
    """The modules editing touches, per layer: the block (its output is the residual stream), its MLP, its attention
    and the MLP's output projection (the key–value memory ROME rewrites)."""

    embed: torch.nn.Module
    blocks: Sequence[torch.nn.Module]
    mlps: Sequence[torch.nn.Module]
    attns: Sequence[torch.nn.Module]
    projections: Sequence[torch.nn.Module]

    @property
    def n_layers(self) -> int:
        return len(self.blocks)


def anatomy(model) -> Anatomy:
    """Find the embedding, blocks, MLPs, attentions and MLP output projections of a Llama-style model
    (``model.model.layers[i].mlp.down_proj``: Llama, Qwen2, Mistral) or a GPT-2
    (``model.transformer.h[i].mlp.c_proj``)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers") and hasattr(inner, "embed_tokens"):
        blocks = list(inner.layers)
        return Anatomy(
            inner.embed_tokens,
            blocks,
            [b.mlp for b in blocks],
            [b.self_attn for b in blocks],
            [b.mlp.down_proj for b in blocks],
        )
    transformer = getattr(model, "transformer", None)
    if transformer is not None and hasattr(transformer, "h") and hasattr(transformer, "wte"):
        blocks = list(transformer.h)
        return Anatomy(
            transformer.wte, blocks, [b.mlp for b in blocks], [b.attn for b in blocks], [b.mlp.c_proj for b in blocks]
        )
    raise ValueError(
        f"{type(model).__name__} is neither Llama-style (model.model.layers) nor GPT-2 (model.transformer.h); "
        "editing needs to know where its MLPs are"
    )


def check_layer(model, layer: int) -> int:
    """``layer`` if the model has it, else a ``ValueError`` naming the valid range."""
    n_layers = anatomy(model).n_layers
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer!r} is out of range: this model has layers 0 to {n_layers - 1}")
    return layer


def projection_weight(projection: torch.nn.Module) -> torch.Tensor:
    """The projection's weight as a (d_out, d_in) matrix, v = W k (+ bias). GPT-2's ``Conv1D`` stores the transpose,
    (d_in, d_out), and computes k @ weight."""
    return projection.weight.T if isinstance(projection, Conv1D) else projection.weight


def projection_bias(projection: torch.nn.Module) -> torch.Tensor | None:
    return getattr(projection, "bias", None)


@torch.no_grad()
def add_to_projection(projection: torch.nn.Module, delta: torch.Tensor) -> None:
    """Add a (d_out, d_in) change to the projection's weight in place, whatever its storage orientation."""
    delta = delta.to(projection.weight)
    projection.weight += delta.T if isinstance(projection, Conv1D) else delta


@contextmanager
def hooked(module: torch.nn.Module, edit: Callable[[torch.Tensor], torch.Tensor], on: str = "output") -> Iterator[None]:
    """Within the block, replace ``module``'s output (``on="output"``; a tuple's first element) or its first input
    (``on="input"``) by ``edit(tensor)``. Recording is an edit that stores the tensor and returns it unchanged."""
    if on == "output":

        def hook(_module, _inputs, output):
            if isinstance(output, tuple):
                return (edit(output[0]), *output[1:])
            return edit(output)

        handle = module.register_forward_hook(hook)
    elif on == "input":
        handle = module.register_forward_pre_hook(lambda _module, args: (edit(args[0]), *args[1:]))
    else:
        raise ValueError(f"on must be 'output' or 'input', got {on!r}")
    try:
        yield
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------- tokens and probabilities
def subject_positions(tokenizer, text: str, subject: str) -> list[int]:
    """Positions of ``subject``'s tokens in ``encode(tokenizer, text)`` (its first occurrence); the last one is where
    ROME reads the key. Raises ``ValueError`` when the subject is not in the text or its tokens do not line up with
    the text's own tokenisation."""
    start = text.find(subject)
    if not subject or start < 0:
        raise ValueError(f"the subject {subject!r} is not in the prompt {text!r}; an edit or trace needs it there")
    prefix = text[:start]
    # BPE tokenizers (GPT-2) fold a space into the next word: tokenise "prefix" and "prefix subject" like ROME.
    before = encode(tokenizer, prefix.rstrip(" "))
    through = encode(tokenizer, text[: start + len(subject)])
    full = encode(tokenizer, text)
    if full[: len(through)] != through or through[: len(before)] != before or len(through) == len(before):
        raise ValueError(f"the subject {subject!r} does not form whole tokens in {text!r}")
    return list(range(len(before), len(through)))


def target_ids(tokenizer, target: str) -> list[int]:
    """Token ids of an answer continuing a prompt (with its leading space, which BPE tokenizers fold into it)."""
    ids = tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the target {target!r} has no tokens")
    return ids


def target_logprobs(
    model, tokenizer, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """log p(target | prompt) summed over the target's tokens, for each (prompt, target) pair: shape (n,).

    Sequences are right-padded (the causal mask keeps every real token from seeing a pad), so a batch of prompts of
    different lengths gives the same numbers as one prompt at a time. Differentiable when grad is enabled.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(prompts), batch_size):
        chunk_prompts, chunk_targets = prompts[start : start + batch_size], targets[start : start + batch_size]
        heads = [encode(tokenizer, p) for p in chunk_prompts]
        tails = [target_ids(tokenizer, t) for t in chunk_targets]
        ids, mask = right_padded([h + t for h, t in zip(heads, tails, strict=True)], pad_id(tokenizer), device)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for row, (head, tail) in enumerate(zip(heads, tails, strict=True)):
            positions = torch.arange(len(head) - 1, len(head) + len(tail) - 1, device=device)
            scores.append(logp[row, positions, torch.tensor(tail, device=device)].sum())
    return torch.stack(scores) if scores else torch.zeros(0)


# ----------------------------------------------------------------------------------------- causal tracing
def state_module(model, kind: str, layer: int) -> torch.nn.Module:
    """The module whose output is state ``kind`` at ``layer``: the block (``residual``), its MLP or its attention."""
    parts = anatomy(model)
    check_layer(model, layer)
    if kind not in STATE_KINDS:
        raise ValueError(f"unknown state kind {kind!r}; choose one of {STATE_KINDS}")
    return {"residual": parts.blocks, "mlp": parts.mlps, "attn": parts.attns}[kind][layer]


def layer_window(layer: int, window: int, n_layers: int) -> range:
    """The layers restored together around ``layer``: ``window`` of them centred on it, clipped to the model (the
    reference code's window; 1 is the layer alone)."""
    if window < 1:
        raise ValueError(f"a window holds at least one layer, got {window}")
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


@torch.no_grad()
def record_states(model, input_ids: torch.Tensor, kind: str) -> list[torch.Tensor]:
    """A clean run's state ``kind`` at every layer: a list of (B, T, d) tensors (the raw block outputs, not the
    final-norm ``hidden_states`` transformers returns for the last layer)."""
    states: list[torch.Tensor] = []
    n_layers = anatomy(model).n_layers

    def keep(hidden: torch.Tensor) -> torch.Tensor:
        states.append(hidden.detach().clone())
        return hidden

    with ExitStack() as stack:
        for layer in range(n_layers):
            stack.enter_context(hooked(state_module(model, kind, layer), keep))
        model(input_ids=input_ids)
    return states


def embedding_std(model, token_ids: Sequence[int]) -> float:
    """Standard deviation of the embedding entries of ``token_ids`` (the reference code's noise unit: the subjects'
    embeddings)."""
    embed = anatomy(model).embed.weight
    return float(embed[torch.tensor(sorted(set(token_ids)), device=embed.device)].detach().float().std())


def subject_noise(model, n_positions: int, std: float, seed: int = 0) -> torch.Tensor:
    """Gaussian noise of standard deviation ``std`` for ``n_positions`` embeddings: (n_positions, d), seeded."""
    weight = anatomy(model).embed.weight
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn((n_positions, weight.shape[1]), generator=generator) * std).to(weight)


@contextmanager
def corrupted_subject(model, positions: Sequence[int], noise: torch.Tensor) -> Iterator[None]:
    """Within the block, every row of every batch gets ``noise`` (n_positions, d) added to its embeddings at
    ``positions`` (the subject's tokens)."""
    if len(positions) != noise.shape[0]:
        raise ValueError(f"{len(positions)} subject positions but noise for {noise.shape[0]}")

    def corrupt(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.clone()
        hidden[:, list(positions)] += noise
        return hidden

    with hooked(anatomy(model).embed, corrupt):
        yield


@contextmanager
def restored(
    model, kind: str, layers: Sequence[int], positions: Sequence[int], clean: Sequence[torch.Tensor]
) -> Iterator[None]:
    """Within the block, state ``kind`` at each of ``layers`` is set back to the clean run's value (``clean``, from
    ``record_states`` on a batch of one) at ``positions[b]`` in row b of the batch."""
    rows = list(range(len(positions)))

    def restorer(layer: int):
        def restore(hidden: torch.Tensor) -> torch.Tensor:
            hidden = hidden.clone()
            hidden[rows, list(positions)] = clean[layer][0, list(positions)].to(hidden)
            return hidden

        return restore

    with ExitStack() as stack:
        for layer in layers:
            stack.enter_context(hooked(state_module(model, kind, layer), restorer(layer)))
        yield


@torch.no_grad()
def answer_probability(model, input_ids: torch.Tensor, answer_id: int) -> torch.Tensor:
    """p(answer) as the next token after each row of ``input_ids`` (B, T): shape (B,)."""
    return model(input_ids=input_ids).logits[:, -1].float().softmax(-1)[:, answer_id]


@dataclass(frozen=True)
class Trace:
    """One prompt's causal trace: ``effects[l, i] = p_restored(l, i) − p*`` of shape (n_layers, T)."""

    effects: torch.Tensor
    p_clean: float
    p_corrupt: float


@torch.no_grad()
def causal_trace(
    model,
    input_ids: torch.Tensor,
    subject_positions: Sequence[int],
    answer_id: int,
    kind: str = "residual",
    window: int = 1,
    noise_std: float | None = None,
    noise_scale: float = 3.0,
    seed: int = 0,
) -> Trace:
    """Indirect effect of restoring state ``kind`` (``residual``, ``mlp`` or ``attn``) at every (layer, position),
    for one prompt ``input_ids`` of shape (1, T) (arXiv:2202.05262, sec. 2.1).

    The subject's embeddings get noise of standard deviation ``noise_scale × noise_std`` (``noise_std`` defaults to
    ``embedding_std`` of the subject's own tokens); MLP and attention states are restored over ``layer_window``. Each
    layer is one forward pass: row i of a batch of T copies restores position i.
    """
    if input_ids.shape[0] != 1:
        raise ValueError(f"causal_trace takes one prompt, shape (1, T); got {tuple(input_ids.shape)}")
    length = input_ids.shape[1]
    positions = list(subject_positions)
    if not positions or min(positions) < 0 or max(positions) >= length:
        raise ValueError(f"subject positions {positions} do not lie within the prompt's {length} tokens")
    n_layers = anatomy(model).n_layers
    clean = record_states(model, input_ids, kind)
    p_clean = float(answer_probability(model, input_ids, answer_id)[0])
    std = noise_std if noise_std is not None else embedding_std(model, input_ids[0, positions].tolist())
    noise = subject_noise(model, len(positions), noise_scale * std, seed)
    batch = input_ids.repeat(length, 1)
    effects = torch.zeros(n_layers, length)
    with corrupted_subject(model, positions, noise):
        p_corrupt = float(answer_probability(model, input_ids, answer_id)[0])
        for layer in range(n_layers):
            with restored(model, kind, layer_window(layer, window, n_layers), range(length), clean):
                effects[layer] = answer_probability(model, batch, answer_id).cpu() - p_corrupt
    return Trace(effects, p_clean, p_corrupt)


# The paper's token roles for averaging traces over prompts of different lengths (arXiv:2202.05262, fig. 2).
TOKEN_ROLES = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)


def token_roles(length: int, subject_positions: Sequence[int]) -> list[int | None]:
    """The ``TOKEN_ROLES`` index of each of ``length`` positions (None before the subject); the last token takes its
    own role even where it is also the first subsequent token."""
    first, last = subject_positions[0], subject_positions[-1]
    roles: list[int | None] = []
    for position in range(length):
        if position < first:
            roles.append(None)
        elif position == length - 1 and position > last:
            roles.append(5)
        elif position <= last:
            roles.append(0 if position == first else 2 if position == last else 1)
        else:
            roles.append(3 if position == last + 1 else 4)
    return roles


def by_role(effects: torch.Tensor, subject_positions: Sequence[int]) -> torch.Tensor:
    """A trace's effects (n_layers, T) averaged within each token role: (n_layers, 6), NaN where a role is empty
    (a one-token subject has no middle tokens)."""
    roles = token_roles(effects.shape[1], subject_positions)
    columns = []
    for role in range(len(TOKEN_ROLES)):
        picked = [i for i, r in enumerate(roles) if r == role]
        columns.append(effects[:, picked].mean(1) if picked else torch.full((effects.shape[0],), float("nan")))
    return torch.stack(columns, dim=1)


@torch.no_grad()
def average_trace(
    model,
    tokenizer,
    prompts: Sequence[tuple[str, str, str]],
    kind: str = "residual",
    window: int = 1,
    min_drop: float = 0.5,
    noise_scale: float = 3.0,
    seed: int = 0,
    roles: bool = False,
) -> tuple[torch.Tensor, int]:
    """Average causal trace over ``(prompt, answer, subject)`` triples, e.g. ``("ada stone works as a", "baker",
    "ada stone")``: token by token when every prompt has the same template (same length), or by ``TOKEN_ROLES``
    (``roles=True``, the paper's average over CounterFact's varied prompts).

    The noise unit is the standard deviation of all the prompts' subject-token embeddings (the reference code's
    choice). Each prompt's effects are divided by its drop p − p*; prompts whose corruption removes less than
    ``min_drop`` of the answer's probability are skipped (nothing to restore). Returns (mean normalised effects of
    shape (n_layers, T) or (n_layers, 6), number of prompts used).
    """
    encoded = []
    for prompt, answer, subject in prompts:
        ids = encode(tokenizer, prompt)
        encoded.append((ids, subject_positions(tokenizer, prompt, subject), target_ids(tokenizer, answer)[0]))
    if not roles and len({len(ids) for ids, _, _ in encoded}) > 1:
        raise ValueError("prompts of different lengths cannot be averaged token by token; pass roles=True")
    std = embedding_std(model, [ids[p] for ids, positions, _ in encoded for p in positions])
    device = next(model.parameters()).device
    kept = []
    for index, (ids, positions, answer_id) in enumerate(encoded):
        trace = causal_trace(
            model,
            torch.tensor([ids], device=device),
            positions,
            answer_id,
            kind,
            window,
            std,
            noise_scale,
            seed + index,
        )
        if trace.p_clean - trace.p_corrupt < min_drop:
            continue
        normalised = trace.effects / (trace.p_clean - trace.p_corrupt)
        kept.append(by_role(normalised, positions) if roles else normalised)
    if not kept:
        raise ValueError(f"no prompt lost {min_drop} of its answer probability under corruption; raise noise_scale")
    return torch.stack(kept).nanmean(0), len(kept)


# ----------------------------------------------------------------------------------------- ROME
@dataclass(frozen=True)
class RomeConfig:
    """ROME's settings (the reference code's hyper-parameters for GPT-2 XL: layer 17, 20 Adam steps at lr 0.5,
    weight decay 0.5, KL factor 0.0625, ‖δ‖ ≤ 4 ‖v₀‖). ``kl_prompts`` hold ``{}`` for the subject; the KL term keeps
    their next-token distribution at the subject's last token (the reference's "{} is a")."""

    layer: int
    steps: int = 20
    lr: float = 0.5
    weight_decay: float = 0.5
    kl_factor: float = 0.0625
    clamp_norm: float = 4.0
    kl_prompts: tuple[str, ...] = ("{} is a",)
    early_stop_loss: float = 5e-2


def context_prefixes(model, tokenizer, n: int, length: int, seed: int = 0) -> list[str]:
    """``n`` context templates ``"<text> . {}"`` from the model's own samples of ``length`` tokens after the
    beginning of a sequence, plus the bare ``"{}"`` first (the reference code's context templates: a key and a value
    that work after any text generalise to paraphrases)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    start = torch.tensor([encode(tokenizer, "")] * n, device=device)
    ids = start
    with torch.no_grad():
        for _ in range(length):
            probs = model(input_ids=ids).logits[:, -1].float().softmax(-1).cpu()
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator).to(device)], dim=1)
    texts = tokenizer.batch_decode(ids[:, start.shape[1] :], skip_special_tokens=True)
    return ["{}"] + [text.replace("{", " ").replace("}", " ").strip() + " . {}" for text in texts]


@torch.no_grad()
def projection_inputs(
    model, tokenizer, texts: Sequence[str], layer: int, positions: Sequence[int] | None = None
) -> torch.Tensor:
    """The MLP output projection's input at ``layer`` (its key) for each text at ``positions[i]`` (None: at every
    token, stacked): (n, d_in). Right-padded batches; pads are dropped."""
    projection = anatomy(model).projections[check_layer(model, layer)]
    device = next(model.parameters()).device
    encoded = [encode(tokenizer, t) for t in texts]
    ids, mask = right_padded(encoded, pad_id(tokenizer), device)
    seen: list[torch.Tensor] = []

    def keep(inputs: torch.Tensor) -> torch.Tensor:
        seen.append(inputs.detach())
        return inputs

    with hooked(projection, keep, on="input"):
        model(input_ids=ids, attention_mask=mask)
    keys = seen[0].float()
    if positions is None:
        return keys[mask.bool()]
    return keys[torch.arange(len(texts), device=device), torch.tensor(list(positions), device=device)]


def key_covariance(model, tokenizer, texts: Sequence[str], layer: int, batch_size: int = 64) -> torch.Tensor:
    """C = E[k kᵀ], the uncentred second moment of the projection's input over every token of ``texts`` (the
    model's own corpus; the reference code uses 100 000 Wikipedia tokens): (d_in, d_in), float32."""
    total, count = None, 0
    for start in range(0, len(texts), batch_size):
        keys = projection_inputs(model, tokenizer, texts[start : start + batch_size], layer)
        moment = keys.T @ keys
        total = moment if total is None else total + moment
        count += keys.shape[0]
    if total is None:
        raise ValueError("key_covariance needs at least one text")
    return total / count


def _subject_prompts(tokenizer, templates: Sequence[str], subject: str) -> tuple[list[str], list[int]]:
    texts = [t.format(subject) for t in templates]
    return texts, [subject_positions(tokenizer, text, subject)[-1] for text in texts]


def rome_key(model, tokenizer, request: EditRequest, layer: int, prefixes: Sequence[str]) -> torch.Tensor:
    """k̄: the projection's input at the subject's last token, averaged over ``prefixes`` (context templates with
    ``{}``, e.g. from ``context_prefixes``) put before the request's prompt (arXiv:2202.05262, eq. 3): (d_in,)."""
    templates = [prefix.format(request.prompt) for prefix in prefixes]
    texts, positions = _subject_prompts(tokenizer, templates, request.subject)
    return projection_inputs(model, tokenizer, texts, layer, positions).mean(0)


def projection_output(projection: torch.nn.Module, key: torch.Tensor) -> torch.Tensor:
    """v = W k (+ bias) for a (d_in,) key: what the memory returns today."""
    weight = projection_weight(projection)
    value = weight @ key.to(weight)
    bias = projection_bias(projection)
    return value + bias if bias is not None else value


@contextmanager
def _training_only(model, parameters: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Within the block only ``parameters`` of ``model`` take gradients; every flag is given back afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in parameters:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def rome_value(
    model, tokenizer, request: EditRequest, key: torch.Tensor, config: RomeConfig, prefixes: Sequence[str]
) -> torch.Tensor:
    """v*: the projection output at the subject's last token that makes ``request.target_new`` likely (eq. 4).

    A vector δ is added to the MLP output at the subject's last token of every rewriting prompt (each prefix before
    the request's prompt, followed by the new object's first tokens) and optimised with Adam on
    NLL(new object) + kl_factor · KL(p_δ ‖ p_0) at the subject's last token of ``kl_prompts`` (keep what the model
    says right after the subject) + weight_decay · ‖δ‖ / ‖v₀‖² (the reference code's form), with ‖δ‖ ≤
    clamp_norm · ‖v₀‖ after each step. v₀ = W k (+ bias) for the given key; returns v* = v₀ + δ, (d_out,).
    """
    parts = anatomy(model)
    layer = check_layer(model, config.layer)
    device = next(model.parameters()).device
    new_ids = target_ids(tokenizer, request.target_new)
    templates = [prefix.format(request.prompt) for prefix in prefixes]
    rewrite_texts, rewrite_positions = _subject_prompts(tokenizer, templates, request.subject)
    heads = [encode(tokenizer, t) for t in rewrite_texts]
    rewrite_ids = [h + new_ids[:-1] for h in heads]
    kl_texts, kl_positions = _subject_prompts(tokenizer, config.kl_prompts, request.subject)
    ids, mask = right_padded(rewrite_ids + [encode(tokenizer, t) for t in kl_texts], pad_id(tokenizer), device)
    lookups = torch.tensor(rewrite_positions + kl_positions, device=device)
    rows = torch.arange(len(lookups), device=device)
    n_rewrite = len(rewrite_ids)
    # Every target token of every rewriting prompt: its row, the position that predicts it, and its id.
    target_rows = torch.tensor([r for r in range(n_rewrite) for _ in new_ids], device=device)
    target_positions = torch.tensor([len(h) - 1 + j for h in heads for j in range(len(new_ids))], device=device)
    target_tokens = torch.tensor(new_ids * n_rewrite, device=device)

    value_init = projection_output(parts.projections[layer], key).detach().float()
    delta = torch.zeros_like(value_init, requires_grad=True)

    def add_delta(output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[rows, lookups] = output[rows, lookups] + delta.to(output)
        return output

    optimizer = torch.optim.Adam([delta], lr=config.lr)
    kl_init = None
    max_norm = config.clamp_norm * value_init.norm()
    with _training_only(model, []):
        for _ in range(config.steps):
            with hooked(parts.mlps[layer], add_delta):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            nll = -logp[target_rows, target_positions, target_tokens].mean()
            kl_logp = logp[rows[n_rewrite:], lookups[n_rewrite:]]
            if kl_init is None:
                kl_init = kl_logp.detach()
            kl = torch.nn.functional.kl_div(kl_init, kl_logp, log_target=True, reduction="batchmean")
            loss = nll + config.kl_factor * kl + config.weight_decay * delta.norm() / value_init.norm() ** 2
            if loss.item() < config.early_stop_loss:
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta *= max_norm / delta.norm()
    return (value_init + delta).detach()


def rome_update(weight: torch.Tensor, key: torch.Tensor, value: torch.Tensor, c_inv_key: torch.Tensor) -> torch.Tensor:
    """The rank-one ROME update of a (d_out, d_in) memory W (arXiv:2202.05262, eq. 2):
    W + (v* − W k*)(C⁻¹k*)ᵀ / (k*ᵀ C⁻¹ k*), given k* (d_in,), v* (d_out,) and C⁻¹k* (d_in,). Returns the new W, for
    which W' k* = v* and W' k = W k whenever kᵀC⁻¹k* = 0. ``rome_edit`` passes the bare prompt's key as k* and the
    prefix-averaged key's C⁻¹k̄ as the direction, as the reference code does."""
    residual = value - weight @ key
    return weight + torch.outer(residual, c_inv_key) / (key @ c_inv_key)


def solve_covariance(covariance: torch.Tensor, key: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """C⁻¹ k, with C regularised by ``ridge`` × its mean diagonal (a covariance from a finite corpus can be
    singular)."""
    regularised = covariance + ridge * covariance.diagonal().mean() * torch.eye(len(key), device=covariance.device)
    return torch.linalg.solve(regularised.double(), key.double().to(covariance.device)).float()


@dataclass(frozen=True)
class RomeEdit:
    """One applied ROME edit: the layer, k*, v* and the rank-one change ΔW (d_out, d_in) added to the projection."""

    layer: int
    key: torch.Tensor
    value: torch.Tensor
    delta: torch.Tensor


def rome_edit(
    model,
    tokenizer,
    request: EditRequest,
    config: RomeConfig,
    covariance: torch.Tensor,
    prefixes: Sequence[str] = ("{}",),
    update: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = rome_update,
) -> RomeEdit:
    """Apply one ROME edit in place at ``config.layer`` and return it (``undo_edit`` reverts it).

    As in the reference code, the update's direction C⁻¹k̄ comes from the key averaged over ``prefixes``
    (``rome_key``), while the pair it writes is the bare prompt's: k₀ (the key without a prefix) and
    v* = W k₀ + b + δ (``rome_value`` from v₀ = W k₀ + b). So W' = ``update``(W, k₀, v* − b, C⁻¹k̄) gives W' k₀ + b = v*
    exactly, and every other key k moves by δ · (kᵀC⁻¹k̄) / (k₀ᵀC⁻¹k̄) (b: the projection's bias, zero in Llama)."""
    layer = check_layer(model, config.layer)
    projection = anatomy(model).projections[layer]
    direction = solve_covariance(covariance, rome_key(model, tokenizer, request, layer, prefixes))
    key = rome_key(model, tokenizer, request, layer, ("{}",))
    value = rome_value(model, tokenizer, request, key, config, prefixes)
    bias = projection_bias(projection)
    target = value - bias.detach().float() if bias is not None else value
    weight = projection_weight(projection).detach().float().clone()
    delta = (update(weight, key, target, direction) - weight).detach()
    add_to_projection(projection, delta)
    return RomeEdit(layer, key, value, delta)


def undo_edit(model, edit: RomeEdit) -> None:
    """Remove an applied edit's ΔW (edits commute: each is an addition)."""
    add_to_projection(anatomy(model).projections[edit.layer], -edit.delta)


# ----------------------------------------------------------------------------------------- baselines
def finetune_layer_edit(
    model, tokenizer, request: EditRequest, layer: int, steps: int = 25, lr: float = 5e-4, linf: float = 5e-4
) -> RomeEdit:
    """FT-L (arXiv:2202.05262, sec. 4.2; Zhu et al. 2020): Adam on the NLL of the new object after the request's
    prompt, updating only ``layer``'s MLP output projection, every weight clamped to within ``linf`` of its original
    (the reference's GPT-2 XL setting: 25 steps at lr 5e-4, ε = 5e-4). Applied in place; returns the change as a
    ``RomeEdit`` (key and value empty) so that ``undo_edit`` reverts it."""
    projection = anatomy(model).projections[check_layer(model, layer)]
    original = projection.weight.detach().clone()
    optimizer = torch.optim.Adam([projection.weight], lr=lr)
    with _training_only(model, [projection.weight]):
        for _ in range(steps):
            loss = -target_logprobs(model, tokenizer, [request.text], [request.target_new])[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                projection.weight.copy_(torch.clamp(projection.weight, original - linf, original + linf))
    change = (projection.weight.detach() - original).float()
    delta = change.T if isinstance(projection, Conv1D) else change
    return RomeEdit(layer, torch.zeros(0), torch.zeros(0), delta)


def in_context_prompt(fact: str, prompt: str) -> str:
    """In-context editing (IKE, arXiv:2305.12740, without its demonstrations): the new fact, stated, then the prompt.
    No weight changes."""
    return f"{fact} {prompt}"


# ----------------------------------------------------------------------------------------- metrics
def prefers(model, tokenizer, prompts: Sequence[str], winner: str, loser: str) -> list[bool]:
    """For each prompt, whether p(winner) > p(loser) as its continuation (CounterFact's comparison)."""
    if not prompts:
        return []
    both = target_logprobs(model, tokenizer, [*prompts, *prompts], [winner] * len(prompts) + [loser] * len(prompts))
    return (both[: len(prompts)] > both[len(prompts) :]).tolist()


def greedy_next_word(model, tokenizer, prompts: Sequence[str]) -> list[str]:
    """The arg-max next token after each raw-text prompt, decoded."""
    return [tokenizer.decode([t]).strip() for t in next_token_ids(model, tokenizer, prompts)]


@torch.no_grad()
def continue_text(model, tokenizer, prompts: Sequence[str], n_tokens: int) -> list[str]:
    """Greedy raw-text continuations of ``n_tokens`` tokens after each prompt (left-padded, one batch), decoded
    without the prompt: the free text whose n-gram entropy measures fluency."""
    if not prompts:
        return []
    device = next(model.parameters()).device
    encoded = [encode(tokenizer, p) for p in prompts]
    width = max(len(e) for e in encoded)
    pad = pad_id(tokenizer)
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_tokens, do_sample=False, pad_token_id=pad)
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


def n_gram_entropy(texts: Sequence[str], weights: dict[int, float] | None = None) -> float:
    """Fluency as ROME measures it (arXiv:2202.05262, sec. 4.2, after Zhang et al. 2018): the weighted average of
    bi- and tri-gram entropies, Σ_n w_n · H_n with H_n = −Σ f(g) log₂ f(g) over a text's n-gram frequencies
    (weights 2/3 and 4/3), averaged over texts. Repetitive text has low entropy; an empty text scores 0."""
    weights = weights or {2: 2 / 3, 3: 4 / 3}
    if not texts:
        raise ValueError("n_gram_entropy needs at least one text")
    scores = []
    for text in texts:
        words = text.split()
        total = 0.0
        for n, weight in weights.items():
            grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
            count = sum(grams.values())
            total += weight * -sum(c / count * math.log2(c / count) for c in grams.values()) if count else 0.0
        scores.append(total / len(weights))
    return sum(scores) / len(scores)


def fact_scores(model, tokenizer, case: EditCase) -> dict[str, list[bool]]:
    """Per-prompt judgements of one case (CounterFact, arXiv:2202.05262 sec. 4.2): ``efficacy`` p(new) > p(old) on
    the request; ``paraphrase`` the same on unseen paraphrases; ``neighbourhood`` p(old) > p(new) on other subjects
    (their true answer is the old object); ``attributes`` the subject's other relations still answered right (greedy);
    ``portability`` is scored by the caller (it needs generation)."""
    request = case.request
    attribute_words = greedy_next_word(model, tokenizer, [a.prompt for a in case.attributes])
    return {
        "efficacy": prefers(model, tokenizer, [request.text], request.target_new, request.target_true),
        "paraphrase": prefers(model, tokenizer, case.paraphrases, request.target_new, request.target_true),
        "neighbourhood": prefers(model, tokenizer, case.neighbours, request.target_true, request.target_new),
        "attributes": [word == a.answer for word, a in zip(attribute_words, case.attributes, strict=True)],
    }
