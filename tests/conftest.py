"""Test setup: put ``shared/`` on the path (unless ``posttrain`` is installed), share the cores among pytest-xdist's
workers, run the slow files first, grade each lab's sample class once, and build two small tokenizers.

``world_tokenizer`` is the tiny world's word-level tokenizer (the one the shipped models use); ``chatml_tokenizer``
is a byte-level BPE tokenizer with a simplified Qwen2 ChatML template, the style of the colab profile's models.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

if importlib.util.find_spec("posttrain") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker (``make test`` runs ``-n auto --dist loadfile``), use this worker's share of the
    cores: torch and every kernel or process a test starts get ``cores // workers`` threads. The tiny models run as
    fast on one thread as on two, and give the same numbers (docs/margins.md measures a one-thread platform)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files that hold slow tests first, in their order, then the rest: with ``--dist loadfile`` each file goes whole
    to one worker, and a file that runs notebooks for minutes must start early, not last."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@dataclass(frozen=True)
class GradedSampleClass:
    """A lab's sample class (``autograder.demo.make_sample_class``), graded in the sandbox on two workers."""

    lab: object  # autograder.course.Lab
    results: dict  # student -> autograder.grade.GradeResult

    def scores(self) -> dict[str, float | str]:
        """Each submission's score, or its status when it was not graded."""
        from autograder.demo import sample_class_scores

        return sample_class_scores(list(self.results.values()))

    def flags(self) -> dict[str, list]:
        """What the static screen and the kernel guard flagged, per submission (none for an honest class)."""
        return {student: result.flags for student, result in self.results.items()}

    def notebook_results(self) -> dict:
        """The results JSON the solution notebook (submission ``correct``) wrote while it was graded."""
        correct = self.results["correct"]
        name = f"results/{self.lab.name.split('_')[0]}.json"
        if name not in correct.kept:
            raise AssertionError(f"the graded solution wrote no {name} ({correct.status}: {correct.reason})")
        return json.loads(correct.kept[name])


@pytest.fixture(scope="session")
def sample_class(tmp_path_factory) -> Callable[[str], GradedSampleClass]:
    """``sample_class("02")``: lab 02's sample class, graded once per test process. Grading the ``correct``
    submission executes the solution notebook, and the results it writes are that lab's seed 0: each solution
    notebook runs once per test run (the lab's tests live in one file, so one worker)."""
    from autograder.course import REPO_ROOT, resolve_lab
    from autograder.demo import grade_sample_class, make_sample_class

    graded: dict[str, GradedSampleClass] = {}

    def grade(number: str) -> GradedSampleClass:
        if number not in graded:
            lab = resolve_lab(REPO_ROOT, number)
            work = tmp_path_factory.mktemp(f"sample_class_{number}")
            results = grade_sample_class(lab, make_sample_class(lab, work / "class"), work / "grading", workers=2)
            graded[number] = GradedSampleClass(lab, {r.student: r for r in results})
        return graded[number]

    return grade


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


@pytest.fixture
def tiny_gpt2_dir(tmp_path) -> Path:
    """A folder holding a tiny random GPT-2 (3 layers, Conv1D projections) and a byte-level BPE tokenizer with
    GPT-2's one special token as beginning and end of text: GPT-2 XL in miniature, for Lab 04's colab path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(["The Space Needle is located in the city of Seattle ."] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    import torch

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=3, n_head=4, n_positions=256)
    config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path


HUB_FIXTURES = Path(__file__).parent / "fixtures" / "hub"
# (hub id, config, split, data_files) of each request the colab code makes -> the local fixture that answers it.
# MMLU is read from its test file alone: a request for its whole `all` config is not served.
HUB_FILES = {
    ("openai/gsm8k", "main", "train", None): "gsm8k_main_train.jsonl",
    ("openai/gsm8k", "main", "test", None): "gsm8k_main_test.jsonl",
    ("walledai/AdvBench", None, "train", None): "advbench_train.jsonl",
    ("cais/mmlu", None, "test", (("test", "all/test-00000-of-00001.parquet"),)): "mmlu_all_test.jsonl",
    ("tatsu-lab/alpaca", None, "train", None): "alpaca_train.jsonl",
    ("azhx/counterfact", None, "test", None): "counterfact_test.jsonl",
    ("Salesforce/wikitext", "wikitext-2-raw-v1", "train", None): "wikitext_2_train.jsonl",
    # four of the shipped corpus' test utterances, resampled to 16 kHz, in LibriSpeech's row schema
    ("openslr/librispeech_asr", "clean", "test", None): "librispeech_clean_test.jsonl",
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
def tiny_wav2vec2_dir(tmp_path) -> Path:
    """A folder holding a tiny random ``Wav2Vec2ForCTC`` (16 kHz, group-normalised feature extractor, 2 layers of
    width 32) and a ``Wav2Vec2Processor`` with an upper-case character vocabulary (``|`` between words): the colab
    profile's facebook/wav2vec2-base-960h in miniature, for Lab 06's colab path."""
    import json

    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    vocab = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONISRHDLUCMFWYGPBVKXJQZ'"]
    (tmp_path / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), word_delimiter_token="|")
    features = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True)
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="group",
        pad_token_id=0,
    )
    Wav2Vec2ForCTC(config).save_pretrained(tmp_path)
    return tmp_path


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
