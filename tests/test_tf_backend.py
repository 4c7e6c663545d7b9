"""What only the TensorFlow backend has: the chapter step on Keras (its layers, one tape, Keras'
Adam with torch's eps placement), one trace per compiled function, the fast step's grouped
steps and torch's Adam written out, SparseAdam as a masked update, devices, a quiet start-up.

Both steps are held to the NumPy reference here (loss and gradients, three Adam steps, the
optimiser-state round trip, the linear schedule across a reload); `train_steps` (several
steps in one compiled call, over autodiff blocks) is compared too.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import EMBED, VOCAB, assert_params_close, make_batch, require_backend, tiny_corpus

import backends
from backends.base import ADAM_BETAS, ADAM_EPS
from common.config import STEPS
from common.errors import ConfigError, DeviceError

ROOT = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"^([IWEF]\d{4} |\d{4}-\d\d-\d\d .*: [IWEF] )|oneDNN|cuda|absl",
                      re.IGNORECASE)


@pytest.fixture(autouse=True)
def _tf_backend() -> None:
    require_backend("tf")


def backend(**options: object):
    return backends.load("tf")(VOCAB, EMBED, seed=3, **options)


# -- the chapter step is Keras' -----------------------------------------------------------------
def test_chapter_step_is_keras_layers_one_tape_and_keras_adam():
    import keras

    model = backend(step="chapter")
    assert isinstance(model.model, keras.Model)
    assert [type(layer).__name__ for layer in (model.model.center, model.model.context)] == \
        ["Embedding", "Embedding"]
    assert type(model.trainer.optimizer) is keras.optimizers.Adam
    assert model.steps_per_call == 1 and type(model).steps_per_call > 1
    rng = np.random.default_rng(3)
    batches = [make_batch(rng, batch_size=size) for size in (12, 7, 12)]
    model.train_steps(batches)
    # One call per batch: Keras counted every step, the trace was made once for all shapes.
    assert int(model.trainer.optimizer.iterations.numpy()) == model.adam_steps == 3
    assert model.traces == {"train_step": 1}


def test_chapter_step_keeps_the_lookups_gradients_as_indexed_slices():
    """The sparse optimisers' chapter route: one graph (no XLA, `tf.unique`'s shape is the
    data's), its row optimiser counting one step per call."""
    model = backend(step="chapter", optimizer="sparse_adam")
    rng = np.random.default_rng(3)
    model.train_steps([make_batch(rng, batch_size=size) for size in (12, 7, 12)])
    assert int(model.trainer.step_count.numpy()) == model.adam_steps == 3
    assert model.traces == {"train_step": 1}


# -- compilation -----------------------------------------------------------------------------
def test_pipeline_batches_trace_and_compile_once(tmp_path):
    from common.config import TrainConfig
    from common.data import prepare_training_data
    from common.training import step_groups

    model_class = backends.load("tf")
    config = TrainConfig(backend="tf", corpus=str(tiny_corpus(tmp_path)), min_freq=1,
                         batch_size=60, embed_size=8, subsample_t=1.0).validate()
    data = prepare_training_data(config, fixed_shapes=model_class.fixed_shapes,
                                 log=lambda line: None)
    batches = list(data.batches(0)) + list(data.batches(1))
    # One (B, L) for every batch (so XLA compiles once), the last one padded with mask-0 rows.
    assert {batch.contexts_negatives.shape for batch in batches} == {(60, config.max_length)}
    assert not batches[-1].masks[-1].any() and batches[-1].masks[0].any()

    model = model_class(len(data.vocab), 8, step="fast")
    # Groups as the epoch driver makes them: full ones and short ones at report points.
    groups = list(step_groups(batches, model.steps_per_call, lambda index: index % 13 == 12))
    assert {len(group) for group in groups} != {model.steps_per_call}
    losses = [loss for group in groups for loss in model.train_steps(group)]
    losses.append(model.train_step(batches[0]))
    losses.append(model.train_step(batches[-1]))
    assert np.isfinite(model.losses_to_numpy(losses)).all()
    assert len(losses) == len(batches) + 2
    assert model.traces == {"train_steps": 1, "train_step": 1}
    assert model.trainer.train_steps.experimental_get_tracing_count() == 1


def test_grouped_steps_match_numpy_over_ten_steps():
    model, reference = backend(step="fast"), backends.load("numpy")(VOCAB, EMBED, seed=3)
    rng = np.random.default_rng(7)
    # 40 and 64 rows make two autodiff blocks, one of them padded; 7 rows one padded block.
    batches = [make_batch(rng, batch_size=size) for size in (40, 64, 7, 12, 40) * 2]
    # One short group, then more batches than one call takes (8 + 1).
    losses = model.train_steps(batches[:1]) + model.train_steps(batches[1:])
    expected = [reference.train_step(batch) for batch in batches]
    np.testing.assert_allclose(model.losses_to_numpy(losses),
                               reference.losses_to_numpy(expected), rtol=1e-5)
    assert_params_close(model.get_params(), reference.get_params(), rtol=1e-5, atol=1e-6)
    state, expected_state = model.optimizer_state(), reference.optimizer_state()
    assert state.step == expected_state.step == 10
    assert_params_close(state.exp_avg, expected_state.exp_avg, rtol=1e-5, atol=1e-7)


def test_train_steps_leave_the_losses_on_the_device():
    import tensorflow as tf

    model = backend(step="fast")
    losses = model.train_steps([make_batch(np.random.default_rng(4))] * 3)
    assert len(losses) == 3
    assert all(isinstance(loss, tf.Tensor) and loss.shape == () for loss in losses)
    assert isinstance(model.train_step(make_batch(np.random.default_rng(5))), tf.Tensor)
    assert model.losses_to_numpy(losses).dtype == np.float64
    assert model.train_steps([]) == [] and model.losses_to_numpy([]).shape == (0,)


# -- the optimisers --------------------------------------------------------------------------
def _torch_adam(gradient: np.ndarray, steps: int, lr: float = 0.002) -> np.ndarray:
    """torch.optim.Adam's update of a zero table, `steps` times with the same gradient."""
    beta1, beta2 = ADAM_BETAS
    expected, m, v = np.zeros(gradient.shape), np.zeros(gradient.shape), np.zeros(gradient.shape)
    for step in range(1, steps + 1):
        m = beta1 * m + (1 - beta1) * gradient
        v = beta2 * v + (1 - beta2) * gradient ** 2
        expected -= lr / (1 - beta1 ** step) * m / (
            np.sqrt(v) / np.sqrt(1 - beta2 ** step) + ADAM_EPS)
    return expected


def test_keras_adam_with_torch_epsilon_is_torchs_adam_and_without_it_is_not():
    """Gradients near eps tell the placements apart: torch moves a weight 0.91 lr per step
    here, Keras' Adam with a constant eps 1e-8 (its own placement) 0.30 lr, with its default
    1e-7 less. With `torch_epsilon` set per step, as the chapter step does, it is torch's."""
    import tensorflow as tf

    from backends.tf import model as tf_model

    lr, gradient = 0.002, np.full((3, 2), 1e-7, np.float32)
    expected = _torch_adam(gradient, 3, lr)
    moved = {}
    for name, epsilon in (("torch_epsilon", None), ("eps 1e-8", 1e-8), ("eps 1e-7", 1e-7)):
        table = tf.Variable(np.zeros((3, 2), np.float32))
        optimizer = tf_model.adam(lr)
        for _ in range(3):
            optimizer.epsilon.assign(tf_model.torch_epsilon(optimizer.iterations + 1)
                                     if epsilon is None else epsilon)
            optimizer.apply_gradients([(tf.constant(gradient), table)])
        moved[name] = table.numpy()
    np.testing.assert_allclose(moved["torch_epsilon"], expected, rtol=1e-5)
    assert abs(moved["torch_epsilon"][0, 0] / (-3 * lr) - 1 / 1.1) < 1e-3  # ~0.909 lr a step
    for name in ("eps 1e-8", "eps 1e-7"):
        assert np.all(np.abs(moved[name]) < 0.4 * np.abs(expected)), name


def test_fast_steps_written_out_adam_is_torchs():
    import tensorflow as tf

    from backends.tf.fast import Adam

    lr, gradient = 0.002, np.full((3, 2), 1e-7, np.float32)
    table = tf.Variable(np.zeros((3, 2), np.float32))
    adam = Adam((table,))
    for _ in range(3):
        adam.apply((tf.constant(gradient),), (table,), tf.constant(lr))
    np.testing.assert_allclose(table.numpy(), _torch_adam(gradient, 3, lr), rtol=1e-5)


def test_dense_adam_decays_untouched_rows_and_sparse_adam_leaves_them():
    dense, sparse = backend(step="fast"), backend(step="fast", optimizer="sparse_adam")
    rng = np.random.default_rng(2)
    first, second = make_batch(rng), make_batch(rng, batch_size=3)  # a small second batch
    # The same gradient; the optimisers differ only in which rows they update.
    for got, want in zip(sparse.loss_and_grads(first)[1], dense.loss_and_grads(first)[1]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)

    for model in (dense, sparse):
        model.train_step(first)
    after_first = {model.optimizer: (model.get_params(), model.optimizer_state())
                   for model in (dense, sparse)}
    for model in (dense, sparse):
        model.train_step(second)
    touched_first = np.union1d(first.centers, first.contexts_negatives)
    idle = np.setdiff1d(touched_first, np.union1d(second.centers, second.contexts_negatives))
    assert idle.size

    params, state = after_first["adam"]
    now = dense.optimizer_state()
    # Dense: the idle rows' first moments decay by beta1 and the rows keep moving.
    np.testing.assert_allclose(now.exp_avg.context[idle],
                               ADAM_BETAS[0] * state.exp_avg.context[idle], rtol=1e-6)
    assert np.all(np.abs(dense.get_params().context[idle] - params.context[idle]).max(1) > 0)

    params, state = after_first["sparse_adam"]
    now = sparse.optimizer_state()
    # Lazy: the idle rows and their moments are exactly as the first step left them.
    np.testing.assert_array_equal(now.exp_avg.context[idle], state.exp_avg.context[idle])
    np.testing.assert_array_equal(now.exp_avg_sq.context[idle], state.exp_avg_sq.context[idle])
    np.testing.assert_array_equal(sparse.get_params().context[idle], params.context[idle])
    assert now.step == 2


def test_sparse_adam_is_torchs_sparse_adam():
    """Three steps against SparseAdam's update written in NumPy on the reference's gradients."""
    model, reference = (backend(step="fast", optimizer="sparse_adam"),
                        backends.load("numpy")(VOCAB, EMBED))
    beta1, beta2 = ADAM_BETAS
    params = [table.astype(np.float64) for table in model.get_params()]
    m = [np.zeros_like(table) for table in params]
    v = [np.zeros_like(table) for table in params]
    rng = np.random.default_rng(8)
    for step in range(1, 4):
        batch = make_batch(rng, batch_size=40)
        reference.set_params([table.astype(np.float32) for table in params])
        _, gradients = reference.loss_and_grads(batch)
        model.train_step(batch)
        step_size = 0.002 * np.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        for table, ids in enumerate((batch.centers, batch.contexts_negatives)):
            rows = np.unique(ids)  # padding slots look up row 0: touched, as in torch
            g = gradients[table][rows].astype(np.float64)
            m[table][rows] += (g - m[table][rows]) * (1 - beta1)
            v[table][rows] += (g * g - v[table][rows]) * (1 - beta2)
            params[table][rows] -= step_size * m[table][rows] / (
                np.sqrt(v[table][rows]) + ADAM_EPS)
    for got, want in zip(model.get_params(), params):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    state = model.optimizer_state()
    for got, want in zip((*state.exp_avg, *state.exp_avg_sq), (*m, *v)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="adam, sparse_adam, sgd"):
        backend(optimizer="adagrad")


# -- devices ---------------------------------------------------------------------------------
def test_devices_map_to_tensorflow_device_names():
    import tensorflow as tf

    model_class = backends.load("tf")
    gpus = tf.config.list_physical_devices("GPU")
    assert model_class.devices() == ["cpu"] + [f"gpu:{i}" for i in range(len(gpus))]
    cpu = backend(device="cpu", step="fast")
    assert cpu.tf_device == "/CPU:0"
    assert all(table.device.endswith("CPU:0") for table in cpu.model.tables)
    assert cpu.trainer.block_rows is not None  # cache-sized autodiff blocks on a CPU
    if gpus:
        for step in STEPS:
            gpu = backend(device="cuda:0", step=step)
            assert gpu.tf_device == "/GPU:0"
            assert all(table.device.endswith("GPU:0") for table in gpu.model.tables)
            exp_avg, exp_avg_sq = gpu.trainer.moments
            assert all(m.device.endswith("GPU:0") for m in (*exp_avg, *exp_avg_sq))
        assert backend(device="cuda:0", step="fast").trainer.block_rows is None
    else:
        with pytest.raises(DeviceError, match="this machine offers: cpu$"):
            backend(device="gpu")


# -- a quiet start-up ------------------------------------------------------------------------
def test_native_start_up_logs_are_held_back_and_other_output_kept(capfd, monkeypatch):
    from backends.tf import quiet_native_logs

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # what importing jax first leaves
    with quiet_native_logs():
        os.write(2, b"I0000 00:00:1.5 12 port.cc:153] oneDNN custom operations are on.\n"
                    b"E0000 00:00:1.6 12 cuda_platform.cc:52] failed call to cuInit\n"
                    b"a message that is not a log line\n")
    assert capfd.readouterr().err == "a message that is not a log line\n"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # asks for everything
    with quiet_native_logs():
        os.write(2, b"I0000 00:00:1.5 12 port.cc:153] oneDNN custom operations are on.\n")
    assert "oneDNN" in capfd.readouterr().err


@pytest.mark.parametrize("first", ["", "import jax\n"])
def test_cli_output_has_no_tensorflow_start_up_noise(tmp_path, first):
    """`w2v train --backend tensorflow` prints the run's lines only, even after jax loaded."""
    if first and backends.missing("jax"):
        pytest.skip("jax is not installed")
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("TF_", "XLA_"))}
    environment["PYTHONPATH"] = str(ROOT)
    code = (f"{first}import sys\nfrom common.cli import main\nsys.exit(main(sys.argv[1:]))")
    done = subprocess.run(
        [sys.executable, "-c", code, "train", "--backend", "tensorflow", "--corpus",
         str(tiny_corpus(tmp_path)), "--min-freq", "1", "--epochs", "1", "--batch-size", "60",
         "--embed-size", "8", "--subsample-t", "1", "--out", str(tmp_path / "run"),
         "--no-progress"], capture_output=True, text=True, env=environment, cwd=ROOT,
        timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert not [line for line in done.stdout.splitlines() if LOG_LINE.search(line)]
    assert "training with tf" in done.stdout and "tokens/sec on cpu" in done.stdout
