"""Greedy evaluation is pure greedy on a checkpoint that ships sampling defaults, and stops at every stop id.

The fixture is a tiny random Qwen2 whose generation config carries what Qwen2.5-0.5B-Instruct's does: sampling on,
temperature 0.7, top-p 0.8, top-k 20, a repetition penalty and two end-of-sequence ids (``<|im_end|>`` and
``<|endoftext|>``); the tokenizer's own eos is only ``<|im_end|>``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import GenerationConfig

from posttrain.core.data import chat_prompt_ids
from posttrain.core.evaluate import Generation, generate, greedy_config, stop_token_ids
from posttrain.core.models import load_model

PROMPTS = ["hello !", "how are you today ?"]


@pytest.fixture
def qwen_like(tiny_qwen2_dir, chatml_tokenizer):
    """(model, tokenizer, im_end id, endoftext id) of the tiny Qwen2 with Qwen2.5-Instruct's generation config."""
    im_end, endoftext = chatml_tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    GenerationConfig(
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.5,
        eos_token_id=[im_end, endoftext],
        pad_token_id=endoftext,
        bos_token_id=endoftext,
    ).save_pretrained(tiny_qwen2_dir)
    model, tokenizer = load_model(tiny_qwen2_dir, device="cpu", dtype=torch.float32)
    return model, tokenizer, im_end, endoftext


def manual_greedy(model, tokenizer, prompt: str, max_new_tokens: int, stops: set[int]) -> Generation:
    """Arg-max decoding written out: one forward pass per token, no penalty, stop at any stop id."""
    ids = chat_prompt_ids(tokenizer, prompt)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if token in stops:
                return Generation(tokenizer.decode(new, skip_special_tokens=False).strip(), stopped=True)
            new.append(token)
    return Generation(tokenizer.decode(new, skip_special_tokens=False).strip(), stopped=False)


def test_the_stop_ids_are_every_eos_of_the_generation_config(qwen_like):
    model, tokenizer, im_end, endoftext = qwen_like
    assert tokenizer.eos_token_id == im_end
    assert stop_token_ids(model, tokenizer) == [im_end, endoftext]


def test_the_greedy_config_clears_sampling_and_the_repetition_penalty(qwen_like):
    model, tokenizer, im_end, endoftext = qwen_like
    config = greedy_config(model, tokenizer, max_new_tokens=7)
    assert (config.do_sample, config.num_beams, config.repetition_penalty) == (False, 1, 1.0)
    assert (config.temperature, config.top_p, config.top_k) == (None, None, None)
    assert config.eos_token_id == [im_end, endoftext] and config.max_new_tokens == 7
    assert model.generation_config.do_sample and model.generation_config.repetition_penalty == 1.5  # untouched


def test_generate_is_arg_max_decoding_and_warns_about_nothing(qwen_like):
    model, tokenizer, im_end, endoftext = qwen_like
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ignored temperature or top-p warning would fail here
        replies = generate(model, tokenizer, PROMPTS, max_new_tokens=12)
    expected = [manual_greedy(model, tokenizer, p, 12, {im_end, endoftext}) for p in PROMPTS]
    assert replies == expected


def test_a_reply_that_ends_at_endoftext_has_stopped(qwen_like):
    model, tokenizer, _, endoftext = qwen_like
    push = torch.zeros(model.config.vocab_size)
    push[endoftext] = 1e4  # the model now always says <|endoftext|>, which is not the tokenizer's eos
    handle = model.lm_head.register_forward_hook(lambda _module, _inputs, logits: logits + push)
    try:
        replies = generate(model, tokenizer, PROMPTS, max_new_tokens=5)
    finally:
        handle.remove()
    assert replies == [Generation("", stopped=True)] * len(PROMPTS)
