"""What only the MXNet backend has: the chapter step on Gluon (autograd, one hybridized graph,
`gluon.Trainer`'s Adam with torch's eps placement), the fast step's pair plan and hybridized
objective, its written-out gradient equal to autograd's, torch's Adam on MXNet's kernel and on
the native one (built on first use, with its fallback), dense updates of untouched rows, every
array of a step on the tables' context, a quiet start-up, its engine setting, and the
`--device` -> mx.Context mapping.

Both steps are held to the NumPy reference here (loss and gradients, three Adam steps, the
optimiser-state round trip, the linear schedule across a reload).
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import EMBED, VOCAB, assert_params_close, make_batch, require_backend, tiny_corpus

import backends
from backends.base import ADAM_BETAS, ADAM_EPS
from common.batching import Batch
from common.config import STEPS
from common.errors import ConfigError, DeviceError

mx = pytest.importorskip("mxnet")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _mxnet_backend() -> None:
    require_backend("mxnet")


def backend(**options: object):
    return backends.load("mxnet")(VOCAB, EMBED, seed=3, **options)


# -- the chapter step is Gluon's -------------------------------------------------------------------
def test_chapter_step_is_autograd_through_one_graph_and_gluons_trainer(tmp_path):
    model = backend(step="chapter")
    chapter = model.trainer
    assert isinstance(chapter.trainer, mx.gluon.Trainer)
    assert type(chapter.trainer.optimizer) is mx.optimizer.Adam
    assert isinstance(model.net.center, mx.gluon.nn.Embedding)
    assert isinstance(chapter.objective.loss, mx.gluon.loss.SigmoidBCELoss)
    model.train_steps([make_batch(np.random.default_rng(0)) for _ in range(2)])
    # `trainer.step(1)`: gradients taken as they are (the sum objective's), not divided by B.
    assert chapter.trainer.optimizer.rescale_grad == 1.0
    assert chapter.trainer.optimizer.num_update == model.adam_steps == 2
    # `export` exists only for a block that was hybridized and has run: it writes the
    # cached graph, whose nodes are the forward's operators.
    chapter.objective.export(str(tmp_path / "chapter"))
    graph = (tmp_path / "chapter-symbol.json").read_text()
    for operator in ("Embedding", "batch_dot"):
        assert f'"op": "{operator}"' in graph, operator


def _gluon_adam_steps(epsilon_of_step, gradient: np.ndarray, steps: int) -> np.ndarray:
    """A zero (V, E) table after `steps` Gluon Trainer Adam steps with the same gradient."""
    from backends.mxnet import model as mx_model

    net = mx_model.SkipGramModel(*gradient.shape)
    net.initialize(ctx=mx.cpu())
    for parameter in (net.center.weight, net.context.weight):
        parameter.set_data(mx.np.zeros(gradient.shape))
    trainer = mx_model.trainer(net, 0.002)
    for step in range(1, steps + 1):
        with mx.autograd.record():  # d/dw sum(w * gradient) = gradient, for both tables
            total = sum((parameter.data() * mx.np.array(gradient)).sum()
                        for parameter in (net.center.weight, net.context.weight))
        total.backward()
        trainer.optimizer.epsilon = epsilon_of_step(step)
        trainer.step(1)
    return net.center.weight.data().asnumpy()


def test_mxnet_adam_with_torch_epsilon_is_torchs_adam_and_without_it_is_not():
    """MXNet's Adam adds eps to the uncorrected sqrt(v) (mx.optimizer.Adam.update folds the
    bias corrections into the rate). Gradients near eps tell the placements apart: torch moves
    a weight 0.91 lr per step here, MXNet's Adam with its constant eps 1e-8 about 0.3 lr.
    With `model.torch_epsilon` set per step, as the chapter step does, it is torch's."""
    from backends.mxnet import model as mx_model

    gradient = np.full((3, 2), 1e-7, np.float32)
    expected, exp_avg, exp_avg_sq = np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 2))
    for step in range(1, 4):
        expected, exp_avg, exp_avg_sq = torch_adam_reference(expected, gradient, exp_avg,
                                                             exp_avg_sq, step, 0.002)
    torch_like = _gluon_adam_steps(mx_model.torch_epsilon, gradient, 3)
    constant = _gluon_adam_steps(lambda step: ADAM_EPS, gradient, 3)
    # MXNet's kernel takes beta2 as a float32: 1 - 0.999f shows at 1e-5 relative here.
    np.testing.assert_allclose(torch_like, expected, rtol=1e-4)
    assert np.all(np.abs(constant) < 0.4 * np.abs(expected))


def test_a_constant_eps_misses_the_oracle_where_the_per_step_eps_meets_it():
    """Three chapter steps on the parity batches: with MXNet's own placement (eps 1e-8
    constant) the parameters leave float32 tolerance of the oracle (by ~1e-5, in rows whose
    gradients are small); with `torch_epsilon` per step (the chapter step) they stay in it."""
    from backends.mxnet.model import torch_epsilon

    results = {}
    for name in ("constant", "per step"):
        model, reference = backend(step="chapter"), backends.load("numpy")(VOCAB, EMBED, seed=3)
        chapter = model.trainer
        rng = np.random.default_rng(4)
        for step in range(1, 4):
            batch = make_batch(rng)
            reference.train_step(batch)
            with mx.autograd.record():
                losses = chapter.objective(*chapter.batch_arrays(batch))
            losses.backward()
            chapter.trainer.optimizer.epsilon = (ADAM_EPS if name == "constant"
                                                 else torch_epsilon(step))
            chapter.trainer.step(1)
        results[name] = (model.get_params(), reference.get_params())
    got, want = results["per step"]
    assert_params_close(got, want, rtol=1e-5, atol=1e-6)
    got, want = results["constant"]
    assert not all(np.allclose(mine, theirs, rtol=1e-5, atol=1e-6)
                   for mine, theirs in zip(got, want))
    assert_params_close(got, want, rtol=0, atol=1e-4)  # the same training, less exactly


# -- every array of a step on the tables' context -----------------------------------------------
@pytest.mark.parametrize("step, kernel", [("chapter", "auto"), ("fast", "auto"),
                                          ("fast", "builtin")])
def test_every_array_of_a_step_is_on_the_tables_context(monkeypatch, step, kernel):
    """On cpu(1), a context of its own (MXNet keeps an array's context even where cpu(0)
    would compute the same), every array a step creates must be on cpu(1): an array made
    without `ctx` (such as a CSR matrix) lands on cpu(0), and on a GPU it would be on the
    CPU beside GPU tables. NDArray.__init__ runs for every array handed to Python."""
    from backends.mxnet import backend as mxnet_backend

    monkeypatch.setenv("W2V_MXNET_KERNEL", kernel)
    monkeypatch.setattr(mxnet_backend, "mxnet_context", lambda device: mx.cpu(1))
    model = backend(step=step)
    rng = np.random.default_rng(0)
    model.train_step(make_batch(rng))  # the first step builds (graphs, kernels, states)
    created = []
    original = mx.nd.NDArray.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(mx.nd.NDArray, "__init__", record)
    batch = make_batch(rng)
    losses = [model.train_step(batch), model.eval_loss(batch)]
    model.loss_and_grads(batch)
    monkeypatch.setattr(mx.nd.NDArray, "__init__", original)
    mx.nd.waitall()
    assert len(created) > 10
    assert {str(array.ctx) for array in created} == {"cpu(1)"}
    tables = model.net.tables
    state = (model.trainer.optimizer.moments.values() if step == "fast" else
             model.trainer._updater().states.values())
    for array in (*tables, *losses, *(moment for pair in state for moment in pair)):
        assert array.ctx == mx.cpu(1)


# -- the fast step --------------------------------------------------------------------------------
def test_step_runs_the_pair_objective_as_one_hybridized_graph(tmp_path):
    model = backend(step="fast")
    model.train_step(make_batch(np.random.default_rng(0)))
    model.trainer.pairs.export(str(tmp_path / "step"))
    graph = (tmp_path / "step-symbol.json").read_text()
    for operator in ("Embedding", "FullyConnected", "Activation", "_npx_sigmoid"):
        assert f'"op": "{operator}"' in graph, operator


def test_pair_plan_lists_real_slots_sorted_by_centre():
    from backends.mxnet.fast import pair_plan

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
    """The fast step's gradient (pairs, written out) against the chapter step's autograd."""
    fast, chapter = backend(step="fast"), backend(step="chapter")
    batch = make_batch(np.random.default_rng(6), all_padding_row=True)
    loss, grads = fast.loss_and_grads(batch)
    chapter_loss, chapter_grads = chapter.loss_and_grads(batch)
    assert loss == pytest.approx(chapter_loss, rel=1e-5)
    assert_params_close(grads, chapter_grads, rtol=1e-5, atol=1e-6)


def test_padding_and_pair_capacity_change_nothing():
    """The same examples padded to more slots, and a batch past the pair capacity, agree
    with the reference; the capacity grows, smaller batches then run padded, and give bit
    for bit what they gave before it grew (so a resumed run, whose capacity starts small
    again, continues exactly)."""
    trainer, reference = backend(step="fast"), backends.load("numpy")(VOCAB, EMBED, seed=3)
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
    assert trainer.trainer.capacity >= np.count_nonzero(large.masks) > 1024
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
    from backends.mxnet.fast import TorchAdam

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


@pytest.mark.parametrize("step", STEPS)
def test_dense_adam_moves_rows_the_batch_does_not_touch(step):
    trainer = backend(step=step)
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
    # Only a machine without a C++ compiler adds a line: the native kernels' fallback.
    assert done.stderr == ("" if _have_compiler() else _fallback_line(done.stderr)), done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("corpus lee:") and lines[-1].startswith("run folder:")
    assert "training with mxnet 1.9.1 on cpu" in done.stdout
    for line in lines:
        # MXNet's C++ logging starts lines with a [hh:mm:ss] time stamp.
        assert not re.match(r"\[\d\d:\d\d:\d\d\]", line), line
        assert "Warning" not in line and "StorageManager" not in line, line


def _engine_threads(setting: str | None, *, after_import: bool = False) -> int:
    """Threads of a fresh process that loaded the backend (MXNET_CPU_WORKER_NTHREADS as
    given, or set only after `import mxnet`) and ran a CPU operator: the engine starts its
    CPU workers then, as many as it read from the variable when MXNet was imported."""
    late = "import os, mxnet; os.environ['MXNET_CPU_WORKER_NTHREADS'] = '2'\n" \
        if after_import else ""
    code = (f"{late}import os, backends; backends.load('mxnet'); import mxnet as mx\n"
            "(mx.nd.ones((64, 64)) * 2).wait_to_read(); mx.nd.waitall()\n"
            "print(len(os.listdir('/proc/self/task')))")
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    environment.pop("MXNET_CPU_WORKER_NTHREADS", None)
    if setting is not None:
        environment["MXNET_CPU_WORKER_NTHREADS"] = setting
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environment, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_two_engine_workers_unless_the_user_says_otherwise():
    """The backend asks MXNet for two CPU worker threads before MXNet reads the setting: the
    engine runs one more thread than with 1, one fewer than with 3 (the user's setting wins),
    and setting it after `import mxnet`, too late, leaves one."""
    one = _engine_threads("1")
    assert _engine_threads(None) == one + 1
    assert _engine_threads("3") == one + 2
    assert _engine_threads(None, after_import=True) == one


# -- the native kernels (backends/mxnet/kernels.py, adam_kernel.cc, gradient_kernel.cc) ---------

def _have_compiler() -> bool:
    from backends.mxnet import kernels

    try:
        kernels.compiler()
    except kernels.KernelError:
        return False
    return True


def _fallback_line(stderr: str) -> str:
    """`stderr` if it is exactly the one-line notice that MXNet's adam_update is used."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(FALLBACK), lines
    return stderr


FALLBACK = "w2v: mxnet uses MXNet's adam_update and sparse dot, not the native kernels"


def require_compiler() -> None:
    """Skip where no C++ compiler exists, unless CI is set: CI must build the kernel."""
    from backends.mxnet import kernels

    try:
        kernels.compiler()
    except kernels.KernelError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must build the native Adam kernel: {error}")
        pytest.skip(str(error))


def _adam_steps(kernel: str, tables: list[np.ndarray], grads: list[list[np.ndarray]]):
    """TorchAdam over `tables` (float32), one update per table per step -> tables, moments."""
    from backends.mxnet.fast import TorchAdam

    optimizer = TorchAdam(0.002, kernel=kernel)
    weights = [mx.nd.array(table, dtype="float32") for table in tables]
    for step_grads in grads:
        for index, (weight, grad) in enumerate(zip(weights, step_grads)):
            state = optimizer.create_state(index, weight)
            optimizer.update(index, weight, mx.nd.array(grad, dtype="float32"), state)
    moments = [tuple(m.asnumpy() for m in optimizer.moments[i]) for i in range(len(tables))]
    return [weight.asnumpy() for weight in weights], moments, optimizer.steps


def test_native_adam_equals_mxnets_adam_update_and_the_numpy_reference():
    """Several steps on random tables (one of a size no vector width divides): the native
    kernel gives MXNet's `adam_update` moments bit for bit and its weights within float32
    rounding (MXNet's attribute parser can put epsilon an ulp off; the kernel's is exact), and
    the reference's within float32 rounding (it computes torch's formula in another order)."""
    require_compiler()
    from backends.mxnet import kernels

    rng = np.random.default_rng(5)
    tables = [rng.normal(size=(2, VOCAB, EMBED)).astype(np.float32)[i] for i in range(2)]
    grads = [[rng.normal(scale=scale, size=(VOCAB, EMBED)).astype(np.float32) for _ in range(2)]
             for scale in (1.0, 0.1, 1e-3, 1e-8, 1.0)]  # eps-sized ones included
    for grad in grads[0]:
        grad[: VOCAB // 2] *= 1e-8  # rows whose sqrt(v) stays eps-sized
    for grad in grads[2]:
        grad[rng.random(grad.shape[0]) < 0.5] = 0  # rows the batch does not touch
    native = _adam_steps("native", tables, grads)
    assert kernels._loaded is not None and hasattr(mx.nd, kernels.OP_NAME)
    builtin = _adam_steps("builtin", tables, grads)
    for got, want in zip(native[0], builtin[0]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    for got, want in zip(native[1], builtin[1]):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert native[2] == builtin[2] == {0: len(grads), 1: len(grads)}

    from backends.numpy import optim  # the oracle's Adam

    params = [np.array(table, np.float32) for table in tables]
    exp_avg, exp_avg_sq = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    for step, step_grads in enumerate(grads, start=1):
        for index, grad in enumerate(step_grads):
            optim.adam_update(params[index], grad, exp_avg[index], exp_avg_sq[index], step,
                              0.002)
    # As MXNet's kernel, the native one takes beta2 as a float32 attribute: its 1 - beta2 is
    # 0.000999987, 1.3e-5 below the reference's, which shows in exp_avg_sq.
    for index in range(2):
        np.testing.assert_allclose(native[0][index], params[index], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(native[1][index][0], exp_avg[index], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(native[1][index][1], exp_avg_sq[index],
                                   rtol=1e-4, atol=1e-12)

    odd = rng.normal(size=(1001, 37)).astype(np.float32)  # a remainder after every vector
    odd_grads = [[rng.normal(size=odd.shape).astype(np.float32)] for _ in range(3)]
    np.testing.assert_allclose(_adam_steps("native", [odd], odd_grads)[0][0],
                               _adam_steps("builtin", [odd], odd_grads)[0][0],
                               rtol=1e-6, atol=1e-9)


def _pairs(rng, vocab: int, count: int, padding: int, empty_rows: int):
    """`count` random (centre, context, g) pairs sorted by centre, CSR row starts, and
    `padding` garbage pairs after them; `empty_rows` centre ids that get no pair."""
    allowed = rng.permutation(vocab)[empty_rows:]
    centers = np.sort(rng.choice(allowed, size=count))         # repeated ids, sorted
    contexts = rng.integers(0, vocab, size=count)              # repeated ids
    row_starts = np.zeros(vocab + 1, np.int64)
    np.cumsum(np.bincount(centers, minlength=vocab), out=row_starts[1:])
    values = rng.normal(size=count).astype(np.float32)
    garbage_ids = rng.integers(-5, 10 * vocab, size=padding)   # never read
    garbage_values = np.full(padding, np.nan, np.float32)
    return (np.concatenate([values, garbage_values]),
            np.concatenate([contexts, garbage_ids]).astype(np.int64), row_starts)


def test_native_dense_gradients_equal_the_sparse_products():
    """`w2v_dense_gradients` against `fast.dense_gradients` (two `sparse.dot`s) on random
    pairs with empty rows, repeated ids and none at all, padding after the real pairs, and
    outputs full of NaN beforehand (the operator writes them whole)."""
    require_compiler()
    from backends.mxnet import fast, kernels

    native = kernels.dense_gradients("native")
    assert native is not None and kernels.dense_gradients("builtin") is None
    rng = np.random.default_rng(11)
    for vocab, embed, count, padding, empty_rows in (
            (VOCAB, EMBED, 300, 24, 5), (97, 37, 1000, 0, 40), (13, 100, 1, 3, 12),
            (13, 100, 0, 0, 13), (13, 100, 0, 5, 13), (1, 3, 4, 1, 0)):
        values, contexts, row_starts = _pairs(rng, vocab, count, padding, empty_rows)
        tables = [rng.normal(size=(vocab, embed)).astype(np.float32) for _ in range(2)]
        got = [mx.nd.full((vocab, embed), np.nan) for _ in range(2)]
        native(mx.nd.array(values), mx.nd.array(contexts, dtype="int64"),
               mx.nd.array(row_starts, dtype="int64"), *(mx.nd.array(t) for t in tables),
               out=got)
        want = [mx.np.zeros((vocab, embed)) for _ in range(2)]
        fast.dense_gradients(mx.np.array(values[:count]),
                              mx.np.array(contexts[:count], dtype="int64"),
                              mx.np.array(row_starts, dtype="int64"),
                              *(mx.np.array(t) for t in tables), *want)
        for name, mine, theirs in zip(("centre", "context"), got, want):
            mine, theirs = mine.asnumpy(), theirs.asnumpy()
            np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6, err_msg=name)
            if count == 0:
                np.testing.assert_array_equal(mine, 0)


def test_native_dense_gradients_reject_a_bad_plan():
    require_compiler()
    from backends.mxnet import kernels

    native = kernels.dense_gradients("native")
    tables = [mx.nd.zeros((4, 3)) for _ in range(2)]
    for contexts, row_starts, message in (
            ([0, 4], [0, 1, 2, 2, 2], r"context id 4 outside \[0, 4\)"),
            ([0, 1], [0, 2, 1, 2, 2], "row_starts must not decrease"),
            ([0, 1], [0, 1, 2, 3, 3], r"row_starts\[V\] = 3 exceeds the 2 pairs given")):
        outs = [mx.nd.zeros((4, 3)) for _ in range(2)]
        with pytest.raises(mx.base.MXNetError, match=message):
            native(mx.nd.ones(2), mx.nd.array(contexts, dtype="int64"),
                   mx.nd.array(row_starts, dtype="int64"), *tables, out=outs)
            mx.nd.waitall()


def test_training_uses_the_native_kernels_and_trains_as_mxnets_operators_do(monkeypatch):
    """Native Adam and gradient kernels (auto) against `adam_update` and `sparse.dot`
    (builtin, the one switch for both) over four steps: the engine orders the gradient
    operator between the forward and both Adam updates."""
    require_compiler()
    from backends.mxnet import kernels

    monkeypatch.delenv(kernels.ENV, raising=False)
    trainers, losses = {kernel: backend(step="fast") for kernel in ("auto", "builtin")}, {}
    for kernel, trainer in trainers.items():
        trainer.trainer.optimizer.kernel = kernel
        rng = np.random.default_rng(2)
        losses[kernel] = [float(trainer.train_step(make_batch(rng)).asnumpy()) for _ in range(4)]
    assert kernels._loaded is not None
    np.testing.assert_allclose(losses["auto"], losses["builtin"], rtol=1e-6)
    auto, builtin = trainers["auto"], trainers["builtin"]
    for got, want in zip(auto.get_params(), builtin.get_params()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    auto_state, builtin_state = auto.optimizer_state(), builtin.optimizer_state()
    assert auto_state.step == builtin_state.step == 4
    for got, want in zip((*auto_state.exp_avg, *auto_state.exp_avg_sq),
                         (*builtin_state.exp_avg, *builtin_state.exp_avg_sq)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)


def test_concurrent_builds_compile_once_into_the_cache(tmp_path):
    """Two processes building into an empty cache: one compiles, the other waits for its lock
    and takes the finished library; no partial file is left behind."""
    require_compiler()
    code = ("import backends; backends.load('mxnet'); from backends.mxnet import kernels; "
            "path, seconds = kernels.build(); print(path, seconds)")
    environment = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp_path))
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=environment, cwd=ROOT)
            for _ in range(2)]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
        path, seconds = out.split()
        results.append((Path(path), float(seconds)))
    (first, first_s), (second, second_s) = results
    assert first == second and first.parent == tmp_path / "w2v-multi" / "mxnet-kernels"
    assert first.suffix == ".so" and first.stat().st_size > 0
    assert sorted([first_s, second_s])[0] == 0.0 < sorted([first_s, second_s])[1]
    assert not list(first.parent.glob("*.tmp"))


def _train_tiny(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """One short CLI training run with the mxnet backend, in a fresh process and kernel cache."""
    environment = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp_path / "cache"))
    environment.pop("W2V_MXNET_KERNEL", None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "common.cli", "train", "--backend", "mxnet", "--corpus",
         str(tiny_corpus(tmp_path)), "--min-freq", "1", "--subsample-t", "1", "--epochs", "1",
         "--batch-size", "256", "--embed-size", "8", "--out", str(tmp_path / "run"),
         "--no-progress", "--query"],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=600)


@pytest.mark.parametrize("env, reason", [
    ({"W2V_MXNET_KERNEL": "builtin"}, "W2V_MXNET_KERNEL=builtin"),
    ({"CXX": "/nonexistent"}, "the C++ compiler CXX='/nonexistent' was not found"),
])
def test_fallback_to_adam_update_says_so_once(tmp_path, env, reason):
    """Without the kernel (chosen, or no compiler) training runs on `adam_update`: one stderr
    line says so, no traceback, and nothing is built."""
    done = _train_tiny(tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert reason in _fallback_line(done.stderr)
    assert not list((tmp_path / "cache").rglob("*.so"))


def test_forced_native_kernel_without_a_compiler_is_a_one_line_error(tmp_path):
    done = _train_tiny(tmp_path, W2V_MXNET_KERNEL="native", CXX="/nonexistent")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("w2v: error: the native kernels (W2V_MXNET_KERNEL=native) "
                               "are unavailable: the C++ compiler CXX='/nonexistent' was not found")


def test_a_failing_compiler_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    from backends.mxnet import kernels

    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` command here")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", false)
    with pytest.raises(kernels.KernelError, match=r"^false failed \(exit 1\): no output$"):
        kernels.build()
    assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("*.tmp"))


def test_an_unknown_kernel_choice_is_a_config_error(monkeypatch):
    monkeypatch.setenv("W2V_MXNET_KERNEL", "fast")
    with pytest.raises(ConfigError, match="W2V_MXNET_KERNEL must be one of auto, native, "
                                          "builtin, got 'fast'"):
        backend()
