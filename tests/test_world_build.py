"""The shipped tiny-world models are good at their skills, and the build pipeline itself works."""

from __future__ import annotations

import pytest
import torch

from posttrain.core.models import SHIPPED_DIR, load_model
from posttrain.methods.editing import average_trace
from posttrain.world.build import BuildConfig, build_world_models, make_tokenizer, skill_table
from posttrain.world.tiny import World, WorldSpec


@pytest.fixture(scope="module")
def table() -> dict[str, dict[str, float]]:
    return skill_table(SHIPPED_DIR)


def test_tiny_chat_masters_its_chat_skills(table):
    chat = table["tiny-chat"]
    for skill in ("fact", "json", "refusal", "chat"):
        assert chat[skill] >= 0.9, (skill, chat[skill])


def test_tiny_chat_restates_hints_about_people_it_never_saw(table):
    # what self-distillation (Lab 03) needs: rewriting a reference answer the model could not know itself
    assert table["tiny-chat"]["restate_new_people"] >= 0.9
    assert table["tiny-chat"]["cpt_facts_chat"] <= 0.3  # ... while it does not know those people without a hint


def test_tiny_chat_is_imperfect_on_what_it_was_not_shown(table):
    # held-out people are answered from pre-training knowledge: mostly, not always (room for 0->1 flips)
    assert 0.5 <= table["tiny-chat"]["fact_held_out"] < 1.0


def test_base_models_know_facts_but_do_not_chat_or_refuse(table):
    for name in ("tiny-base", "tiny-base-cpt"):
        assert table[name]["base_knowledge"] >= 0.9, name
        assert table[name]["refusal"] <= 0.1, name
        assert table[name]["fact"] <= 0.2, name


def test_cpt_teaches_knowledge_only_cpt_has(table):
    assert table["tiny-base-cpt"]["cpt_knowledge"] >= 0.8
    assert table["tiny-base"]["cpt_knowledge"] <= 0.3
    assert table["tiny-chat"]["cpt_facts_chat"] <= 0.3


def test_build_pipeline_saves_loadable_deterministic_models(tmp_path):
    spec = WorldSpec(n_people=24, n_cpt_people=8, n_new_people=8)
    build = BuildConfig(hidden_size=32, intermediate_size=64, num_layers=2, base_steps=6, chat_steps=4, cpt_steps=2)
    for run in ("a", "b"):
        build_world_models(tmp_path / run, build, spec)
    for name in ("tiny-base", "tiny-chat", "tiny-base-cpt"):
        model_a, tokenizer = load_model(str(tmp_path / "a" / name), device="cpu")
        model_b, _ = load_model(str(tmp_path / "b" / name), device="cpu")
        for (key, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, msg=f"{name}.{key} differs between two builds with one seed")
        assert tokenizer.chat_template and tokenizer.eos_token == "<eos>"
        assert model_a.config.num_hidden_layers == 2 and model_a.config.vocab_size == len(tokenizer)


def test_tiny_base_recalls_jobs_at_the_subject_then_the_last_token():
    """Causal tracing (arXiv:2202.05262) finds the textbook picture for the job relation: restoring the
    subject's last token in the first layers brings the fact back, and the last token takes over later."""
    model, tokenizer = load_model("tiny-base", device="cpu")
    world = World()
    prompts = [(f"{p.name} works as a", p.job, p.name) for p in world.people[:40]]
    effects, used = average_trace(model, tokenizer, prompts)
    subject_last, last = 2, effects.shape[1] - 1  # <bos> first last works as a
    assert used >= 20
    assert effects[0, subject_last] >= 0.5
    assert effects[0, subject_last] > effects[0, last]
    assert effects[-1, last] >= 0.9 and effects[-1, subject_last] <= 0.05


def test_shipped_tokenizer_is_the_one_the_world_builds():
    _, shipped = load_model("tiny-chat", device="cpu")
    assert shipped.get_vocab() == make_tokenizer(World()).get_vocab()
