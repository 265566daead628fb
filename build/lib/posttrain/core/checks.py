"""Assertions for graded notebook tests that do not trust the objects a student hands in.

An answer can be any object: one whose ``__eq__`` always returns True, a subclass of ``float`` or ``torch.Tensor``
that overrides arithmetic and comparisons, or a right-looking value checked after ``torch.testing.assert_close``
was monkey-patched into a no-op. So every check accepts only exact built-in types (``type(x) is T``, never
``isinstance``), converts them with the genuine types' own methods, and compares with torch functions captured
when this module was imported. Each failure is an ``AssertionError`` that says what was received and what was
expected, in words a student can act on.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from .data import IGNORE_INDEX, Example, chat_example
from .evaluate import SampleWise, chance_transitions, sample_wise
from .train import masked_sft_loss

# Captured at import time: a notebook that later rebinds these names cannot change what a check computes.
_abs = torch.abs
_add = torch.add
_argmax = torch.argmax
_as_tensor = torch.as_tensor
_detach = torch.Tensor.detach
_getitem = torch.Tensor.__getitem__
_item = torch.Tensor.item
_isfinite = torch.isfinite
_isfinite_float = math.isfinite
_logical_and = torch.logical_and
_logical_not = torch.logical_not
_max = torch.max
_mul = torch.mul
_ne = torch.ne
_numel = torch.Tensor.numel
_size = torch.Tensor.size
_sub = torch.sub
_sum = torch.sum
_to = torch.Tensor.to
_unravel_index = torch.unravel_index
_where = torch.where

_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
_NUMPY_NUMBERS = frozenset(np.dtype(code).type for code in np.typecodes["Float"] + np.typecodes["AllInteger"])
_NUMBER_TYPES = frozenset({float, int}) | _NUMPY_NUMBERS


def _type_name(obj: object) -> str:
    """The name of ``obj``'s type, qualified by its module unless it is a built-in."""
    cls = type(obj)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _number_hint(obj: object) -> str:
    """A sentence telling a student how to turn ``obj`` into an accepted number, or '' when there is none."""
    if type(obj) in (bool, np.bool_):
        return " (True/False is not accepted as a number: return the numeric value itself)"
    if type(obj) in _TENSOR_TYPES:
        return " (use .item() to turn a one-element tensor into a Python float)"
    if isinstance(obj, (float, int, np.number)):
        return " (a subclass of a number type is not accepted: return a plain float)"
    return ""


def assert_tensor_close(
    actual: object, expected: object, *, atol: float = 1e-5, rtol: float = 1e-4, name: str = "your answer"
) -> None:
    """Assert that ``actual`` is a plain tensor shaped like ``expected``, |actual - expected| <= atol + rtol |expected|.

    ``actual`` must be exactly a ``torch.Tensor`` or ``torch.nn.Parameter`` (any dtype or device); it is compared in
    float64 on the CPU. It must be finite wherever ``expected`` is finite and equal ``expected`` where that is +-inf.
    ``expected`` is trusted (the grader computes it) and may be anything ``torch.as_tensor`` accepts.
    """
    if type(actual) not in _TENSOR_TYPES:
        raise AssertionError(
            f"{name}: expected a torch.Tensor, got {_type_name(actual)} "
            "(return a plain torch.Tensor: not a subclass, list, number or NumPy array)"
        )
    got = _to(_detach(actual), device="cpu", dtype=torch.float64)
    want = _to(_detach(_as_tensor(expected)), device="cpu", dtype=torch.float64)
    if tuple(_size(got)) != tuple(_size(want)):
        raise AssertionError(f"{name}: expected shape {tuple(_size(want))}, got shape {tuple(_size(got))}")
    finite = _isfinite(want)
    n_bad = int(_item(_sum(_logical_and(finite, _logical_not(_isfinite(got))))))
    if n_bad:
        raise AssertionError(f"{name}: {n_bad} of {_numel(got)} values are NaN or infinite; expected finite values")
    n_wrong_inf = int(_item(_sum(_logical_and(_logical_not(finite), _ne(got, want)))))
    if n_wrong_inf:
        raise AssertionError(f"{name}: {n_wrong_inf} values differ where the expected value is infinite")
    if _numel(got) == 0:
        return
    got_finite, want_finite = _where(finite, got, 0.0), _where(finite, want, 0.0)
    error = _abs(_sub(got_finite, want_finite))
    excess = _sub(error, _add(_mul(_abs(want_finite), rtol), atol))
    if float(_item(_max(excess))) > 0.0:
        worst = tuple(int(i) for i in _unravel_index(_argmax(excess), _size(excess)))
        raise AssertionError(
            f"{name}: values differ from the expected ones (shape {tuple(_size(got))}): max abs error "
            f"{float(_item(_max(error))):.3g}; at index {worst} got {float(_item(_getitem(got, worst))):.6g}, "
            f"expected {float(_item(_getitem(want, worst))):.6g}; allowed: |error| <= {atol:g} + {rtol:g} * |expected|"
        )


def assert_float_close(actual: object, expected: float, *, tol: float = 1e-6, name: str = "your answer") -> None:
    """Assert that ``actual`` is a plain finite number with |actual - expected| <= tol.

    Accepted types are exactly ``float``, ``int`` and NumPy's floating and integer scalars; ``bool``, tensors and
    subclasses of any of these are rejected before the value is read.
    """
    if type(actual) not in _NUMBER_TYPES:
        raise AssertionError(f"{name}: expected a float, got {_type_name(actual)}{_number_hint(actual)}")
    value = float(actual)
    if not _isfinite_float(value):
        raise AssertionError(f"{name}: expected a finite number, got {value}")
    if not abs(value - float(expected)) <= tol:
        raise AssertionError(f"{name}: expected {expected:.6g} (within {tol:g}), got {value:.6g}")


def assert_bool_list(actual: object, expected_len: int, name: str = "your answer") -> None:
    """Assert that ``actual`` is a plain ``list`` of exactly ``expected_len`` plain ``bool`` values."""
    if type(actual) is not list:
        raise AssertionError(
            f"{name}: expected a list of {expected_len} bools, got {_type_name(actual)} "
            "(build it with [bool(x) for x in ...])"
        )
    if len(actual) != expected_len:
        raise AssertionError(f"{name}: expected {expected_len} entries (one per item), got {len(actual)}")
    for index, entry in enumerate(actual):
        if type(entry) is not bool:
            raise AssertionError(
                f"{name}: entry {index} has type {_type_name(entry)}, expected a bool (True/False): "
                "convert it with bool(x)"
            )


# ----------------------------------------------------------------- references for graded lab tests
# Test cells compare student answers with these, never with the student's own objects.

GRADING_SEED_ENV = "POSTTRAIN_GRADING_SEED"


def grading_seed() -> int:
    """Seed for the inputs of hidden tests: ``$POSTTRAIN_GRADING_SEED`` (an instructor's secret, set only when
    grading) or 0, so that knowing the public test code does not reveal the hidden inputs' expected values."""
    value = os.environ.get(GRADING_SEED_ENV, "0")
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"{GRADING_SEED_ENV} must be an integer, got {value!r}") from err


def reference_masked_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The reference masked SFT loss (``posttrain.core.train.masked_sft_loss``) on detached copies."""
    return masked_sft_loss(_detach(logits).clone(), _detach(labels).clone())


def reference_sample_wise(before: list[bool], after: list[bool]) -> SampleWise:
    """The reference sample-wise metrics (``posttrain.core.evaluate.sample_wise``) of two correctness lists."""
    return sample_wise(list(before), list(after))


def reference_chance_adjusted(
    forgetting: float, backward_transfer: float, acc_before: float, acc_after: float, k: int
) -> tuple[float, float]:
    """Chance-adjusted (forgetting, backward transfer), clipped at 0 (arXiv:2510.17776)."""
    chance = chance_transitions(acc_before, acc_after, k)
    return max(0.0, forgetting - chance), max(0.0, backward_transfer - chance)


def assert_example_masks_prompt(example: object, tokenizer, user: str, assistant: str) -> None:
    """Assert that ``example`` is a ``posttrain.core.data.Example`` equal to the reference tokenisation of the exchange,
    with every prompt token's label set to ``IGNORE_INDEX`` and the reply's labels equal to its ids."""
    if type(example) is not Example:
        raise AssertionError(f"expected a posttrain.core.data.Example, got {_type_name(example)}")
    want = chat_example(tokenizer, user, assistant)
    for field in ("input_ids", "labels"):
        got = getattr(example, field)
        if type(got) is not list or any(type(t) is not int for t in got):
            raise AssertionError(f"Example.{field} must be a plain list of ints, got {_type_name(got)}")
        if len(got) != len(getattr(want, field)):
            raise AssertionError(f"Example.{field} has {len(got)} entries, expected {len(getattr(want, field))}")
    if [int(t) for t in example.input_ids] != want.input_ids:
        raise AssertionError("input_ids differ from the chat template's rendering of the full conversation")
    n_prompt = want.labels.count(IGNORE_INDEX)
    if [int(t) for t in example.labels[:n_prompt]] != [IGNORE_INDEX] * n_prompt:
        raise AssertionError(
            f"the first {n_prompt} labels (the prompt, up to the assistant marker) must be {IGNORE_INDEX}"
        )
    if [int(t) for t in example.labels] != want.labels:
        raise AssertionError("the reply's labels must equal its input_ids (answer tokens and the end-of-turn token)")
