"""posttrain.methods.editing: causal tracing, the ROME update, the FT-L and IKE baselines and the edit metrics
(Meng et al. 2022, arXiv:2202.05262), on random tiny Llama and GPT-2 models and on the shipped tiny-chat."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from posttrain.core.edits import AttributePrompt, EditCase, EditRequest
from posttrain.core.models import load_model
from posttrain.methods import editing
from posttrain.world.tiny import World

REQUEST = EditRequest("{} works as a", "ada stone", target_new="pilot", target_true="baker")


def _random_model(arch: str, vocab_size: int):
    torch.manual_seed(0)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=64,
        )
        return LlamaForCausalLM(config).eval()
    config = GPT2Config(
        vocab_size=vocab_size, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(params=["llama", "gpt2"])
def random_model(request, world_tokenizer):
    return _random_model(request.param, len(world_tokenizer)), world_tokenizer


def test_rome_update_writes_the_value_and_keeps_keys_orthogonal_in_the_covariance_metric():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 10, generator=generator, dtype=torch.float64)
    basis = torch.randn(10, 10, generator=generator, dtype=torch.float64)
    covariance = basis @ basis.T + 0.1 * torch.eye(10, dtype=torch.float64)
    key, value = (
        torch.randn(10, generator=generator, dtype=torch.float64),
        torch.randn(6, generator=generator, dtype=torch.float64),
    )
    c_inv_key = torch.linalg.solve(covariance, key)
    new = editing.rome_update(weight, key, value, c_inv_key)
    torch.testing.assert_close(new @ key, value)
    other = torch.randn(10, generator=generator, dtype=torch.float64)
    other = other - (other @ c_inv_key) / (c_inv_key @ c_inv_key) * c_inv_key  # now otherᵀ C⁻¹ k* = 0
    torch.testing.assert_close(new @ other, weight @ other)
    assert torch.linalg.matrix_rank(new - weight) == 1


def test_restoring_the_final_state_restores_the_clean_probability(random_model):
    model, tokenizer = random_model
    ids = torch.tensor([editing.encode(tokenizer, REQUEST.text)])
    positions = editing.subject_positions(tokenizer, REQUEST.text, REQUEST.subject)
    answer = editing.target_ids(tokenizer, "baker")[0]
    trace = editing.causal_trace(model, ids, positions, answer, noise_scale=10.0)
    assert trace.effects.shape == (3, ids.shape[1])
    assert trace.p_clean != pytest.approx(trace.p_corrupt)
    assert trace.effects[-1, -1].item() == pytest.approx(trace.p_clean - trace.p_corrupt, abs=1e-6)
    assert trace.effects[:, : positions[0]].abs().max() < 1e-6  # states before the subject never saw the noise
    for kind in ("mlp", "attn"):
        windowed = editing.causal_trace(model, ids, positions, answer, kind=kind, window=3, noise_scale=10.0)
        assert windowed.effects.shape == trace.effects.shape and windowed.p_corrupt == pytest.approx(trace.p_corrupt)


def test_the_student_loop_matches_the_batched_trace(random_model):
    model, tokenizer = random_model
    ids = torch.tensor([editing.encode(tokenizer, REQUEST.text)])
    positions = editing.subject_positions(tokenizer, REQUEST.text, REQUEST.subject)
    answer = editing.target_ids(tokenizer, "baker")[0]
    std = editing.embedding_std(model, ids[0, positions].tolist())
    trace = editing.causal_trace(model, ids, positions, answer, kind="mlp", window=3, noise_std=std, seed=4)
    clean = editing.record_states(model, ids, "mlp")
    noise = editing.subject_noise(model, len(positions), 3.0 * std, seed=4)
    with editing.corrupted_subject(model, positions, noise):
        p_corrupt = editing.answer_probability(model, ids, answer)[0]
        for layer in range(3):
            for position in range(ids.shape[1]):
                with editing.restored(model, "mlp", editing.layer_window(layer, 3, 3), [position], clean):
                    effect = editing.answer_probability(model, ids, answer)[0] - p_corrupt
                assert effect.item() == pytest.approx(trace.effects[layer, position].item(), abs=1e-6)


def test_layer_window_is_centred_and_clipped():
    assert list(editing.layer_window(0, 1, 6)) == [0]
    assert list(editing.layer_window(3, 3, 6)) == [2, 3, 4]
    assert list(editing.layer_window(0, 4, 6)) == [0, 1]
    assert list(editing.layer_window(5, 10, 6)) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="at least one layer"):
        editing.layer_window(0, 0, 6)


def test_batched_target_logprobs_equal_one_prompt_at_a_time(random_model):
    model, tokenizer = random_model
    prompts = ["ada stone works as a", "bela frost is a", "hello"]
    targets = ["baker", "red", "pilot nurse"]
    batched = editing.target_logprobs(model, tokenizer, prompts, targets)
    alone = torch.cat(
        [editing.target_logprobs(model, tokenizer, [p], [t]) for p, t in zip(prompts, targets, strict=True)]
    )
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_rome_edits_llama_and_gpt2_and_the_edit_can_be_undone(random_model):
    model, tokenizer = random_model
    projection = editing.anatomy(model).projections[1]
    before = projection.weight.detach().clone()
    texts = ["ada stone paris baker red .", "bela frost works as a nurse .", "what is 2 plus 3 ?"] * 4
    covariance = editing.key_covariance(model, tokenizer, texts, layer=1)
    # A random model's MLP outputs are tiny (init std 0.02), so the reference's decay ‖δ‖ / ‖v₀‖² and clamp 4‖v₀‖,
    # scaled for a trained model's large activations, would pin δ near 0: switch them off here.
    config = editing.RomeConfig(
        layer=1, steps=60, lr=0.5, weight_decay=0.0, clamp_norm=1e4, kl_prompts=("{} lives in",)
    )
    # A random model's attention spreads a subject's state thinly over later tokens, so the tested request ends at the
    # subject: its MLP output then reaches the logits directly (the trained tiny-chat edits "{} works as a").
    request = EditRequest("{}", "ada stone", target_new="pilot", target_true="baker")
    edit = editing.rome_edit(model, tokenizer, request, config, covariance, prefixes=("{}", "hello . {}"))
    assert torch.linalg.matrix_rank(edit.delta) == 1
    torch.testing.assert_close(editing.projection_output(projection, edit.key), edit.value, atol=1e-3, rtol=1e-3)
    assert editing.prefers(model, tokenizer, [request.text], "pilot", "baker") == [True]
    editing.undo_edit(model, edit)
    # float32 round-off of adding and removing ΔW is relative to ΔW
    torch.testing.assert_close(projection.weight.detach(), before, atol=1e-6 * float(edit.delta.abs().max()), rtol=0)


def test_ft_l_stays_within_its_linf_ball(random_model):
    model, tokenizer = random_model
    projection = editing.anatomy(model).projections[0]
    before = projection.weight.detach().clone()
    edit = editing.finetune_layer_edit(model, tokenizer, REQUEST, layer=0, steps=5, lr=1e-2, linf=1e-3)
    change = projection.weight.detach() - before
    assert change.abs().max() <= 1e-3 + 1e-7 and change.abs().max() > 5e-4
    assert all(p.requires_grad for p in model.parameters())  # the flags are given back
    editing.undo_edit(model, edit)
    torch.testing.assert_close(projection.weight.detach(), before, atol=1e-6, rtol=0)


def test_bad_input_raises_a_clear_error(random_model):
    model, tokenizer = random_model
    with pytest.raises(ValueError, match="is not in the prompt"):
        editing.subject_positions(tokenizer, "bela frost works as a", "ada stone")
    with pytest.raises(ValueError, match="out of range: this model has layers 0 to 2"):
        editing.rome_edit(model, tokenizer, REQUEST, editing.RomeConfig(layer=3), torch.eye(64))
    with pytest.raises(ValueError, match="do not lie within"):
        editing.causal_trace(model, torch.tensor([[1, 2, 3]]), [5], 0)
    with pytest.raises(ValueError, match="unknown state kind"):
        editing.state_module(model, "residuals", 0)
    with pytest.raises(ValueError, match="needs a new object"):
        EditRequest("{} works as a", "ada stone", "baker", "baker")
    with pytest.raises(ValueError, match="exactly one"):
        EditRequest("works as a", "ada stone", "pilot", "baker")
    with pytest.raises(ValueError, match="neither Llama-style"):
        editing.anatomy(torch.nn.Linear(2, 2))


def test_n_gram_entropy_matches_the_definition():
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))  # bigrams of "a b a b": ab ab ba
    h3 = 1.0  # trigrams: aba bab
    assert editing.n_gram_entropy(["a b a b"]) == pytest.approx((2 / 3 * h2 + 4 / 3 * h3) / 2)
    assert editing.n_gram_entropy(["a a a a a"]) == 0.0
    assert editing.n_gram_entropy(["x"]) == 0.0
    with pytest.raises(ValueError):
        editing.n_gram_entropy([])


def test_fact_scores_judge_each_prompt_of_a_case(random_model):
    model, tokenizer = random_model
    case = EditCase(
        REQUEST,
        paraphrases=("ada stone earns a living as a",),
        neighbours=("bela frost works as a", "cara cask works as a"),
        attributes=(AttributePrompt("ada stone lives in", "paris"),),
    )
    scores = editing.fact_scores(model, tokenizer, case)
    assert {k: len(v) for k, v in scores.items()} == {
        "efficacy": 1,
        "paraphrase": 1,
        "neighbourhood": 2,
        "attributes": 1,
    }
    assert all(isinstance(x, bool) for v in scores.values() for x in v)


def test_tiny_chat_recalls_jobs_in_the_subjects_first_mlp():
    """The edited relation's site: restoring layer 0's MLP output at the subject's last token recovers more of the
    job than restoring it at the final token (measured 0.70 vs 0.40 over 39 prompts); for city it is the reverse."""
    model, tokenizer = load_model("tiny-chat", device="cpu")
    people = World().people[:60]
    jobs, _ = editing.average_trace(
        model, tokenizer, [(f"{p.name} works as a", p.job, p.name) for p in people], "mlp", min_drop=0.3
    )
    cities, _ = editing.average_trace(
        model, tokenizer, [(f"{p.name} lives in", p.city, p.name) for p in people], "mlp", min_drop=0.3
    )
    subject_last = 2  # <bos> first last works as a
    assert jobs[0, subject_last] >= 0.5 and jobs[0, subject_last] > jobs[0, -1] + 0.2
    assert cities[0, subject_last] < cities[0, -1]


def test_token_roles_follow_the_paper_and_role_averages_skip_empty_roles():
    # <bos> the big apple is red : subject "big apple" at 2-3, then "is", "red", and the last token ":"
    assert editing.token_roles(7, [2, 3]) == [None, None, 0, 2, 3, 4, 5]
    assert editing.token_roles(5, [1, 2, 3]) == [None, 0, 1, 2, 5]  # the last token right after the subject
    effects = torch.arange(14, dtype=torch.float32).reshape(2, 7)
    roles = editing.by_role(effects, [2, 3])
    assert roles.shape == (2, len(editing.TOKEN_ROLES))
    assert roles[0].tolist()[0] == 2 and roles[0].tolist()[2:] == [3, 4, 5, 6]
    assert math.isnan(roles[0, 1])  # a two-token subject has no middle tokens


def test_traces_of_prompts_of_different_lengths_average_by_role(random_model):
    model, tokenizer = random_model
    prompts = [("ada stone works as a", "baker", "ada stone"), ("bela frost is a", "pilot", "bela frost")]
    with pytest.raises(ValueError, match="roles=True"):
        editing.average_trace(model, tokenizer, prompts, min_drop=-1.0)
    effects, used = editing.average_trace(model, tokenizer, prompts, "mlp", min_drop=-1.0, roles=True)
    assert used == 2 and effects.shape == (3, len(editing.TOKEN_ROLES))


def test_continuations_are_greedy_and_do_not_repeat_the_prompt(random_model):
    model, tokenizer = random_model
    prompts = ["ada stone", "bela frost works as a"]
    texts = editing.continue_text(model, tokenizer, prompts, n_tokens=5)
    assert len(texts) == 2 and texts == editing.continue_text(model, tokenizer, prompts, n_tokens=5)
    alone = editing.continue_text(model, tokenizer, prompts[:1], n_tokens=5)
    assert alone == texts[:1]  # left padding does not change a shorter prompt's continuation
    assert all(len(t.split()) <= 5 for t in texts) and editing.continue_text(model, tokenizer, [], 5) == []
