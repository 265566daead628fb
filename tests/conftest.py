"""Test setup: put ``shared/`` on the path (unless ``posttrain`` is installed) and build two small tokenizers.

``world_tokenizer`` is the tiny world's word-level tokenizer (the one the shipped models use); ``chatml_tokenizer``
is a byte-level BPE tokenizer with a simplified Qwen2 ChatML template, the style of the colab profile's models.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("posttrain") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def world_tokenizer():
    """A fresh tiny-world tokenizer (cheap to build, so tests may modify it)."""
    from posttrain.world.build import make_tokenizer
    from posttrain.world.tiny import World

    return make_tokenizer(World())


@pytest.fixture(scope="session")
def chatml_tokenizer():
    """A 300-token byte-level BPE tokenizer with Qwen2's special tokens and a ChatML chat template (no pad token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(["user assistant hello ! hi there , how are you today ?"] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>", "<|endoftext|>"]
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


HUB_FIXTURES = Path(__file__).parent / "fixtures" / "hub"
# (hub id, config, split, data_files) of each request the colab code makes -> the local fixture that answers it.
# MMLU is read from its test file alone: a request for its whole `all` config is not served.
HUB_FILES = {
    ("openai/gsm8k", "main", "train", None): "gsm8k_main_train.jsonl",
    ("openai/gsm8k", "main", "test", None): "gsm8k_main_test.jsonl",
    ("walledai/AdvBench", None, "train", None): "advbench_train.jsonl",
    ("cais/mmlu", None, "test", (("test", "all/test-00000-of-00001.parquet"),)): "mmlu_all_test.jsonl",
    ("tatsu-lab/alpaca", None, "train", None): "alpaca_train.jsonl",
}


@pytest.fixture(scope="session")
def hub_loader(tmp_path_factory):
    """A stand-in for ``datasets.load_dataset`` that serves the hub fixtures (real schemas) as local JSON files."""
    import datasets

    cache = str(tmp_path_factory.mktemp("hf_cache"))

    def load(path, name=None, split=None, data_files=None):
        files = tuple(sorted(data_files.items())) if data_files else None
        data_file = str(HUB_FIXTURES / HUB_FILES[(path, name, split, files)])
        return datasets.load_dataset("json", data_files=data_file, split="train", cache_dir=cache)

    return load


@pytest.fixture
def tiny_qwen2_dir(tmp_path, chatml_tokenizer) -> Path:
    """A folder holding a tiny random Qwen2 (2 layers, hidden 32) and the ChatML tokenizer: the colab profile's
    Qwen2.5-0.5B-Instruct in miniature, loadable offline with ``posttrain.core.models.load_model``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(chatml_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=chatml_tokenizer.eos_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    chatml_tokenizer.save_pretrained(tmp_path)
    return tmp_path
