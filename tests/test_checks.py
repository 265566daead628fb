"""The grading checks accept honest answers and reject objects that lie about their value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posttrain.core.checks import assert_bool_list, assert_float_close, assert_tensor_close

EXPECTED = torch.tensor([[1.0, -2.0, 3.5], [0.0, 1e-3, -7.25]])


class AlwaysEqual:
    """Claims to equal everything."""

    def __eq__(self, other):
        return True

    __hash__ = None


class LyingFloat(float):
    """A float subclass whose comparisons and arithmetic all say 'close enough'."""

    def __eq__(self, other):
        return True

    def __sub__(self, other):
        return 0.0

    __rsub__ = __sub__

    def __abs__(self):
        return 0.0

    def __le__(self, other):
        return True

    def __float__(self):
        return 0.5

    __hash__ = float.__hash__


class LyingTensor(torch.Tensor):
    """A tensor subclass whose comparisons say 'equal'."""

    def __eq__(self, other):
        return torch.ones_like(self.as_subclass(torch.Tensor), dtype=torch.bool)

    __hash__ = torch.Tensor.__hash__


def _message(check, *args, **kwargs) -> str:
    with pytest.raises(AssertionError) as info:
        check(*args, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------ assert_tensor_close
def test_tensor_close_accepts_honest_tensors():
    assert_tensor_close(EXPECTED.clone(), EXPECTED, name="logits")
    assert_tensor_close(EXPECTED + 5e-6, EXPECTED, atol=1e-5, rtol=0, name="logits")
    assert_tensor_close(EXPECTED.double().requires_grad_(), EXPECTED, name="logits")
    assert_tensor_close(torch.nn.Parameter(EXPECTED.clone()), EXPECTED, name="weight")
    assert_tensor_close(torch.tensor([0.0, float("-inf")]), torch.tensor([0.0, float("-inf")]), name="mask")
    assert_tensor_close(torch.tensor(2.0), 2.0, name="scalar")
    assert_tensor_close(torch.zeros(0, 3), torch.zeros(0, 3), name="empty")


def test_tensor_close_rejects_wrong_values_and_says_where():
    wrong = EXPECTED.clone()
    wrong[1, 2] += 0.5
    message = _message(assert_tensor_close, wrong, EXPECTED, atol=1e-5, rtol=1e-4, name="logits")
    assert message.startswith("logits:")
    assert "max abs error 0.5" in message
    assert "index (1, 2)" in message
    assert "got -6.75" in message and "expected -7.25" in message


def test_tensor_close_uses_relative_tolerance():
    big = torch.tensor([1000.0])
    assert_tensor_close(big + 0.05, big, atol=0, rtol=1e-4)
    with pytest.raises(AssertionError):
        assert_tensor_close(big + 0.2, big, atol=0, rtol=1e-4)


@pytest.mark.parametrize(
    "answer",
    [EXPECTED.tolist(), EXPECTED.numpy(), 1.0, AlwaysEqual(), EXPECTED.clone().as_subclass(LyingTensor)],
    ids=["list", "ndarray", "float", "always-equal", "tensor-subclass"],
)
def test_tensor_close_rejects_other_types(answer):
    message = _message(assert_tensor_close, answer, EXPECTED, name="logits")
    assert "expected a torch.Tensor, got" in message
    assert type(answer).__qualname__ in message


def test_tensor_close_rejects_wrong_shape():
    message = _message(assert_tensor_close, EXPECTED.T.contiguous(), EXPECTED, name="logits")
    assert message == "logits: expected shape (2, 3), got shape (3, 2)"
    with pytest.raises(AssertionError, match="shape"):
        assert_tensor_close(EXPECTED[None], EXPECTED)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_tensor_close_rejects_non_finite_values(bad):
    answer = EXPECTED.clone()
    answer[0, 0] = bad
    message = _message(assert_tensor_close, answer, EXPECTED, atol=1e9, name="logits")
    assert "1 of 6 values are NaN or infinite" in message
    with pytest.raises(AssertionError, match="expected value is infinite"):
        assert_tensor_close(torch.tensor([0.0, 1e30]), torch.tensor([0.0, float("inf")]), atol=1e9)


def test_tensor_close_survives_monkey_patched_torch(monkeypatch):
    wrong = EXPECTED + 1.0
    monkeypatch.setattr(torch.testing, "assert_close", lambda *args, **kwargs: None)
    monkeypatch.setattr(torch, "allclose", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch, "sub", lambda a, b, **kwargs: torch.zeros_like(a))
    monkeypatch.setattr(torch, "abs", lambda a, **kwargs: torch.zeros_like(a))
    monkeypatch.setattr(torch, "isfinite", lambda a: torch.ones_like(a, dtype=torch.bool))
    monkeypatch.setattr(torch.Tensor, "__sub__", lambda a, b: torch.zeros_like(a))
    monkeypatch.setattr(torch.Tensor, "__eq__", lambda a, b: torch.ones_like(a, dtype=torch.bool))
    with pytest.raises(AssertionError, match="max abs error 1"):
        assert_tensor_close(wrong, EXPECTED, name="logits")
    assert_tensor_close(EXPECTED.clone(), EXPECTED)


# ------------------------------------------------------------------ assert_float_close
@pytest.mark.parametrize("answer", [0.5, 0.5 + 1e-9, np.float64(0.5), np.float32(0.5)])
def test_float_close_accepts_plain_numbers(answer):
    assert_float_close(answer, 0.5, tol=1e-6, name="accuracy")


def test_float_close_accepts_ints_and_numpy_integers():
    assert_float_close(3, 3.0, name="count")
    assert_float_close(np.int64(3), 3.0, name="count")


def test_float_close_checks_the_tolerance_exactly():
    assert_float_close(0.25, 0.2, tol=0.0625)  # |0.25 - 0.2| = 0.05
    message = _message(assert_float_close, 0.3, 0.2, tol=0.05, name="forgetting")
    assert message == "forgetting: expected 0.2 (within 0.05), got 0.3"


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        (LyingFloat(0.9), "LyingFloat"),
        (AlwaysEqual(), "AlwaysEqual"),
        (True, "got bool (True/False is not accepted"),
        (np.bool_(True), "got numpy.bool"),
        (torch.tensor(0.5), "use .item()"),
        ("0.5", "got str"),
        (None, "got NoneType"),
    ],
    ids=["float-subclass", "always-equal", "bool", "numpy-bool", "tensor", "str", "none"],
)
def test_float_close_rejects_other_types(answer, shown):
    message = _message(assert_float_close, answer, 0.5, tol=1.0, name="accuracy")
    assert message.startswith("accuracy: expected a float, got")
    assert shown in message


def test_float_close_hints_at_subclasses():
    assert "subclass" in _message(assert_float_close, LyingFloat(0.5), 0.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), np.float64("nan")])
def test_float_close_rejects_non_finite(bad):
    assert "finite" in _message(assert_float_close, bad, 0.5, tol=float("inf"))


# ------------------------------------------------------------------ assert_bool_list
def test_bool_list_accepts_a_list_of_bools():
    assert_bool_list([True, False, True], 3, name="correct")
    assert_bool_list([], 0, name="correct")


class LyingList(list):
    def __len__(self):
        return 3


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        ((True, False, True), "got tuple"),
        (np.array([True, False, True]), "got numpy.ndarray"),
        (LyingList([True]), "LyingList"),
        ([True, False], "expected 3 entries (one per item), got 2"),
        ([True, 1, False], "entry 1 has type int"),
        ([True, np.bool_(False), True], "entry 1 has type numpy.bool"),
        ([True, AlwaysEqual(), True], "AlwaysEqual"),
    ],
    ids=["tuple", "ndarray", "list-subclass", "wrong-length", "int", "numpy-bool", "always-equal"],
)
def test_bool_list_rejects_other_shapes_and_types(answer, shown):
    message = _message(assert_bool_list, answer, 3, name="correct")
    assert message.startswith("correct:")
    assert shown in message
