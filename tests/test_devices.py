"""`--device gpu` where a framework cannot use one: one line that says why and what to install.

Each framework's device query is mocked, so both causes (a CPU-only build; a CUDA build that
sees no GPU) are tested on this CPU machine. The memory settings that let JAX and TensorFlow
share one GPU in one process are checked where they must hold: before the framework starts.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import backends
from common.errors import DeviceError
from helpers import require_backend, tiny_corpus

ROOT = Path(__file__).resolve().parent.parent


def _gpu_error(name: str) -> str:
    with pytest.raises(DeviceError) as caught:
        backends.load(name).check_device("gpu")
    message = str(caught.value)
    assert "\n" not in message and message.endswith("this machine offers: cpu")
    return message


def _mock_torch(monkeypatch: pytest.MonkeyPatch, cuda: str | None, gpus: int) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)


def _mock_jax(monkeypatch: pytest.MonkeyPatch, plugins: list[str], error: str) -> None:
    import jax

    from backends.jax import backend as jax_backend

    def no_gpu(*args: object) -> list:
        if args and args[0] == "gpu":
            raise RuntimeError(error)
        return []

    monkeypatch.setattr(jax, "devices", no_gpu)
    monkeypatch.setattr(jax_backend, "_cuda_plugins", lambda: plugins)


def _mock_tf(monkeypatch: pytest.MonkeyPatch, built_with_cuda: bool) -> None:
    import tensorflow as tf

    from backends.tf import backend as tf_backend

    monkeypatch.setattr(tf.test, "is_built_with_cuda", lambda: built_with_cuda)
    monkeypatch.setattr(tf_backend, "_gpu_count", lambda: 0)


def _mock_mxnet(monkeypatch: pytest.MonkeyPatch, built_with_cuda: bool) -> None:
    import mxnet as mx

    class Features:
        def is_enabled(self, feature: str) -> bool:
            return built_with_cuda and feature == "CUDA"

    monkeypatch.setattr(mx.context, "num_gpus", lambda: 0)
    monkeypatch.setattr(mx.runtime, "Features", Features)


# backend -> (mock a CPU-only build, mock a CUDA build with no GPU, words each message needs)
CASES = {
    "torch": (lambda mp: _mock_torch(mp, None, 0), lambda mp: _mock_torch(mp, "12.6", 0),
              ("CPU-only build", "make env-gpu"), ("built for CUDA 12.6", "sees no GPU")),
    "jax": (lambda mp: _mock_jax(mp, [], "Unknown backend: 'gpu' requested"),
            lambda mp: _mock_jax(mp, ["jax-cuda12-plugin"],
                                 "Unable to initialize backend 'cuda': no CUDA device\nmore"),
            ("no CUDA plugin", "jax[cuda12]", "make env-gpu"),
            ("jax-cuda12-plugin", "finds no GPU", "Unable to initialize backend 'cuda'")),
    "tf": (lambda mp: _mock_tf(mp, False), lambda mp: _mock_tf(mp, True),
           ("built without CUDA", "tensorflow[and-cuda]", "make env-gpu"),
           ("built with CUDA", "sees no GPU")),
    "mxnet": (lambda mp: _mock_mxnet(mp, False), lambda mp: _mock_mxnet(mp, True),
              ("CPU build", "mxnet-cu112"), ("built with CUDA", "sees no GPU")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_cpu_only_build_says_so_and_names_what_to_install(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    require_backend(name)
    cpu_only, _, expected, _ = CASES[name]
    cpu_only(monkeypatch)
    message = _gpu_error(name)
    assert all(words in message for words in expected), message


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_cuda_build_without_a_gpu_says_none_is_visible(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    require_backend(name)
    _, no_gpu, _, expected = CASES[name]
    no_gpu(monkeypatch)
    message = _gpu_error(name)
    assert all(words in message for words in expected), message


def test_numpy_says_it_is_cpu_only() -> None:
    assert "the numpy backend runs on the CPU only" in _gpu_error("numpy")


def test_a_missing_gpu_index_lists_the_gpus_without_a_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    require_backend("torch")
    _mock_torch(monkeypatch, "12.6", 2)
    cls = backends.load("torch")
    assert cls.check_device("cuda:1") == ("gpu", 1)
    with pytest.raises(DeviceError, match=r"^device 'gpu:2' is not available here; this "
                                          r"machine offers: cpu, gpu:0, gpu:1$"):
        cls.check_device("gpu:2")


def test_the_cli_prints_the_reason_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    require_backend("torch")
    from common.cli import main

    _mock_torch(monkeypatch, None, 0)
    code = main(["train", "--backend", "torch", "--device", "gpu", "--corpus",
                 str(tiny_corpus(tmp_path)), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "torch" in err[0] and "CPU-only build" in err[0] and "make env-gpu" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, variable", [("jax", "XLA_PYTHON_CLIENT_PREALLOCATE"),
                                            ("tf", "TF_FORCE_GPU_ALLOW_GROWTH")])
def test_gpu_memory_is_allocated_as_needed_unless_the_user_says_otherwise(
        name: str, variable: str) -> None:
    """Set before the framework's first device use, and never over a user's own value."""
    require_backend(name)
    probe = (f"import os, backends; backends.load({name!r}); "
             f"import {'jax' if name == 'jax' else 'tensorflow'} as fw; "
             # The GPU client does not exist yet when the backend has loaded: the setting
             # can still take effect.
             f"print(os.environ.get({variable!r}))")
    environment = {k: v for k, v in os.environ.items() if k != variable}
    for preset, expected in ((None, {"jax": "false", "tf": "true"}[name]), ("0.5", "0.5")):
        if preset is not None:
            environment[variable] = preset
        done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == expected
