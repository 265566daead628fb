"""``posttrain.methods.merging``: each step equals its paper's formula on hand-made tensors; the streaming path, the
in-memory path and the YAML command give the same tensors; mergekit (a test-only reference) agrees where it should
and differs, in the documented way, where it should; bad inputs raise errors that name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from posttrain.methods import merging
from posttrain.methods.merging import (
    Merge,
    MergeConfigError,
    agreement_mask,
    dare_drop,
    disjoint_mean,
    elect_sign,
    magnitude_trim,
    merge_checkpoints,
    merge_state_dicts,
    merge_tensor,
    parse_config,
    task_vector,
)


# --------------------------------------------------------------------------- the papers' formulas, by hand
def test_task_vector_is_the_difference_and_negation_subtracts_it():
    base = {"w": torch.tensor([1.0, 2.0, 3.0])}
    tuned = {"w": torch.tensor([1.5, 2.0, 2.0])}
    torch.testing.assert_close(task_vector(tuned, base)["w"], torch.tensor([0.5, 0.0, -1.0]))
    negated = merge_tensor(base["w"], [tuned["w"]], Merge("task_arithmetic", weights=(-1.0,), scale=2.0))
    torch.testing.assert_close(negated, torch.tensor([0.0, 2.0, 5.0]))  # θ_pre − λτ with λ = 2


def test_magnitude_trim_keeps_the_largest_entries():
    delta = torch.tensor([[0.1, -3.0, 0.5], [2.0, -0.2, 0.0]])
    trimmed = magnitude_trim(delta, 0.5)
    torch.testing.assert_close(trimmed, torch.tensor([[0.0, -3.0, 0.5], [2.0, 0.0, 0.0]]))
    assert int((magnitude_trim(torch.randn(101), 0.5) != 0).sum()) == 50  # int(density · numel)
    assert magnitude_trim(delta, 1.0) is delta


def test_dare_drops_at_rate_p_and_rescales_by_one_over_one_minus_p():
    delta = torch.randn(20_000)
    generator = torch.Generator().manual_seed(3)
    dropped = dare_drop(delta, 0.1, generator)
    kept = dropped != 0
    assert 0.09 < kept.float().mean() < 0.11
    torch.testing.assert_close(dropped[kept], delta[kept] / 0.1)
    again = dare_drop(delta, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(dropped, again)  # a fixed seed is a fixed mask
    # unbiased: the mean over many masks is the task vector itself
    small = torch.tensor([1.0, -2.0, 0.5])
    mean = torch.stack([dare_drop(small, 0.5, torch.Generator().manual_seed(s)) for s in range(4000)]).mean(0)
    torch.testing.assert_close(mean, small, atol=0.1, rtol=0.0)


def test_ties_elects_the_sign_of_the_total_mass_and_averages_the_agreeing_entries():
    # Three trimmed task vectors over four entries (the shape of Yadav et al.'s Figure 2).
    deltas = torch.tensor([[0.5, -0.2, 0.0, 0.3], [0.4, 0.6, -0.1, -0.4], [-0.3, 0.1, 0.0, -0.1]])
    sign = elect_sign(deltas)
    torch.testing.assert_close(sign, torch.tensor([1.0, 1.0, -1.0, -1.0]))
    mask = agreement_mask(deltas, sign)
    assert mask.tolist() == [[True, False, False, False], [True, True, True, True], [False, True, False, True]]
    merged = disjoint_mean(deltas, sign, torch.ones(3, 1))
    torch.testing.assert_close(merged, torch.tensor([0.45, 0.35, -0.1, -0.25]))
    # weighted: Σ_agree w τ / Σ_agree w, the deltas already weighted (mergekit's normalised TIES)
    w = torch.tensor([[2.0], [1.0], [1.0]])
    torch.testing.assert_close(disjoint_mean(deltas * w, elect_sign(deltas * w), w)[0], torch.tensor((1.0 + 0.4) / 3))
    # an entry no task vector moves stays at 0 (not 0 / 0)
    zero = torch.zeros(2, 1)
    torch.testing.assert_close(disjoint_mean(zero, elect_sign(zero), torch.ones(2, 1)), zero[0])


def test_ties_merge_is_trim_elect_disjoint_mean_then_lambda():
    base = torch.zeros(4)
    tuned = [torch.tensor([0.5, -0.2, 0.01, 0.3]), torch.tensor([0.35, 0.6, -0.1, -0.4])]
    merged = merge_tensor(base, tuned, Merge("ties", densities=(0.5, 0.5), scale=2.0))
    # trim to 2 of 4: [0.5, 0, 0, 0.3] and [0, 0.6, 0, -0.4]; elected signs +, +, (0 → +), −
    torch.testing.assert_close(merged, 2.0 * torch.tensor([0.5, 0.6, 0.0, -0.4]))


def test_linear_is_the_average_of_the_models():
    base = torch.tensor([1.0, 1.0])
    tuned = [torch.tensor([3.0, 1.0]), torch.tensor([1.0, 5.0])]
    torch.testing.assert_close(merge_tensor(base, tuned, Merge("linear")), torch.tensor([2.0, 3.0]))
    weighted = merge_tensor(base, tuned, Merge("linear", weights=(3.0, 1.0)))
    torch.testing.assert_close(weighted, torch.tensor([2.5, 2.0]))


def test_merge_keeps_the_base_dtype():
    base = torch.zeros(3, dtype=torch.float16)
    out = merge_tensor(base, [torch.ones(3, dtype=torch.float16)], Merge(scale=0.5))
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, torch.full((3,), 0.5, dtype=torch.float16))


def test_bad_merges_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="unknown merge method 'slerp'"):
        Merge("slerp")
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
        Merge("ties", densities=(0.0,))
    with pytest.raises(ValueError, match="one weight and one density per model"):
        merge_tensor(torch.zeros(2), [torch.ones(2)] * 2, Merge(weights=(1.0,)))
    small, large = {"embed_tokens.weight": torch.zeros(10, 4)}, {"embed_tokens.weight": torch.zeros(12, 4)}
    with pytest.raises(ValueError, match=r"vocabularies differ.*resize_token_embeddings"):
        task_vector(large, small)
    with pytest.raises(ValueError, match="missing"):
        task_vector({}, small)


# --------------------------------------------------------------------------- checkpoints: streaming, YAML, mergekit
def _tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny random Llama base and two fine-tunes of it (the base plus different random task vectors)."""
    root = tmp_path_factory.mktemp("merging")
    base = _tiny_llama(0)
    base.save_pretrained(root / "base")
    folders = {"base": root / "base"}
    for i in (1, 2):
        torch.manual_seed(i)
        tuned = _tiny_llama(0)
        tuned.load_state_dict({k: v + 0.02 * torch.randn_like(v) for k, v in base.state_dict().items()})
        tuned.save_pretrained(root / f"ft{i}")
        folders[f"ft{i}"] = root / f"ft{i}"
    return folders


def _state(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if not index.exists():
        return load_file(folder / "model.safetensors")
    state = {}
    for shard in sorted(folder.glob("model-*.safetensors")):
        state |= load_file(shard)
    return state


MERGES = [
    Merge("task_arithmetic", weights=(0.7, 0.4)),
    Merge("ties", densities=(0.3, 0.5), scale=1.2),
    Merge("dare_ties", weights=(1.0, 0.5), densities=(0.4, 0.4), seed=5),
    Merge("linear", weights=(2.0, 1.0)),
]


@pytest.mark.parametrize("merge", MERGES, ids=lambda m: m.method)
def test_streaming_merge_equals_the_in_memory_merge(checkpoints, tmp_path, merge):
    before = {name: (checkpoints[name] / "model.safetensors").read_bytes() for name in checkpoints}
    out = merge_checkpoints(checkpoints["base"], [checkpoints["ft1"], checkpoints["ft2"]], merge, tmp_path / "out")
    expected = merge_state_dicts(
        _state(checkpoints["base"]), [_state(checkpoints["ft1"]), _state(checkpoints["ft2"])], merge
    )
    got = _state(out)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    for name, content in before.items():  # the result is written over the base's tensors in memory, not on disk
        assert (checkpoints[name] / "model.safetensors").read_bytes() == content, name


def test_streaming_merge_writes_a_sharded_checkpoint_that_loads(checkpoints, tmp_path):
    merge = Merge("ties", densities=(0.5, 0.5))
    sharded = merge_checkpoints(
        checkpoints["base"], [checkpoints["ft1"], checkpoints["ft2"]], merge, tmp_path / "s", shard_bytes=20_000
    )
    assert len(list(sharded.glob("model-*.safetensors"))) > 2 and (sharded / "model.safetensors.index.json").exists()
    model = LlamaForCausalLM.from_pretrained(sharded)
    whole = merge_state_dicts(
        _state(checkpoints["base"]), [_state(checkpoints["ft1"]), _state(checkpoints["ft2"])], merge
    )
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, whole[name]), name
    # and a sharded checkpoint is itself an input
    again = merge_checkpoints(sharded, [checkpoints["ft1"]], Merge(scale=0.0), tmp_path / "again")
    assert all(torch.equal(t, whole[n]) for n, t in _state(again).items())


def _yaml(checkpoints: dict[str, Path], method: str, models: list[dict], **extra) -> str:
    config = {"merge_method": method, "base_model": str(checkpoints["base"]), "models": models, **extra}
    return yaml.safe_dump(config)


def test_the_command_line_gives_the_python_call_s_tensors(checkpoints, tmp_path, capsys):
    models = [
        {"model": str(checkpoints["ft1"]), "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": str(checkpoints["ft2"]), "parameters": {"weight": 0.5, "density": 0.3}},
    ]
    config = tmp_path / "ties.yaml"
    config.write_text(_yaml(checkpoints, "ties", models, parameters={"lambda": 1.5}, dtype="float16"))
    merging.main([str(config), "--out", str(tmp_path / "cli")])
    assert "merged model written to" in capsys.readouterr().out
    merge = Merge("ties", weights=(1.0, 0.5), densities=(0.5, 0.3), scale=1.5)
    expected = merge_state_dicts(
        _state(checkpoints["base"]), [_state(checkpoints["ft1"]), _state(checkpoints["ft2"])], merge
    )
    got = _state(tmp_path / "cli")
    for name in expected:
        assert got[name].dtype == torch.float16
        assert torch.equal(got[name], expected[name].to(torch.float16)), name
    assert (tmp_path / "cli" / "config.json").exists()


def test_relative_model_paths_are_read_from_the_config_s_folder(checkpoints, tmp_path):
    config = checkpoints["base"].parent / "relative.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "task_arithmetic",
                "base_model": "base",
                "models": [{"model": "ft1", "parameters": {"weight": 1.0}}],
            }
        )
    )
    out = merging.merge_from_config(config, tmp_path / "rel")
    assert all(torch.equal(t, _state(checkpoints["ft1"])[n]) for n, t in _state(out).items())


BAD_CONFIGS = {
    "not yaml": ("merge_method: [ties", "not valid YAML"),
    "a list": ("- ties", "YAML mapping"),
    "unsupported method": ("merge_method: slerp\nbase_model: b\nmodels: [{model: a}]", "'slerp' is not supported"),
    "slices": ("merge_method: ties\nslices: []", "'slices' is not supported"),
    "unknown key": ("merge_method: ties\nbase_model: b\nmodels: [{model: a}]\nfoo: 1", r"unknown keys \['foo'\]"),
    "no models": ("merge_method: ties\nbase_model: b", "non-empty list"),
    "no base": ("merge_method: ties\nmodels: [{model: a, parameters: {weight: 1}}]", "needs a base_model"),
    "no weight": ("merge_method: ties\nbase_model: b\nmodels: [{model: a}]", "needs a `weight`"),
    "gradient": (
        "merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: [0, 1]}}]",
        "must be a number",
    ),
    "bad density": (
        "merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1, density: 1.5}}]",
        r"\(0, 1\]",
    ),
    "model parameter": (
        "merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1, gamma: 0.1}}]",
        "parameters may be",
    ),
    "method parameter": (
        "merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1}}]\nparameters: {t: 0.5}",
        "`parameters` may be",
    ),
    "no rescale": (
        "merge_method: dare_ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1}}]\n"
        "parameters: {rescale: false}",
        "rescale: false",
    ),
    "dtype": ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1}}]\ndtype: int8", "dtype"),
    "union tokenizer": (
        "merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1}}]\ntokenizer_source: union",
        "not 'union'",
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=str)
def test_a_bad_config_raises_an_error_that_names_the_problem(case):
    text, message = BAD_CONFIGS[case]
    with pytest.raises(MergeConfigError, match=message):
        parse_config(text)


def test_the_command_line_exits_with_the_error_not_a_traceback(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("merge_method: slerp\nbase_model: b\nmodels: [{model: a}]")
    with pytest.raises(SystemExit) as exit_info:
        merging.main([str(config), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "'slerp' is not supported" in capsys.readouterr().err
    config.write_text(
        "merge_method: task_arithmetic\nbase_model: /nonexistent/base\nmodels: [{model: a, parameters: {weight: 1}}]"
    )
    with pytest.raises(SystemExit):
        merging.main([str(config), "--out", str(tmp_path / "o")])
    assert "no model folder" in capsys.readouterr().err


def test_a_base_listed_among_the_models_adds_no_task_vector():
    config = parse_config(
        "merge_method: ties\nbase_model: b\nmodels: [{model: b}, {model: a, parameters: {weight: 2}}]"
    )
    assert config.models == ["a"] and config.merge.weights == (2.0,)


def _mergekit(config_text: str, out: Path) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    run_merge(
        MergeConfiguration.model_validate(yaml.safe_load(config_text)),
        str(out),
        options=MergeOptions(copy_tokenizer=False),
    )
    return _state(out)


MERGEKIT_CASES = {
    "task_arithmetic": ([{"weight": 0.7}, {"weight": 0.4}], {}),
    "task_arithmetic negation": ([{"weight": -1.0}, {"weight": 1.0}], {"lambda": 0.5}),
    "ties": ([{"weight": 1.0, "density": 0.3}, {"weight": 0.5, "density": 0.6}], {"lambda": 1.3}),
    "ties unnormalised": ([{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}], {"normalize": False}),
    "linear": ([{"weight": 2.0}, {"weight": 1.0}], {}),
}


@pytest.mark.parametrize("case", MERGEKIT_CASES, ids=str)
def test_mergekit_gives_the_same_tensors(checkpoints, tmp_path, case):
    """mergekit (LGPL, installed with the dev extra only) is the reference; ours must match it to float32 rounding."""
    params, extra = MERGEKIT_CASES[case]
    method = case.split()[0]
    models = [{"model": str(checkpoints[f"ft{i + 1}"]), "parameters": p} for i, p in enumerate(params)]
    text = _yaml(checkpoints, method, models, dtype="float32", **({"parameters": extra} if extra else {}))
    if method == "linear":  # mergekit's linear averages the listed models and has no base
        text = yaml.safe_dump({k: v for k, v in yaml.safe_load(text).items() if k != "base_model"})
    reference = _mergekit(text, tmp_path / "mergekit")
    config = tmp_path / "ours.yaml"
    config.write_text(text)
    ours = _state(merging.merge_from_config(config, tmp_path / "ours"))
    assert reference.keys() == ours.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=1e-6, msg=name)


def test_mergekit_s_dare_rescales_to_the_l1_norm_ours_by_one_over_density(checkpoints, tmp_path):
    """The deliberate difference (docs/labs/05_task_vectors_and_merging.md): for the mask mergekit drew, its kept
    entries are τ · ‖τ‖₁ / ‖m ⊙ τ‖₁; the paper's (and ours) are τ / (1 − p)."""
    models = [{"model": str(checkpoints["ft1"]), "parameters": {"weight": 1.0, "density": 0.3}}]
    reference = _mergekit(_yaml(checkpoints, "dare_linear", models, dtype="float32"), tmp_path / "mergekit")
    base, tuned = _state(checkpoints["base"]), _state(checkpoints["ft1"])
    name = "model.layers.0.mlp.down_proj.weight"
    tau = tuned[name] - base[name]
    delta = reference[name] - base[name]
    kept = delta.abs() > 1e-7
    assert 0.25 < kept.float().mean() < 0.35
    l1_scale = tau.abs().sum() / tau[kept].abs().sum()
    torch.testing.assert_close(delta[kept], tau[kept] * l1_scale, rtol=1e-4, atol=1e-6)
    ours = merge_tensor(base[name], [tuned[name]], Merge("dare_linear", densities=(0.3,)))
    our_delta = ours - base[name]
    our_kept = our_delta != 0
    torch.testing.assert_close(our_delta[our_kept], tau[our_kept] / 0.3, rtol=1e-5, atol=1e-6)
    assert abs(float(l1_scale) - 1 / 0.3) < 0.5  # the two rescalings agree in expectation, not entry by entry


def test_the_chat_vector_adds_chat_minus_base_to_the_continued_pretraining():
    base = {"w": torch.tensor([1.0, 1.0])}
    chat = {"w": torch.tensor([2.0, 0.0])}
    cpt = {"w": torch.tensor([1.5, 3.0])}
    torch.testing.assert_close(merging.chat_vector(cpt, chat, base)["w"], torch.tensor([2.5, 2.0]))
    torch.testing.assert_close(merging.chat_vector(cpt, chat, base, 0.5)["w"], torch.tensor([2.0, 2.5]))
    # the same as task arithmetic with base θ_base and the models (θ_cpt, θ_chat) at weights (1, λ)
    merged = merge_tensor(base["w"], [cpt["w"], chat["w"]], Merge(weights=(1.0, 0.5)))
    torch.testing.assert_close(merged, torch.tensor([2.0, 2.5]))
    with pytest.raises(ValueError, match="vocabularies differ"):
        merging.chat_vector({"w": torch.zeros(3)}, chat, base)


def test_the_lab_s_scorer_scores_equal_weights_once_and_changed_weights_again(monkeypatch):
    from posttrain.core.evaluate import Item
    from posttrain.studies import task_vectors_and_merging as study

    model = torch.nn.Linear(2, 2)
    state = study.state_of(model)
    assert study.weights_digest(state) == study.weights_digest({k: v.clone() for k, v in state.items()})
    nudged = {k: v.clone() for k, v in state.items()}
    nudged["bias"][0] = torch.nextafter(nudged["bias"][0], torch.tensor(1e9))
    assert study.weights_digest(nudged) != study.weights_digest(state), "one ulp changes the digest"

    asked = []

    def fake_scores(model, tokenizer, skills):
        asked.append(sorted(skills))
        return {name: [bool(model.bias[0] > 0)] * len(items) for name, items in skills.items()}

    monkeypatch.setattr(study, "skill_scores", fake_scores)
    items = {name: [Item(name, "q", "a", (), 0)] for name in ("a", "b")}
    score = study.Scorer(model, None, items, default=["a"])
    score(state), score({k: v.clone() for k, v in state.items()}), score(state, ["a", "b"])
    assert asked == [["a"], ["b"]], "a repeated state is scored once, and only on the skills not yet scored"
    score(nudged)
    assert asked[-1] == ["a"] and len(asked) == 3
