"""The colab code paths, offline. Lab 01: a tiny random Qwen2 with a ChatML tokenizer stands in for
Qwen2.5-0.5B-Instruct and local fixtures in the real schemas stand in for GSM8K, AdvBench and MMLU; everything else
(loading, chat template, masking, training, generation, scoring, multiple choice and the sample-wise table) is the
code the notebook runs on a Colab GPU. Lab 04: a tiny random GPT-2 with a byte-level BPE tokenizer stands in for
GPT-2 XL, fixtures in CounterFact's and WikiText's schemas for the hub data. Lab 06: a tiny random Wav2Vec2ForCTC with
a Wav2Vec2Processor stands in for wav2vec2-base-960h, a fixture in LibriSpeech's schema for test-clean."""

from __future__ import annotations

import pytest
import torch

from posttrain.core.forgetting import sample_wise_table
from posttrain.core.models import load_model
from posttrain.core.profiles import PROFILES
from posttrain.core.train import TrainConfig
from posttrain.studies.finetune_and_forget import finetune_with_snapshots
from posttrain.world.benchmarks import forgetting_benchmark


def test_lab01_machinery_runs_on_the_colab_code_path(tiny_qwen2_dir, hub_loader):
    model, tokenizer = load_model(str(tiny_qwen2_dir), device="cpu", dtype=torch.float32)

    bench = forgetting_benchmark(PROFILES["colab"], n_per_skill=3, seed=0, n_train=4, loader=hub_loader)
    assert set(bench.old_skills) == {"json_open", "refusal_open", "chat"}
    assert set(bench.multiple_choice) == {"mmlu"} and bench.k == 4
    assert all(item.skill == "gsm8k" for item in bench.new_task_eval)

    before = [p.detach().clone() for p in model.parameters()]
    train_config = TrainConfig(steps=2, lr=1e-3, batch_size=2, grad_accum=2, warmup_steps=1, progress=False)
    snapshots = finetune_with_snapshots(model, tokenizer, bench, train_config, max_new_tokens=8)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), "no weight moved"

    table = sample_wise_table(snapshots[0], snapshots[-1], k=bench.k)
    assert set(table) == {"new", "json_open", "refusal_open", "chat", "mc:mmlu"}
    for row in table.values():
        assert 0.0 <= row["forgetting"] <= 1.0 and 0.0 <= row["backward_transfer"] <= 1.0
    assert table["mc:mmlu"]["forgetting_adjusted"] is not None


def test_lab04_runs_on_the_colab_code_path(tiny_gpt2_dir, hub_loader):
    """GPT-2 XL's path in miniature: CounterFact records and WikiText from the fixtures, the Space Needle traced by
    token role, ROME / FT-L / IKE on a Conv1D model and the sequential curve without the tiny world's chat skills."""
    import dataclasses

    from posttrain.methods.editing import TOKEN_ROLES, RomeConfig
    from posttrain.studies import causal_tracing_and_rome as study

    plan = dataclasses.replace(
        study.PLANS["colab"],
        model=str(tiny_gpt2_dir),
        rome=RomeConfig(layer=1, steps=3),
        ftl_steps=2,
        n_edits=2,
        n_sequential=2,
        n_trace_prompts=2,
        trace_window=2,
        trace_min_drop=-1.0,  # a random model barely reacts to the noise: keep every traced prompt
        n_prefixes=2,
        prefix_length=3,
        covariance_texts=4,
        fluency_tokens=4,
    )
    results = study.run(PROFILES["colab"], plan, seed=0, loader=hub_loader)
    trace = results["traces"]["counterfact"]
    assert trace["tokens"] == list(TOKEN_ROLES) and trace["n_prompts"] == 3  # the Space Needle and two records
    assert len(trace["mlp"]) == 3 and len(trace["mlp"][0]) == len(TOKEN_ROLES)
    assert set(results["editors"]) == {"ROME", "FT-L", "IKE"}
    rome = results["editors"]["ROME"]
    assert rome["portability"] is None and rome["attributes_before"] is None  # CounterFact has neither
    assert 0.0 <= rome["efficacy"] <= 1.0 and 0.0 <= rome["neighbourhood_after"] <= 1.0
    assert [row["edits"] for row in results["sequential"]] == [0, 1, 2]
    assert "old_skills" not in results["sequential"][-1]


def test_counterfact_records_become_edit_cases(hub_loader):
    from posttrain.world.hub import load_counterfact, load_wikitext

    cases = load_counterfact(6, seed=0, loader=hub_loader)
    needle = next(c for c in cases if c.request.subject == "The Space Needle")
    assert needle.request.text == "The Space Needle is located in the city of"
    assert (needle.request.target_new, needle.request.target_true, needle.request.relation) == (
        "Paris",
        "Seattle",
        "P131",
    )
    assert len(needle.paraphrases) == 2 and len(needle.neighbours) == 2 and needle.generation_prompts
    assert needle.attributes == () and needle.portability == ()
    assert load_counterfact(3, seed=1, loader=hub_loader) == load_counterfact(3, seed=1, loader=hub_loader)
    texts = load_wikitext(4, seed=0, loader=hub_loader)
    assert len(texts) == 4 and all(len(t) >= 100 and not t.startswith("=") for t in texts)
    with pytest.raises(ValueError, match="WikiText paragraphs"):
        load_wikitext(50, seed=0, loader=hub_loader)


def test_lab05_chat_vector_runs_on_the_colab_code_path(tiny_qwen2_dir, hub_loader, tmp_path):
    """Qwen2.5-0.5B, its Instruct model and Qwen2.5-Coder-0.5B in miniature: three tiny random Qwen2 checkpoints of
    one architecture and tokenizer; the chat vector is added and scored on Lab 01's colab benchmark."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.studies.task_vectors_and_merging import colab_chat_vector

    folders = {"base": str(tiny_qwen2_dir)}
    for i, role in enumerate(("chat", "cpt"), start=1):
        model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
        torch.manual_seed(i)
        model.load_state_dict({k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()})
        model.save_pretrained(tmp_path / role)
        AutoTokenizer.from_pretrained(tiny_qwen2_dir).save_pretrained(tmp_path / role)
        folders[role] = str(tmp_path / role)
    rows = colab_chat_vector(folders, scales=(1.0,), n_per_skill=2, loader=hub_loader, device="cpu")
    assert set(rows) == {"chat", "cpt", "cpt + 1.0 chat vector"}
    assert set(rows["chat"]) == {"gsm8k", "json_open", "refusal_open", "chat"}
    assert all(0.0 <= v <= 1.0 for row in rows.values() for v in row.values())


def test_lab06_suta_runs_on_the_colab_code_path(tiny_wav2vec2_dir, hub_loader):
    """facebook/wav2vec2-base-960h's path in miniature: the processor's vocabulary and sampling rate, LibriSpeech rows
    from the fixture, SUTA's waveform noise of a given std, and the table the notebook prints."""
    import dataclasses

    from posttrain.studies import test_time_training as study
    from posttrain.world import speech

    recogniser = speech.load_recogniser(tiny_wav2vec2_dir)
    assert recogniser.sample_rate == 16000
    # repeats merged, blanks dropped, a blank between repeats keeps both, "|" between words; lower-cased for WER
    assert recogniser.decode([0, 12, 12, 0, 5, 4, 9]) == "re n" and recogniser.decode([12, 0, 12]) == "rr"

    plan = dataclasses.replace(study.SPEECH_PLANS["colab"], recogniser=str(tiny_wav2vec2_dir), utterances=3, steps=2)
    assert plan.noise == "std" and plan.levels == (0.0, 0.005, 0.01)
    texts, audios = study.speech_test_set(plan, 0, hub_loader)
    assert len(texts) == 3 and all(t == t.lower() for t in texts) and all(a.dtype.name == "float32" for a in audios)

    table = study.suta_table(0, plan, loader=hub_loader)
    assert table["utterances"] == 3 and set(table["wer"]) == {"clean", "0", "0.005", "0.01"}
    for row in (table["wer"][level] for level in ("0", "0.005", "0.01")):
        assert {"unadapted", "suta", "entropy_only", "relative_gain"} <= set(row)
        assert all(row[k] >= 0.0 for k in ("unadapted", "suta", "entropy_only"))
