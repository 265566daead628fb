"""Lab 06's speech world (``posttrain.world.speech``): the shipped corpus, CTC text handling, WER and the shifts."""

from __future__ import annotations

import shutil

import jiwer
import numpy as np
import pytest
import torch

from posttrain.world import speech


@pytest.fixture(scope="module")
def corpus() -> list[speech.Utterance]:
    return speech.load_corpus()


def test_the_shipped_corpus_is_spoken_vocabulary_in_several_voices(corpus):
    assert len(corpus) == 1200
    words = {w for u in corpus for w in u.text.split()}
    assert words == set(speech.VOCABULARY)
    assert {u.voice for u in corpus} == set(speech.VOICES)
    seconds = [len(u.audio) / speech.SAMPLE_RATE for u in corpus]
    assert 0.3 < min(seconds) and max(seconds) < 2.5
    assert all(u.audio.dtype == np.float32 and np.abs(u.audio).max() <= 1.0 for u in corpus[:50])


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng renders the corpus; tests use the shipped one")
def test_rendering_again_gives_the_shipped_audio(corpus):
    for u in corpus[:3]:
        again = speech.mu_law_encode(speech.render(u.text, u.voice, u.rate, u.pitch))
        assert np.array_equal(again, speech.mu_law_encode(u.audio))


def test_mu_law_keeps_speech_within_a_quantisation_step():
    audio = np.linspace(-1, 1, 1001, dtype=np.float32)
    back = speech.mu_law_decode(speech.mu_law_encode(audio))
    widest_half_step = (1 - float(speech.mu_law_decode(np.array([254], dtype=np.uint8))[0])) / 2  # at full scale
    assert np.abs(back - audio).max() <= widest_half_step + 1e-6
    quiet = audio[np.abs(audio) < 0.05]
    assert np.abs(speech.mu_law_decode(speech.mu_law_encode(quiet)) - quiet).max() < 0.001  # fine steps near zero


def test_ctc_text_round_trip_and_greedy_decoding():
    ids = speech.encode_text("go up")
    assert [speech.CHARACTERS[i] for i in ids] == ["g", "o", "|", "u", "p"]
    g, o, bar, u, p = ids
    frames = [0, g, g, 0, o, o, bar, bar, 0, u, 0, u, p, 0]  # repeats merge; a blank separates the two u's
    assert speech.greedy_ctc_decode(frames) == "go uup"
    assert speech.greedy_ctc_decode([0, 0, 0]) == ""
    with pytest.raises(ValueError, match="not in the speech vocabulary"):
        speech.encode_text("hello!")


def test_error_rates_are_jiwers_on_hand_made_strings():
    references, hypotheses = ["go up now", "stop"], ["go down now", "stop stop"]
    assert speech.word_error_rate(references, hypotheses) == pytest.approx(2 / 4)  # one substitution, one insertion
    assert speech.word_error_rate(references, hypotheses) == jiwer.wer(references, hypotheses)
    assert speech.character_error_rate(["abc"], ["abd"]) == pytest.approx(1 / 3)


def test_bad_audio_gets_a_message_that_names_the_fix():
    with pytest.raises(speech.AudioError, match="resample"):
        speech.check_audio(np.zeros(100), sample_rate=16000)
    with pytest.raises(speech.AudioError, match="no samples"):
        speech.check_audio(np.zeros(0))
    with pytest.raises(speech.AudioError, match="NaN"):
        speech.check_audio(np.array([0.0, np.nan]))
    with pytest.raises(speech.AudioError, match="mono"):
        speech.check_audio(np.zeros((100, 2)))
    with pytest.raises(speech.AudioError, match="NaN"):
        speech.add_noise(np.array([0.1, np.inf]), snr_db=10)


def test_shifts_do_what_they_say(corpus):
    audio = corpus[0].audio
    for snr in (20.0, 5.0):
        noisy = speech.add_noise(audio, snr, seed=1)
        measured = 10 * np.log10(np.mean(audio**2) / np.mean((noisy - audio) ** 2))
        assert measured == pytest.approx(snr, abs=0.3)
    assert np.array_equal(speech.add_noise(audio, 10, seed=2), speech.add_noise(audio, 10, seed=2))
    wet = speech.reverberate(audio, decay_s=0.3)
    assert wet.shape == audio.shape and np.abs(wet).max() == pytest.approx(np.abs(audio).max(), rel=1e-5)
    assert not np.allclose(wet, audio)
    assert len(speech.change_speed(audio, 1.25)) == pytest.approx(len(audio) / 1.25, abs=2)


@pytest.fixture(scope="module")
def model():
    return speech.load_speech_model()


def test_the_shipped_model_recognises_clean_speech_and_noise_breaks_it(model, corpus):
    test = corpus[speech.TRAIN_UTTERANCES :]
    references = [u.text for u in test]
    clean = speech.word_error_rate(references, speech.transcribe(model, [u.audio for u in test]))
    assert clean <= 0.25  # measured 0.222 (character error rate 0.06)
    noisy = [speech.add_noise(u.audio, 20, seed=i) for i, u in enumerate(test)]
    assert speech.word_error_rate(references, speech.transcribe(model, noisy)) >= 2 * clean


def test_suta_lowers_the_error_on_noisy_utterances_and_resets_exactly(model, corpus):
    from posttrain.methods import tta

    test = corpus[speech.TRAIN_UTTERANCES : speech.TRAIN_UTTERANCES + 40]
    noisy = [speech.add_noise(u.audio, 25, seed=100 + i) for i, u in enumerate(test)]
    references = [u.text for u in test]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = tta.Adapter(model, tta.suta_parameters(model), tta.suta_loss, lr=1e-4, steps=10, predict_after=True)
    adapted = []
    for audio in noisy:
        adapter.reset()
        adapted.append(speech.greedy_ctc_decode(adapter.adapt(speech.batch_inputs([audio]))[0].argmax(-1)))
    adapter.reset()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    unadapted = speech.word_error_rate(references, speech.transcribe(model, noisy))
    assert speech.word_error_rate(references, adapted) < unadapted


def test_the_suta_table_runs_on_the_pieces_it_is_given():
    from dataclasses import replace

    from posttrain.methods import tta
    from posttrain.studies import test_time_training as study

    calls = []

    def counted_restore(model, optimizer, state):
        calls.append(1)
        tta.restore_state(model, optimizer, state)

    plan = replace(study.SPEECH_PLANS["tiny"], utterances=3, levels=(25.0,), steps=2)
    pieces = replace(study.PACKAGE, restore_state=counted_restore)
    table = study.suta_table(10, plan, pieces)
    assert table["utterances"] == 3 and set(table["wer"]) == {"clean", "25"}
    assert set(table["wer"]["25"]) == {"unadapted", "suta", "entropy_only", "relative_gain"}
    assert len(calls) == 2 * 3  # the given reset, after every utterance of both losses
    assert table == study.suta_table(10, plan)  # the package's pieces give the same table
