"""What only the MXNet backend has: the pair plan and its hybridized objective, a written-out
gradient equal to autograd's, torch's Adam on MXNet's kernel, dense updates of untouched rows,
a quiet start-up, its engine setting, and the `--device` -> mx.Context mapping.

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
from common.batching import Batch
from common.errors import DeviceError

mx = pytest.importorskip("mxnet")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _mxnet_backend() -> None:
    require_backend("mxnet")


def backend(**options: object):
    return backends.load("mxnet")(VOCAB, EMBED, seed=3, **options)


def test_step_runs_the_pair_objective_as_one_hybridized_graph(tmp_path):
    trainer = backend()
    trainer.train_step(make_batch(np.random.default_rng(0)))
    # `export` exists only for a block that was hybridized and has run: it writes the
    # cached graph, whose nodes are the forward's operators.
    trainer.pairs.export(str(tmp_path / "step"))
    graph = (tmp_path / "step-symbol.json").read_text()
    for operator in ("Embedding", "FullyConnected", "Activation", "_npx_sigmoid"):
        assert f'"op": "{operator}"' in graph, operator


def test_pair_plan_lists_real_slots_sorted_by_centre():
    from backends.mxnet.model import pair_plan

    batch = Batch(centers=np.array([[3], [1], [3]], np.int32),
                  contexts_negatives=np.array([[4, 0, 2], [5, 6, 0], [0, 0, 0]], np.int32),
                  masks=np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0]], np.float32),
                  labels=np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0]], np.float32))
    plan = pair_plan(batch, vocab_size=7, capacity=6)
    capacity, count = plan.capacity, plan.count
    assert count == 4  # the all-padding row gives no pair
    center_ids, context_ids, row_starts = (plan.ids[:capacity], plan.ids[capacity:2 * capacity],
                                           plan.ids[2 * capacity:])
    signs, weights = plan.floats[:capacity], plan.floats[capacity:]
    # Example 1 (centre 1) first, then example 0 (centre 3); padding entries are zeros.
    np.testing.assert_array_equal(center_ids, [1, 1, 3, 3, 0, 0])
    np.testing.assert_array_equal(context_ids, [5, 6, 4, 2, 0, 0])
    np.testing.assert_array_equal(signs, [-1, 1, -1, 1, 0, 0])
    np.testing.assert_array_equal(weights, [0.5, 0.5, 0.5, 0.5, 0, 0])
    np.testing.assert_array_equal(row_starts, [0, 0, 2, 2, 4, 4, 4, 4])  # CSR rows 0..6


def test_written_out_gradient_matches_autograd_on_the_chapters_objective():
    """`loss_and_grads` (pairs, sparse products) against MXNet autograd on `batch_dot`."""
    from mxnet import autograd

    trainer = backend()
    batch = make_batch(np.random.default_rng(6), all_padding_row=True)
    loss, grads = trainer.loss_and_grads(batch)

    parameters = (trainer.net.center.weight, trainer.net.context.weight)
    arrays = [trainer.asarray(np.asarray(x, dtype)) for x, dtype in (
        (batch.centers, np.int32), (batch.contexts_negatives, np.int32),
        (batch.masks, np.float32), (batch.labels, np.float32))]
    with autograd.record():
        chapter_loss = trainer.objective(*arrays)
    chapter_loss.backward()
    assert loss == pytest.approx(float(chapter_loss.asnumpy()), rel=1e-5)
    for got, parameter in zip(grads, parameters):
        np.testing.assert_allclose(got, parameter.grad().asnumpy(), rtol=1e-5, atol=1e-6)


def test_padding_and_pair_capacity_change_nothing():
    """The same examples padded to more slots, and a batch past the pair capacity, agree
    with the reference; the capacity grows, smaller batches then run padded, and give bit
    for bit what they gave before it grew (so a resumed run, whose capacity starts small
    again, continues exactly)."""
    trainer, reference = backend(), backends.load("numpy")(VOCAB, EMBED, seed=3)
    rng = np.random.default_rng(8)
    large = make_batch(rng, batch_size=400)  # up to 7,200 pairs: past the first capacity
    small = make_batch(rng, batch_size=5)
    padded = Batch(np.pad(small.centers, ((0, 2), (0, 0))),  # two all-padding rows,
                   *(np.pad(array, ((0, 2), (0, 7))) for array in small[1:]))  # 7 more slots
    results = []
    for batch in (small, large, small, padded):
        loss, grads = trainer.loss_and_grads(batch)
        results.append((loss, grads))
        expected_loss, expected_grads = reference.loss_and_grads(batch)
        assert loss == pytest.approx(expected_loss, rel=1e-5)
        for got, want in zip(grads, expected_grads):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert trainer._capacity >= np.count_nonzero(large.masks) > 1024
    (first_loss, first_grads), (again_loss, again_grads) = results[0], results[2]
    assert again_loss == first_loss
    for first, again in zip(first_grads, again_grads):
        np.testing.assert_array_equal(again, first)


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


def test_two_engine_workers_unless_the_user_says_otherwise():
    """The backend asks MXNet for two CPU worker threads, before MXNet reads the setting."""
    code = ("import os, backends; backends.load('mxnet'); "
            "print(os.environ['MXNET_CPU_WORKER_NTHREADS'])")
    for given, expected in ((None, "2"), ("1", "1")):
        environment = dict(os.environ, PYTHONPATH=str(ROOT))
        environment.pop("MXNET_CPU_WORKER_NTHREADS", None)
        if given is not None:
            environment["MXNET_CPU_WORKER_NTHREADS"] = given
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=environment, cwd=ROOT, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == expected
