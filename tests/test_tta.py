"""Test-time adaptation (``posttrain.methods.tta``) and Lab 06's digits world, on hand-made tensors and tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from posttrain.core.models import load_model
from posttrain.methods import tta
from posttrain.world.digits import CORRUPTIONS, DigitsCNN, corrupt, load_digits


def hand_entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def test_entropy_matches_hand_computation_and_temperature_flattens():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert tta.entropy(logits).tolist() == pytest.approx([math.log(2), hand_entropy([0.75, 0.25])], abs=1e-6)
    hot = tta.entropy(logits, temperature=2.0)[1]
    assert float(hot) == pytest.approx(hand_entropy([math.sqrt(3) / (1 + math.sqrt(3)), 1 / (1 + math.sqrt(3))]))
    assert tta.entropy_loss(logits) == pytest.approx((math.log(2) + hand_entropy([0.75, 0.25])) / 2, abs=1e-6)


def test_non_blank_entropy_averages_only_the_speaking_frames():
    blank, a, b = [4.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]
    logits = torch.tensor([[blank, a, blank, b]])
    expected = (float(tta.entropy(torch.tensor(a))) + float(tta.entropy(torch.tensor(b)))) / 2
    assert float(tta.non_blank_entropy(logits, blank=0)) == pytest.approx(expected, abs=1e-6)
    all_blank = torch.tensor([[blank, blank]])
    assert float(tta.non_blank_entropy(all_blank)) == pytest.approx(float(tta.entropy(torch.tensor(blank))), abs=1e-6)


def test_minimum_class_confusion_matches_hand_computation():
    # Two frames, two classes: p1 = (0.75, 0.25), p2 = (0.5, 0.5).
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    correlation = [[0.75**2 + 0.25, 0.75 * 0.25 + 0.25], [0.25 * 0.75 + 0.25, 0.25**2 + 0.25]]
    normalised = [[c / sum(row) for c in row] for row in correlation]
    expected = (normalised[0][1] + normalised[1][0]) / 2
    assert float(tta.minimum_class_confusion(logits)) == pytest.approx(expected, abs=1e-6)
    batch = torch.stack([logits, torch.tensor([[9.0, -9.0], [-9.0, 9.0]])])  # the second utterance: no confusion
    assert float(tta.minimum_class_confusion(batch)) == pytest.approx(expected / 2, abs=1e-4)


def test_suta_loss_is_the_papers_mixture():
    logits = torch.randn(1, 7, 5, generator=torch.Generator().manual_seed(0))
    expected = 0.3 * tta.non_blank_entropy(logits, 0, 2.5) + 0.7 * tta.minimum_class_confusion(logits, 2.5)
    assert float(tta.suta_loss(logits)) == pytest.approx(float(expected))


def test_reliable_sample_weights_keep_only_confident_rows():
    sure, unsure = [9.0] + [0.0] * 9, [0.0] * 10
    weights = tta.reliable_sample_weights(torch.tensor([sure, unsure]))
    threshold = 0.4 * math.log(10)
    h = float(tta.entropy(torch.tensor(sure)))
    assert weights.tolist() == pytest.approx([math.exp(threshold - h), 0.0])
    assert tta.reliable_sample_weights(torch.tensor([sure, unsure]), reweight=False).tolist() == [1.0, 0.0]
    dropped = tta.entropy_loss(torch.tensor([unsure]), torch.tensor([0.0]))
    assert float(dropped) == 0.0


def tiny_wav2vec2() -> Wav2Vec2ForCTC:
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=12,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        pad_token_id=0,
    )
    return Wav2Vec2ForCTC(config).eval()


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {name for name, value in model.state_dict().items() if not torch.equal(before[name], value)}


def test_suta_adapts_only_layer_norms_and_the_feature_extractor_and_reset_is_exact():
    model = tiny_wav2vec2()
    chosen = tta.suta_parameters(model)
    assert any("feature_extractor" in n for n in chosen) and any("layer_norm" in n for n in chosen)
    assert not any("encoder.layers.0.attention" in n and "layer_norm" not in n for n in chosen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = tta.Adapter(model, chosen, tta.suta_loss, lr=1e-2, steps=3, predict_after=True)
    audio = torch.randn(1, 1600, generator=torch.Generator().manual_seed(1))
    adapter.adapt(audio)
    moved = changed(before, model)
    assert moved and moved <= set(chosen)
    adapter.reset()
    assert changed(before, model) == set()


def test_tent_adapts_only_normalisation_affine_parameters_with_batch_statistics():
    torch.manual_seed(0)
    model = tta.use_batch_statistics(DigitsCNN().eval())
    chosen = tta.norm_affine_parameters(model)
    assert set(chosen) == {"encoder.1.weight", "encoder.1.bias", "encoder.4.weight", "encoder.4.bias"}
    assert model.encoder[1].training and not model.training and model.encoder[1].running_mean is None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unadapted = model(images)
    adapter = tta.Adapter(model, chosen, tta.entropy_loss, lr=1e-2)
    first = adapter.adapt(images)
    assert changed(before, model) == set(chosen)
    torch.testing.assert_close(first, unadapted)  # TENT predicts with the forward pass it adapts on
    adapter.reset()
    assert changed(before, model) == set()


def test_adapt_stream_resets_as_asked():
    torch.manual_seed(0)
    model = tta.use_batch_statistics(DigitsCNN().eval())
    adapter = tta.Adapter(model, tta.norm_affine_parameters(model), tta.entropy_loss, lr=1e-2)
    resets = []
    adapter.reset = lambda original=adapter.reset: (resets.append(1), original())[1]
    batches = list(torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0)).split(5))
    assert len(tta.adapt_stream(adapter, batches, reset="episodic")) == 10 and len(resets) == 10
    resets.clear()
    tta.adapt_stream(adapter, batches, reset="periodic", every=4)
    assert len(resets) == 2  # before batches 4 and 8
    with pytest.raises(ValueError, match="unknown reset"):
        tta.adapt_stream(adapter, batches, reset="sometimes")
    with pytest.raises(ValueError, match="ShiftDetector"):
        tta.adapt_stream(adapter, batches, reset="on_shift")


def test_shift_detector_flags_a_jump_either_way_in_any_component_and_not_the_noise_before_it():
    detector = tta.ShiftDetector(threshold=3.0, warmup=5)
    steady = [[1.0, 5.0], [1.1, 5.1], [0.9, 4.9], [1.05, 5.0], [0.95, 5.05], [1.02, 4.95], [0.98, 5.0]]
    assert [detector.update(v) for v in steady] == [False] * len(steady)
    assert detector.update([1.0, 3.0]) is True  # the second component fell
    assert [v.tolist() for v in detector.values] == [[1.0, 3.0]]  # the new domain's statistics start from the jump
    assert tta.ShiftDetector(warmup=2).update(7.0) is False  # a plain number is a one-component statistic
    stats = tta.input_statistics(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert stats.tolist() == pytest.approx([0.5, float(torch.tensor([0.0, 1.0, 1.0, 0.0]).std())])
    with pytest.raises(ValueError, match="warmup"):
        tta.ShiftDetector(warmup=1)


def test_anchor_penalty_is_the_weighted_squared_distance_to_the_start_and_the_adapter_adds_it():
    start = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}
    now = {"a": torch.tensor([2.0, 0.0]), "b": torch.tensor([3.0])}
    assert float(tta.anchor_penalty(now, start)) == 1 + 4 + 9
    weights = {"a": torch.tensor([1.0, 0.5]), "b": torch.tensor([0.0])}
    assert float(tta.anchor_penalty(now, start, weights)) == 1 + 2
    torch.manual_seed(0)
    images = torch.rand(16, 1, 8, 8)
    moved = []
    for anchor in (0.0, 1e3):
        model = tta.use_batch_statistics(DigitsCNN().eval())
        adapter = tta.Adapter(model, tta.norm_affine_parameters(model), tta.entropy_loss, lr=1e-2, anchor=anchor)
        start = {n: p.detach().clone() for n, p in adapter.parameters.items()}
        for _ in range(20):
            adapter.adapt(images)
        moved.append(float(tta.anchor_penalty(adapter.parameters, start).detach()))
    assert moved[1] < moved[0] / 10  # a strong anchor keeps the adapted parameters near the start


def test_rotation_batch_and_pretext_ttt_update_the_encoder_only():
    images = torch.arange(4.0).view(1, 1, 2, 2)
    rotated, labels = tta.rotation_batch(images)
    assert labels.tolist() == [0, 1, 2, 3]
    assert rotated[1, 0].tolist() == torch.rot90(images[0, 0], 1).tolist() == [[1.0, 3.0], [0.0, 2.0]]
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with tta.restored(model):
        tta.pretext_ttt(model.encoder, model.rotation_head, torch.rand(4, 1, 8, 8), steps=2, lr=0.1)
        moved = changed(before, model)
        assert moved and all(name.startswith("encoder.") for name in moved)
        assert all(p.requires_grad for p in model.rotation_head.parameters())
    assert changed(before, model) == set()


def test_tfidf_index_finds_the_statement_about_the_person_asked_about():
    index = tta.TfidfIndex(["ada stone lives in paris .", "bo lee likes the colour red .", "ada stone is a baker ."])
    assert index.nearest("where does ada stone live ?", 2) == ["ada stone lives in paris .", "ada stone is a baker ."]
    with pytest.raises(ValueError, match="at least one text"):
        tta.TfidfIndex([])


def test_nearest_neighbour_ttt_answers_with_the_tuned_model_then_restores_it_exactly():
    model, tokenizer = load_model("tiny-chat", device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    index = tta.TfidfIndex(["ada stone lives in paris .", "bo lee likes the colour red ."])
    query = "where does ada stone live ?"
    seen = tta.nearest_neighbour_ttt(model, tokenizer, index.nearest(query, 1), answer=lambda m: changed(before, m))
    assert seen  # the answer was given by the fine-tuned weights
    assert changed(before, model) == set()


def test_corruptions_are_deterministic_clipped_and_refuse_unknown_names():
    images = load_digits(seed=0).test_images[:8]
    for name in CORRUPTIONS:
        out = corrupt(images, name, 5, seed=3)
        assert out.shape == images.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
        assert torch.equal(out, corrupt(images, name, 5, seed=3))
        assert not torch.equal(out, images)
    assert not torch.equal(corrupt(images, "noise", 3, seed=1), corrupt(images, "noise", 3, seed=2))
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(images, "fog", 3)
    with pytest.raises(ValueError, match="severity"):
        corrupt(images, "noise", 6)


def test_the_shift_trigger_is_two_sided_with_the_unbiased_spread():
    seen = torch.tensor([[0.0, 1.0], [0.2, 1.2], [-0.2, 0.8], [0.1, 1.1], [-0.1, 0.9]], dtype=torch.float64)
    assert not tta.is_shift(seen, torch.tensor([0.6, 1.0], dtype=torch.float64), 4.0)  # z = 3.79 (biased: 4.24)
    assert tta.is_shift(seen, torch.tensor([0.7, 1.0], dtype=torch.float64), 4.0)
    assert tta.is_shift(seen, torch.tensor([0.0, 0.3], dtype=torch.float64), 4.0)
    detector = tta.ShiftDetector(4.0, warmup=5, trigger=lambda seen, value, threshold: True)
    assert [detector.update(v) for v in range(7)] == [False] * 5 + [True, False]  # after a shift, warm up again


def test_a_saved_state_restores_exactly_however_often_it_is_loaded():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    adam = torch.optim.Adam(net.parameters(), lr=0.1)
    x = torch.randn(8, 3)

    def steps(n):
        for _ in range(n):
            adam.zero_grad()
            net(x).pow(2).mean().backward()
            adam.step()
        return {k: v.clone() for k, v in net.state_dict().items()}

    steps(1)
    state = tta.save_state(net, adam)
    first = steps(3)
    for _ in range(2):
        tta.restore_state(net, adam, state)
        assert all(torch.equal(v, first[k]) for k, v in steps(3).items())
