"""The speech world of Lab 06: short word sequences spoken by eSpeak NG, recognised by a small CTC model.

Real synthetic speech, not a toy signal: ``render`` has Debian's ``espeak-ng`` speak a text in one of several voices,
rates and pitches, and ``build_corpus`` renders a seeded corpus of 2-3-word sequences from ``VOCABULARY``. The corpus
is rendered once, by ``python -m posttrain.world.speech build`` (``make speech-corpus`` installs espeak-ng first),
and shipped compressed as ``speech_data/corpus.npz`` (8-bit mu-law at ``SAMPLE_RATE``, xz-compressed: 5 MB for 1 200
utterances), so nothing at run time needs espeak. ``load_corpus`` reads it back.

Recognition is character-level CTC (Graves et al. 2006): ``CHARACTERS`` with the blank at 0 and ``|`` between words,
``encode_text`` / ``greedy_ctc_decode``, and the word and character error rates of ``jiwer``. The shifts the model
meets at test time: Gaussian noise at a signal-to-noise ratio (``add_noise``, as SUTA's LibriSpeech + noise), a
reverberant room (``reverberate``) and a speed change (``change_speed``).
"""

from __future__ import annotations

import io
import lzma
import random
import shutil
import subprocess
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 8000  # Hz: eSpeak's formants lie below 4 kHz, and half of 16 kHz halves the shipped corpus and compute
CORPUS_PATH = Path(__file__).resolve().parent / "speech_data" / "corpus.npz"
VOCABULARY = (
    "zero one two three four five six seven eight nine "
    "yes no up down left right go stop on off red blue green big small"
).split()
# eSpeak NG voices (language + variant), rates (words per minute) and pitches (0-99) the corpus draws from.
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us+f2", "en-gb+m3", "en-us+f4")
RATES = (130, 150, 170, 190)
PITCHES = (30, 45, 60, 75)
BLANK = "<blank>"
WORD_SEPARATOR = "|"
CHARACTERS = (BLANK, WORD_SEPARATOR, *sorted(set("".join(VOCABULARY))))


@dataclass(frozen=True)
class Utterance:
    """One spoken text: its audio (float32 in [-1, 1] at ``SAMPLE_RATE``) and how eSpeak NG spoke it."""

    text: str
    audio: np.ndarray
    voice: str
    rate: int
    pitch: int


class AudioError(ValueError):
    """Audio that the speech models cannot take: the message names the problem and the fix."""


def check_audio(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, expected_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``audio`` as a float32 mono waveform, or an ``AudioError`` that says what is wrong with it: another sample rate
    (resample it), more than one channel, no samples, or values that are not finite."""
    if sample_rate != expected_rate:
        raise AudioError(
            f"audio at {sample_rate} Hz, but the model hears {expected_rate} Hz: resample it first "
            f"(scipy.signal.resample_poly(audio, {expected_rate}, {sample_rate}))"
        )
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise AudioError(f"audio of shape {audio.shape}: pass one mono channel (average the channels: audio.mean(-1))")
    if audio.size == 0:
        raise AudioError("the audio has no samples: check that the file was read and the utterance is not empty")
    if not np.isfinite(audio).all():
        raise AudioError("the audio holds NaN or infinite samples: check the decoding or the noise added to it")
    return audio


def render(text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50) -> np.ndarray:
    """``text`` spoken by ``espeak-ng`` (voice, words per minute, pitch), resampled from its 22 050 Hz to
    ``SAMPLE_RATE``, leading and trailing silence trimmed: float32 in [-1, 1]. Needs espeak-ng on the PATH."""
    from scipy.signal import resample_poly

    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng is not installed: run `make speech-corpus`, which installs it (Debian)")
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        native = reader.getframerate()
    samples = np.frombuffer(wav[44:], dtype="<i2").astype(np.float32) / 32768.0  # espeak's header is 44 bytes
    audio = resample_poly(samples, SAMPLE_RATE, native).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    return audio[max(0, loud[0] - 400) : loud[-1] + 400] if loud.size else audio


def corpus_texts(n: int, seed: int = 0, words: tuple[int, int] = (2, 3)) -> list[str]:
    """``n`` texts of ``words`` (inclusive range) words drawn from ``VOCABULARY`` with ``seed``."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(*words))) for _ in range(n)]


def build_corpus(n: int = 1200, seed: int = 0) -> list[Utterance]:
    """Render ``n`` texts (``corpus_texts``), each in a voice, rate and pitch drawn with ``seed``."""
    rng = random.Random(seed + 1)
    spoken = []
    for text in corpus_texts(n, seed):
        voice, rate, pitch = rng.choice(VOICES), rng.choice(RATES), rng.choice(PITCHES)
        spoken.append(Utterance(text, render(text, voice, rate, pitch), voice, rate, pitch))
    return spoken


def mu_law_encode(audio: np.ndarray, mu: int = 255) -> np.ndarray:
    """8-bit mu-law companding (ITU-T G.711's curve): uint8 codes of audio in [-1, 1]."""
    companded = np.sign(audio) * np.log1p(mu * np.abs(np.clip(audio, -1, 1))) / np.log1p(mu)
    return np.round((companded + 1) / 2 * mu).astype(np.uint8)


def mu_law_decode(codes: np.ndarray, mu: int = 255) -> np.ndarray:
    """The inverse of ``mu_law_encode``: float32 audio in [-1, 1]."""
    companded = codes.astype(np.float32) / mu * 2 - 1
    return (np.sign(companded) * np.expm1(np.abs(companded) * np.log1p(mu)) / mu).astype(np.float32)


def save_corpus(utterances: list[Utterance], path: Path = CORPUS_PATH) -> Path:
    """Write ``utterances`` to ``path`` as one npz: the mu-law codes end to end, xz-compressed (a fifth smaller than
    the npz's own zlib), their offsets, the texts and how they were spoken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(u.audio) for u in utterances])
    codes = np.concatenate([mu_law_encode(u.audio) for u in utterances])
    np.savez(
        path,
        codes_xz=np.frombuffer(lzma.compress(codes.tobytes(), preset=9 | lzma.PRESET_EXTREME), dtype=np.uint8),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        texts=np.array([u.text for u in utterances]),
        voices=np.array([u.voice for u in utterances]),
        rates=np.array([u.rate for u in utterances]),
        pitches=np.array([u.pitch for u in utterances]),
        sample_rate=np.array(SAMPLE_RATE),
    )
    return path


def load_corpus(path: Path = CORPUS_PATH) -> list[Utterance]:
    """The shipped corpus (``save_corpus``'s file) as ``Utterance`` objects."""
    if not path.exists():
        raise FileNotFoundError(f"no speech corpus at {path}: render it with `make speech-corpus`")
    with np.load(path) as stored:
        if int(stored["sample_rate"]) != SAMPLE_RATE:
            raise AudioError(f"{path} holds {int(stored['sample_rate'])} Hz audio, not {SAMPLE_RATE}: render it again")
        audio = mu_law_decode(np.frombuffer(lzma.decompress(stored["codes_xz"].tobytes()), dtype=np.uint8))
        offsets = stored["offsets"]
        return [
            Utterance(str(text), audio[offsets[i] : offsets[i + 1]], str(voice), int(rate), int(pitch))
            for i, (text, voice, rate, pitch) in enumerate(
                zip(stored["texts"], stored["voices"], stored["rates"], stored["pitches"], strict=True)
            )
        ]


def encode_text(text: str) -> list[int]:
    """The CTC target of ``text``: one id per character of ``CHARACTERS``, ``|`` between words."""
    unknown = sorted(set(text.replace(" ", "")) - set(CHARACTERS))
    if unknown:
        raise ValueError(f"characters {unknown} are not in the speech vocabulary {CHARACTERS[2:]}")
    return [CHARACTERS.index(c) for c in text.replace(" ", WORD_SEPARATOR)]


def greedy_ctc_decode(ids: list[int] | np.ndarray) -> str:
    """Best-path CTC decoding (Graves et al. 2006, sec. 3.2): merge repeated ids, drop blanks, ``|`` → space."""
    out, previous = [], None
    for i in map(int, ids):
        if i != previous and i != 0:
            out.append(CHARACTERS[i])
        previous = i
    return " ".join("".join(out).replace(WORD_SEPARATOR, " ").split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: word substitutions + deletions + insertions over the reference words (``jiwer.wer``)."""
    import jiwer

    return float(jiwer.wer(references, hypotheses))


def character_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus CER (``jiwer.cer``)."""
    import jiwer

    return float(jiwer.cer(references, hypotheses))


def add_noise(audio: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """``audio`` plus white Gaussian noise at a signal-to-noise ratio of ``snr_db`` decibels (noise power =
    signal power / 10^(snr/10)), drawn from ``seed``."""
    audio = check_audio(audio)
    power = float(np.mean(audio**2))
    noise = np.random.default_rng(seed).standard_normal(audio.shape).astype(np.float32)
    return audio + noise * np.sqrt(power / 10 ** (snr_db / 10))


def add_gaussian_noise(audio: np.ndarray, std: float, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``audio`` plus white Gaussian noise of standard deviation ``std`` on the waveform, drawn from ``seed``: SUTA's
    LibriSpeech + 0.005 / + 0.01 (arXiv:2203.14222, table 1), the colab profile's shift."""
    audio = check_audio(audio, sample_rate, sample_rate)
    return audio + std * np.random.default_rng(seed).standard_normal(audio.shape).astype(np.float32)


def reverberate(audio: np.ndarray, decay_s: float = 0.3, seed: int = 0) -> np.ndarray:
    """``audio`` in a synthetic room: convolved with exponentially decaying noise (an RT60 of ``decay_s`` seconds,
    the amplitude falling 60 dB over it), the direct path kept at 1, then scaled back to the input's peak."""
    from scipy.signal import fftconvolve

    audio = check_audio(audio)
    t = np.arange(int(decay_s * SAMPLE_RATE)) / SAMPLE_RATE
    response = np.random.default_rng(seed).standard_normal(t.shape) * 10 ** (-3 * t / decay_s) * 0.3
    response[0] = 1.0
    wet = fftconvolve(audio, response)[: len(audio)]
    return (wet * (np.abs(audio).max() / max(np.abs(wet).max(), 1e-8))).astype(np.float32)


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """``audio`` played ``factor`` times faster (pitch moves with it, as a tape would): resampled by 1/``factor``."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    audio = check_audio(audio)
    ratio = Fraction(factor).limit_denominator(100)
    return resample_poly(audio, ratio.denominator, ratio.numerator).astype(np.float32)


MODEL_DIR = Path(__file__).resolve().parent / "checkpoints" / "tiny-asr"
TRAIN_UTTERANCES = 1000  # the corpus' first 1 000 train the model; the last 200 are the test set


def speech_model_config():
    """A small ``Wav2Vec2ForCTC``: three convolutions (a 160-sample stride, 20 ms frames at 8 kHz, group norm on the
    first as in wav2vec 2.0 base), a 3-layer transformer of width 96 (357 K parameters) and a CTC head over
    ``CHARACTERS``. The class of ``facebook/wav2vec2-base-960h``, so SUTA's parameter selection and loss are the same
    code for both."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        vocab_size=len(CHARACTERS),
        pad_token_id=0,
        hidden_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=256,
        conv_dim=(64, 64, 64),
        conv_kernel=(10, 8, 4),
        conv_stride=(5, 4, 8),
        feat_extract_norm="group",
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.05,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
    )


def normalise(audio: np.ndarray) -> np.ndarray:
    """Zero mean and unit variance per utterance, as Wav2Vec2's feature extractor does (``do_normalize``)."""
    audio = check_audio(audio)
    return (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)


def batch_inputs(audios: list[np.ndarray]):
    """The ``normalise``d audios right-padded with zeros to the longest: (batch, samples). No attention mask, as for
    wav2vec 2.0 base, whose group-normalised feature extractor is meant to see zero padding."""
    import torch

    values = torch.zeros(len(audios), max(len(a) for a in audios))
    for row, audio in enumerate(audios):
        values[row, : len(audio)] = torch.from_numpy(normalise(audio))
    return values


def train_speech_model(
    utterances: list[Utterance], epochs: int = 40, lr: float = 1e-3, batch_size: int = 16, seed: int = 0
):
    """Train ``speech_model_config``'s model with CTC on ``utterances`` (AdamW, linear warm-up over the first epoch,
    then cosine decay); returns it in eval mode."""
    import math

    import torch
    from tqdm.auto import tqdm
    from transformers import Wav2Vec2ForCTC

    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(speech_model_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    order = list(range(len(utterances)))
    rng = random.Random(seed)
    steps = epochs * math.ceil(len(order) / batch_size)
    warmup = math.ceil(len(order) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))),
    )
    model.train()
    for _ in tqdm(range(epochs), desc="training the speech model"):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            chosen = [utterances[i] for i in order[start : start + batch_size]]
            values = batch_inputs([u.audio for u in chosen])
            targets = [encode_text(u.text) for u in chosen]
            labels = torch.full((len(chosen), max(map(len, targets))), -100)
            for row, target in enumerate(targets):
                labels[row, : len(target)] = torch.tensor(target)
            loss = model(values, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
    return model.eval()


def transcribe(
    model, audios: list[np.ndarray], decode: Callable[[Sequence[int]], str] = greedy_ctc_decode, batch_size: int = 32
) -> list[str]:
    """Greedy CTC transcripts of ``audios`` by a ``Wav2Vec2ForCTC``: each frame's arg-max, read by ``decode`` (by
    default ``greedy_ctc_decode`` over ``CHARACTERS``)."""
    import torch

    texts = []
    with torch.no_grad():
        for start in range(0, len(audios), batch_size):
            logits = model(batch_inputs(audios[start : start + batch_size]).to(model.device)).logits
            texts += [decode(row.tolist()) for row in logits.argmax(-1)]
    return texts


@dataclass(frozen=True)
class Recogniser:
    """A CTC speech model with the decoder of its vocabulary and the sample rate it hears."""

    model: Any
    decode: Callable[[Sequence[int]], str]
    sample_rate: int


def load_recogniser(name_or_path: str | Path = MODEL_DIR, device: str = "cpu") -> Recogniser:
    """The shipped tiny-asr (``CHARACTERS``, ``greedy_ctc_decode``, ``SAMPLE_RATE``) when ``name_or_path`` is a folder
    without a tokenizer; otherwise a hub name or folder with a ``Wav2Vec2Processor`` (``facebook/wav2vec2-base-960h``):
    its tokenizer's CTC decoding (repeats merged, blanks dropped, ``|`` to spaces), lower-cased for WER against the
    lower-case texts, and its feature extractor's sampling rate. The model is in eval mode."""
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    path = Path(name_or_path)
    if path.is_dir() and not (path / "vocab.json").exists():
        return Recogniser(load_speech_model(path).to(device), greedy_ctc_decode, SAMPLE_RATE)
    processor = Wav2Vec2Processor.from_pretrained(str(name_or_path))
    model = Wav2Vec2ForCTC.from_pretrained(str(name_or_path)).to(device).eval()

    def decode(ids: Sequence[int]) -> str:
        return processor.tokenizer.decode(list(ids)).lower()

    return Recogniser(model, decode, processor.feature_extractor.sampling_rate)


def load_speech_model(path: Path = MODEL_DIR):
    """The shipped small ``Wav2Vec2ForCTC`` (``train_speech_model`` on the corpus' training utterances), in eval
    mode."""
    from transformers import Wav2Vec2ForCTC

    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no speech model at {path}: train it with `make speech-corpus`")
    return Wav2Vec2ForCTC.from_pretrained(path).eval()


def main(argv: list[str] | None = None) -> None:
    """``python -m posttrain.world.speech build [--n N] [--seed S]`` renders the corpus to ``CORPUS_PATH``;
    ``train [--seed S]`` trains the model on its first ``TRAIN_UTTERANCES`` and saves it to ``MODEL_DIR``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m posttrain.world.speech")
    parser.add_argument("command", choices=["build", "train"])
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "build":
        path = save_corpus(build_corpus(args.n, args.seed))
        print(f"wrote {args.n} utterances to {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        return
    corpus = load_corpus()
    model = train_speech_model(corpus[:TRAIN_UTTERANCES], seed=args.seed)
    model.save_pretrained(MODEL_DIR)
    test = corpus[TRAIN_UTTERANCES:]
    wer = word_error_rate([u.text for u in test], transcribe(model, [u.audio for u in test]))
    print(f"saved the speech model to {MODEL_DIR}: clean test WER {wer:.3f}")


if __name__ == "__main__":
    main()
