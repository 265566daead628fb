"""load_model on tiny random Llama and Qwen2 checkpoints saved to disk, name resolution and its errors.

Nothing here needs the shipped tiny-world models or the network: checkpoints are built at random in ``tmp_path``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from posttrain.core import models
from posttrain.core.evaluate import Generation, generate
from posttrain.core.models import TINY_MODELS, ModelLoadError, count_parameters, load_model, resolve_model
from posttrain.core.profiles import PROFILE_ENV, PROFILES

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def _save_random(path, model_class, config_class, tokenizer):
    """Save a randomly initialised tiny model and ``tokenizer`` to ``path``; return the model."""
    torch.manual_seed(0)
    config = config_class(
        vocab_size=len(tokenizer), max_position_embeddings=64, eos_token_id=tokenizer.eos_token_id, **SIZES
    )
    model = model_class(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


@pytest.fixture(params=["llama", "qwen2"])
def checkpoint(request, tmp_path, world_tokenizer, chatml_tokenizer):
    """(folder, model class, tokenizer saved with it): Llama with the tiny world's tokenizer, as the shipped models,
    and Qwen2 with a ChatML byte-level tokenizer, as the colab models (transformers 5 loads any qwen2 folder's
    tokenizer as a Qwen2Tokenizer, which would rebuild a word-level one as byte-level BPE)."""
    if request.param == "llama":
        model_class, config_class, tokenizer = LlamaForCausalLM, LlamaConfig, world_tokenizer
    else:
        model_class, config_class, tokenizer = Qwen2ForCausalLM, Qwen2Config, chatml_tokenizer
    _save_random(tmp_path / request.param, model_class, config_class, tokenizer)
    return tmp_path / request.param, model_class, tokenizer


def test_load_model_from_a_folder(checkpoint):
    folder, model_class, saved_tokenizer = checkpoint
    model, tokenizer = load_model(str(folder))
    assert type(model) is model_class
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert model.dtype == torch.float32
    assert next(model.parameters()).device == torch.device("cpu")
    assert not model.training
    assert tokenizer.pad_token is not None
    assert tokenizer.padding_side == "left"
    assert tokenizer.chat_template == saved_tokenizer.chat_template
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hello !"}], tokenize=False)
    assert (
        tokenizer(text, add_special_tokens=False)["input_ids"]
        == saved_tokenizer(text, add_special_tokens=False)["input_ids"]
    )
    replies = generate(model, tokenizer, ["hello !"], max_new_tokens=3)
    assert len(replies) == 1 and type(replies[0]) is Generation


def test_load_model_weights_round_trip(tmp_path, world_tokenizer):
    original = _save_random(tmp_path, LlamaForCausalLM, LlamaConfig, world_tokenizer)
    model, _ = load_model(tmp_path, device="cpu", dtype=torch.float64)
    assert model.dtype == torch.float64
    for (name, saved), (_, loaded) in zip(original.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(saved.double(), loaded), name
    assert count_parameters(model) == sum(p.numel() for p in original.parameters())
    for p in model.model.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == model.lm_head.weight.numel()


def test_missing_pad_token_falls_back_to_eos(tmp_path, world_tokenizer):
    world_tokenizer.pad_token = None
    _save_random(tmp_path, LlamaForCausalLM, LlamaConfig, world_tokenizer)
    _, tokenizer = load_model(str(tmp_path))
    assert tokenizer.pad_token == "<eos>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_tiny_names_resolve_under_the_shipped_folder(tmp_path, monkeypatch, world_tokenizer):
    monkeypatch.setattr(models, "SHIPPED_DIR", tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        load_model("tiny-chat")
    assert str(tmp_path / "tiny-chat") in str(info.value)
    assert "python -m posttrain.world build" in str(info.value)
    _save_random(tmp_path / "tiny-chat", LlamaForCausalLM, LlamaConfig, world_tokenizer)
    assert resolve_model("tiny-chat") == tmp_path / "tiny-chat"
    model, _ = load_model("tiny-chat")
    assert type(model) is LlamaForCausalLM


def test_tiny_profile_names_are_the_tiny_models():
    tiny = PROFILES["tiny"]
    assert {tiny.base_model, tiny.chat_model, tiny.cpt_model} == set(TINY_MODELS)


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-0.5B-Instruct", "gpt2", "org/name.v1-2_x"])
def test_hub_ids_resolve_to_themselves(name):
    assert resolve_model(name) == name


@pytest.mark.parametrize("relative", ["./no-such-model", "no/such/model", "~/no-such-posttrain-model", "a\\b"])
def test_missing_path_raises_file_not_found(relative):
    with pytest.raises(FileNotFoundError, match="no model folder at") as info:
        load_model(relative)
    assert relative in str(info.value)


def test_missing_absolute_path_names_the_path(tmp_path):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError) as info:
        load_model(str(missing))
    assert str(missing) in str(info.value)


def test_hub_model_offline_fails_fast_with_a_fix(monkeypatch):
    # HF_HUB_OFFLINE makes load_model read only the cache (no network retries); this name is in no cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []
    real_from_pretrained = models.AutoTokenizer.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_from_pretrained(*args, **kwargs)

    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", spy)
    name = "Qwen/posttrain-course-not-a-real-model"
    with pytest.raises(ModelLoadError) as info:
        load_model(name)
    assert calls == [{"local_files_only": True}]
    message = str(info.value)
    assert name in message
    assert f"{PROFILE_ENV}=tiny" in message
    assert "Hugging Face hub" in message
    assert isinstance(info.value, RuntimeError)
