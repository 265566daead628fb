"""Knowledge editing, part 1: causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations
in GPT", arXiv:2202.05262, sec. 2.1).

Run the model three times on a factual prompt such as "ada stone lives in" → "paris":
1. clean: record every layer's hidden state h_i^(l) and the probability p of the answer;
2. corrupted: add Gaussian noise (3 × the embeddings' standard deviation) to the subject tokens'
   embeddings: the answer's probability drops to p*;
3. corrupted-with-restoration: as 2, but overwrite one hidden state h_i^(l) with its clean value.
The indirect effect of state (l, i) is p_restored − p*; a state whose restoration brings the answer
back carries the fact there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def hooked(module: torch.nn.Module, edit) -> Iterator[None]:
    """Within the block, replace ``module``'s output by ``edit(output)`` (tensor or first tuple element)."""

    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _answer_prob(model, input_ids: torch.Tensor, answer_id: int) -> float:
    return float(model(input_ids=input_ids).logits[0, -1].float().softmax(-1)[answer_id])


@torch.no_grad()
def causal_trace(
    model,
    input_ids: torch.Tensor,
    subject_positions: list[int],
    answer_id: int,
    noise_scale: float = 3.0,
    seed: int = 0,
) -> tuple[torch.Tensor, float, float]:
    """Indirect effect of restoring each residual-stream state, for one prompt.

    input_ids: (1, T). Returns (effects of shape (n_layers, T), clean probability p, corrupted probability p*):
    ``effects[l, i] = p_restored(l, i) − p*`` where layer l's output at position i is restored to its clean value.
    Llama-style models (``model.model.layers``, ``model.model.embed_tokens``) are supported.
    """
    layers = model.model.layers
    embed = model.model.embed_tokens
    # Record each layer's raw output with hooks during the clean run (output_hidden_states would give the
    # last layer's output after the final norm).
    outputs: list[torch.Tensor] = []
    handles = [
        layer.register_forward_hook(lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out))
        for layer in layers
    ]
    try:
        p_clean = _answer_prob(model, input_ids, answer_id)
    finally:
        for handle in handles:
            handle.remove()
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(subject_positions), embed.weight.shape[1]), generator=generator)
    noise = (noise * noise_scale * embed.weight.float().std()).to(embed.weight)

    def corrupt(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.clone()
        hidden[0, subject_positions] += noise
        return hidden

    with hooked(embed, corrupt):
        p_corrupt = _answer_prob(model, input_ids, answer_id)
        effects = torch.zeros(len(layers), input_ids.shape[1])
        for layer_index, layer in enumerate(layers):
            for position in range(input_ids.shape[1]):

                def restore(hidden: torch.Tensor, layer_at=layer_index, i=position) -> torch.Tensor:
                    hidden = hidden.clone()
                    hidden[0, i] = outputs[layer_at][0, i]
                    return hidden

                with hooked(layer, restore):
                    effects[layer_index, position] = _answer_prob(model, input_ids, answer_id) - p_corrupt
    return effects, p_clean, p_corrupt


@torch.no_grad()
def average_trace(
    model, tokenizer, prompts: list[tuple[str, str, str]], min_drop: float = 0.5, seed: int = 0
) -> tuple[torch.Tensor, int]:
    """Average causal trace over prompts of one template: ``(prefix, answer, subject)`` triples, e.g.
    ``("ada stone lives in", "paris", "ada stone")``; all prefixes must have the same number of tokens.

    Each prompt's effects are divided by its drop p − p*, and prompts whose corruption removes less than
    ``min_drop`` of the answer's probability are skipped (nothing to restore). Returns (mean normalised
    effects of shape (n_layers, T), number of prompts used).
    """
    total, used = None, 0
    for index, (prefix, answer, subject) in enumerate(prompts):
        ids = [tokenizer.bos_token_id] + tokenizer(prefix, add_special_tokens=False)["input_ids"]
        n_subject = len(tokenizer(subject, add_special_tokens=False)["input_ids"])
        start = 1 + len(tokenizer(prefix[: prefix.index(subject)], add_special_tokens=False)["input_ids"])
        answer_id = tokenizer(answer, add_special_tokens=False)["input_ids"][0]
        effects, p_clean, p_corrupt = causal_trace(
            model, torch.tensor([ids]), list(range(start, start + n_subject)), answer_id, seed=seed + index
        )
        if p_clean - p_corrupt < min_drop:
            continue
        normalised = effects / (p_clean - p_corrupt)
        total = normalised if total is None else total + normalised
        used += 1
    if total is None:
        raise ValueError(f"no prompt lost {min_drop} of its answer probability under corruption; raise noise")
    return total / used, used
