"""What only the MXNet backend has: a hybridized step, torch's Adam on MXNet's kernel, dense
updates of untouched rows, a quiet start-up, and the `--device` -> mx.Context mapping.

The parity tests (test_parity.py) already hold it to the NumPy reference through the interface.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_backend
from test_parity import EMBED, VOCAB, make_batch

import backends
from backends.base import ADAM_BETAS, ADAM_EPS
from common.errors import DeviceError

mx = pytest.importorskip("mxnet")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _mxnet_backend() -> None:
    require_backend("mxnet")


def backend(**options: object):
    return backends.load("mxnet")(VOCAB, EMBED, seed=3, **options)


def test_step_runs_as_one_hybridized_graph(tmp_path):
    trainer = backend()
    assert trainer.fixed_shapes
    trainer.train_step(make_batch(np.random.default_rng(0)))
    # `export` exists only for a block that was hybridized and has run: it writes the
    # cached graph, whose nodes are the chapter's operators.
    trainer.objective.export(str(tmp_path / "step"))
    graph = (tmp_path / "step-symbol.json").read_text()
    for operator in ("Embedding", "batch_dot", "Activation"):
        assert f'"op": "{operator}"' in graph, operator


def torch_adam_reference(weight, grad, exp_avg, exp_avg_sq, step, lr):
    """torch.optim.Adam's single-tensor update, in float64."""
    beta1, beta2 = ADAM_BETAS
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    denominator = np.sqrt(exp_avg_sq) / math.sqrt(1 - beta2 ** step) + ADAM_EPS
    return weight - lr / (1 - beta1 ** step) * exp_avg / denominator, exp_avg, exp_avg_sq


def test_torch_adam_places_eps_as_torch_does():
    """With gradients near eps, MXNet's own Adam moves weights differently; TorchAdam does not."""
    from backends.mxnet.backend import TorchAdam

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(5, 4))
    grads = [rng.normal(scale=1e-8, size=(5, 4)) for _ in range(3)]  # eps-sized
    updated = {}
    for name, optimizer in (("torch", TorchAdam(0.002)),
                            ("mxnet", mx.optimizer.Adam(learning_rate=0.002))):
        array = mx.nd.array(weight, dtype="float64")
        state = optimizer.create_state(0, array)
        for grad in grads:
            optimizer.update(0, array, mx.nd.array(grad, dtype="float64"), state)
        updated[name] = array.asnumpy()

    expected, exp_avg, exp_avg_sq = weight, np.zeros_like(weight), np.zeros_like(weight)
    for step, grad in enumerate(grads, start=1):
        expected, exp_avg, exp_avg_sq = torch_adam_reference(expected, grad, exp_avg,
                                                             exp_avg_sq, step, 0.002)
    # MXNet's kernel takes beta1, beta2 as float32 parameters: 1 - 0.999f is 0.000999987,
    # which at these tiny moments shows at 1e-5 relative.
    np.testing.assert_allclose(updated["torch"] - weight, expected - weight, rtol=1e-4)
    # The trap this guards against: eps outside the bias correction changes the step ~30x.
    assert not np.allclose(updated["mxnet"] - weight, expected - weight, rtol=0.1)


def test_dense_adam_moves_rows_the_batch_does_not_touch():
    trainer = backend()
    rng = np.random.default_rng(1)
    first = make_batch(rng)
    trainer.train_step(first)
    before_params, before_state = trainer.get_params(), trainer.optimizer_state()

    second = make_batch(rng)
    second.centers[:] = 1  # the second batch touches one centre row only
    trainer.train_step(second)
    after_params, after_state = trainer.get_params(), trainer.optimizer_state()

    untouched = [row for row in np.unique(first.centers) if row != 1]
    assert untouched
    beta1, beta2 = ADAM_BETAS
    # A zero gradient still decays the moments (lazy Adam would leave them) ...
    np.testing.assert_allclose(after_state.exp_avg.center[untouched],
                               beta1 * before_state.exp_avg.center[untouched], rtol=1e-6)
    np.testing.assert_allclose(after_state.exp_avg_sq.center[untouched],
                               beta2 * before_state.exp_avg_sq.center[untouched], rtol=1e-6)
    # ... and the remaining momentum still moves the rows.
    moved = np.abs(after_params.center[untouched] - before_params.center[untouched])
    assert np.all(moved.max(axis=1) > 0)


def test_device_flag_maps_to_mxnet_contexts(monkeypatch):
    from backends.mxnet import backend as mxnet_backend

    assert mxnet_backend.mxnet_context("cpu") == mx.cpu()
    assert backend(device="cpu").context == mx.cpu()
    # Context objects name a device without touching it, so the GPU mapping is checkable here.
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 2)
    assert mxnet_backend.available_devices() == ["cpu", "gpu:0", "gpu:1"]
    assert mxnet_backend.mxnet_context("gpu") == mx.gpu(0)
    assert mxnet_backend.mxnet_context("gpu:1") == mx.gpu(1)
    assert mxnet_backend.mxnet_context("cuda:1") == mx.gpu(1)
    with pytest.raises(DeviceError, match="offers: cpu, gpu:0, gpu:1"):
        mxnet_backend.mxnet_context("gpu:2")


@pytest.mark.parametrize("name", ["mxnet", "gluon"])
def test_cli_output_has_no_mxnet_noise(tmp_path, name):
    """A CLI run prints the project's lines only: no C++ log, no warnings, even when shown."""
    environment = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="default")
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "train", "--backend", name, "--corpus", "lee",
         "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].startswith("corpus lee:") and lines[-1].startswith("run folder:")
    assert "training with mxnet 1.9.1 on cpu" in done.stdout
    for line in lines:
        # MXNet's C++ logging starts lines with a [hh:mm:ss] time stamp.
        assert not re.match(r"\[\d\d:\d\d:\d\d\]", line), line
        assert "Warning" not in line and "StorageManager" not in line, line
