"""Profile resolution, device/dtype defaults and seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from posttrain.core.profiles import (
    PROFILE_ENV,
    PROFILES,
    ProfileError,
    autocast_dtype,
    default_device,
    default_dtype,
    native_bf16,
    resolve_profile,
    seed_everything,
)


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(PROFILE_ENV, raising=False)


def test_argument_wins_over_environment(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "colab")
    assert resolve_profile("tiny") is PROFILES["tiny"]


def test_environment_variable_is_used_and_normalised(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, " Colab ")
    assert resolve_profile() is PROFILES["colab"]
    monkeypatch.setenv(PROFILE_ENV, "tiny")
    assert resolve_profile().name == "tiny"


@pytest.mark.parametrize(("cuda", "expected"), [(False, "tiny"), (True, "colab")])
def test_default_follows_cuda_availability(no_env, monkeypatch, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_profile().name == expected


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_unknown_profile_lists_the_valid_ones(monkeypatch, source):
    monkeypatch.setenv(PROFILE_ENV, "gpu-cluster" if source == "environment" else "tiny")
    with pytest.raises(ProfileError) as info:
        resolve_profile("gpu-cluster" if source == "argument" else None)
    message = str(info.value)
    assert "'gpu-cluster'" in message
    assert "['colab', 'tiny']" in message
    assert f"{PROFILE_ENV}=tiny" in message
    assert isinstance(info.value, ValueError)


def test_profiles_say_whether_they_need_the_hub():
    assert PROFILES["tiny"].needs_hub is False
    assert PROFILES["colab"].needs_hub is True
    assert PROFILES["colab"].chat_model == "Qwen/Qwen2.5-0.5B-Instruct"


def test_default_device_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")


def test_a_cpu_trains_and_evaluates_in_float32():
    assert default_dtype(torch.device("cpu")) is torch.float32
    assert autocast_dtype(torch.device("cpu")) is None


@pytest.mark.parametrize(
    ("gpu", "capability", "expected"),
    [
        ("T4", (7, 5), torch.float16),  # bf16 only emulated: fp16 + GradScaler
        ("V100", (7, 0), torch.float16),
        ("A100", (8, 0), torch.bfloat16),
        ("L4", (8, 9), torch.bfloat16),
        ("H100", (9, 0), torch.bfloat16),
    ],
)
def test_a_gpu_gets_bf16_only_where_it_is_native(monkeypatch, gpu, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # True on a T4 too
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args, **kwargs: capability)
    cuda = torch.device("cuda")
    assert native_bf16(cuda) is (expected is torch.bfloat16), gpu
    assert default_dtype(cuda) is expected and autocast_dtype(cuda) is expected, gpu


def test_seed_everything_makes_draws_repeatable():
    seed_everything(123)
    first = (torch.rand(5), random.random(), np.random.rand())
    seed_everything(123)
    second = (torch.rand(5), random.random(), np.random.rand())
    assert torch.equal(first[0], second[0])
    assert first[1:] == second[1:]
    seed_everything(124)
    assert not torch.equal(torch.rand(5), first[0])


def test_run_environment_names_versions_and_the_cpu_kernel_path_in_force():
    import json
    import subprocess
    import sys

    from posttrain.core.profiles import run_environment

    env = run_environment()
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads()
    assert env["transformers"][0].isdigit() and env["peft"][0].isdigit()
    lowered = subprocess.run(
        [sys.executable, "-c", "import json, posttrain.core.profiles as p; print(json.dumps(p.run_environment()))"],
        env={**os.environ, "ATEN_CPU_CAPABILITY": "default"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(lowered.stdout)["cpu_capability"] == "DEFAULT"
