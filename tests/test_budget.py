"""Every lab's colab plan fits a T4 by its own estimate, the estimate counts what it claims to, and
docs/colab_budget.md shows the current numbers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from autograder.budget import lab_budgets, markdown
from autograder.course import all_labs
from posttrain.core.budget import (
    QWEN2_5_0_5B,
    T4,
    ModelShape,
    TrainingRun,
    activation_bytes_per_token,
    lora_parameters,
    peak_memory,
)
from posttrain.methods.lora import inject_lora
from posttrain.studies import finetune_and_forget

ROOT = Path(__file__).resolve().parents[1]


def test_every_colab_plan_fits_a_t4_by_its_own_estimate():
    rows = lab_budgets(all_labs(ROOT))
    assert [row["lab"] for row in rows] == [lab.name for lab in all_labs(ROOT)]
    for row in rows:
        assert row["peak_gb"] <= T4.memory_gb, f"{row['lab']} needs {row['peak_gb']} GB on a T4: {row['peaks']}"


def test_the_former_lab_01_micro_batch_would_not_have_fitted():
    former = replace(finetune_and_forget.PLANS["colab"], batch_size=8, grad_accum=4)
    (run, _) = finetune_and_forget.colab_budget(former).runs
    assert peak_memory(QWEN2_5_0_5B, run)["total"] > T4.memory_gb


def test_full_fine_tuning_costs_18_bytes_per_parameter_before_activations():
    run = TrainingRun("x", steps=1, micro_batch=0, grad_accum=1, seq_len=0, mean_tokens=0)
    assert peak_memory(QWEN2_5_0_5B, run)["total"] == round(18 * QWEN2_5_0_5B.parameters / 1e9, 2)
    frozen = replace(run, trainable=0, extra_copies=2)  # weights, 16-bit copies and two float32 copies
    assert peak_memory(QWEN2_5_0_5B, frozen)["total"] == round(14 * QWEN2_5_0_5B.parameters / 1e9, 2)
    one_token = replace(run, micro_batch=1, seq_len=1)
    extra = peak_memory(QWEN2_5_0_5B, one_token)["total"] - peak_memory(QWEN2_5_0_5B, run)["total"]
    assert abs(extra * 1e9 - activation_bytes_per_token(QWEN2_5_0_5B) - 12 * QWEN2_5_0_5B.vocab) < 0.01e9


def test_the_lora_count_matches_our_lora_on_a_qwen2_of_the_same_shape():
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = Qwen2ForCausalLM(config)
    before = sum(p.numel() for p in model.parameters())
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    inject_lora(model, targets, r=4, alpha=8, seed=0)
    added = sum(p.numel() for p in model.parameters()) - before
    shape = ModelShape("tiny qwen2", before, 3, 32, 96, 2 * 8, 64)  # 2 key/value heads of 32 / 4 = 8
    assert lora_parameters(shape, 4) == added


def test_the_budget_page_shows_the_current_estimates():
    table = markdown(lab_budgets(all_labs(ROOT)))
    assert table in (ROOT / "docs" / "colab_budget.md").read_text(), (
        "docs/colab_budget.md is stale: paste the output of `python -m autograder budget`"
    )


def test_the_gpt2_xl_shape_counts_gpt2_xl_s_parameters():
    from transformers import GPT2Config, GPT2LMHeadModel

    from posttrain.core.budget import GPT2_XL

    with torch.device("meta"):  # no memory: only the shapes
        model = GPT2LMHeadModel(GPT2Config(n_embd=1600, n_layer=48, n_head=25))
    assert sum(p.numel() for p in model.parameters()) == GPT2_XL.parameters
    assert (GPT2_XL.layers, GPT2_XL.hidden, GPT2_XL.intermediate, GPT2_XL.vocab) == (48, 1600, 6400, 50257)


def test_the_wav2vec2_shape_counts_wav2vec2_base_and_suta_s_parameters():
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from posttrain.core.budget import WAV2VEC2_BASE
    from posttrain.methods.tta import suta_parameters
    from posttrain.studies.test_time_training import colab_budget

    model = Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=32))  # wav2vec2-base-960h's architecture, random weights
    assert sum(p.numel() for p in model.parameters()) == WAV2VEC2_BASE.parameters
    (run,) = colab_budget().runs
    assert sum(p.numel() for p in suta_parameters(model).values()) == run.trainable
