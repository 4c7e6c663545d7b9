"""What only the JAX backend has: one compilation per run, donated buffers, JAX devices.

The parity tests compare it with NumPy through the interface; here: the step is traced once
over a real pipeline's fixed-shape batches (the padded last one included), the chunked gradient
equals autodiff of the whole objective, parameter and optimiser buffers are updated in place,
Adam's eps sits where torch puts it (a case the generic tolerance cannot see), and `--device`
maps onto `jax.devices`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import EMBED, VOCAB, make_batch, require_backend

import backends
from common.batching import Batch
from common.config import TrainConfig
from common.errors import ConfigError, DeviceError

jax = pytest.importorskip("jax")


@pytest.fixture(autouse=True)
def _jax_backend() -> None:
    require_backend("jax")


def backend(**options: object):
    return backends.load("jax")(VOCAB, EMBED, seed=3, **options)


def _training_data(tmp_path: Path, sampling: str):
    """The CLI's data path (`prepare_training_data`) on a small text corpus, shaped as the
    jax backend asks (`fixed_shapes`)."""
    from common.data import prepare_training_data

    rng = np.random.default_rng(0)
    words = [f"w{index}" for index in range(30)]
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 12))) for _ in range(120)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = TrainConfig(corpus=str(corpus), min_freq=1, batch_size=64, embed_size=8,
                         subsample_t=1.0, max_window_size=3, num_noise_words=2,
                         sampling=sampling).validate()
    fixed_shapes = backends.load("jax").fixed_shapes
    return config, prepare_training_data(config, fixed_shapes=fixed_shapes,
                                         log=lambda line: None)


def test_the_step_compiles_once_over_a_real_pipeline(tmp_path, monkeypatch, step):
    from backends.jax import model

    traces = []
    per_example_objective = model.per_example_objective

    def counting_objective(*arrays):  # runs only while jit traces the step
        traces.append(tuple(array.shape for array in arrays))
        return per_example_objective(*arrays)

    # Both steps reach it through the module's global (fast.py imported the name early).
    monkeypatch.setattr(model, "per_example_objective", counting_objective)
    from backends.jax import fast
    monkeypatch.setattr(fast, "per_example_objective", counting_objective)
    config, data = _training_data(tmp_path, sampling="resample")
    trainer = backends.load("jax")(len(data.vocab), config.embed_size, seed=0, step=step)
    batches = [batch for epoch in range(2) for batch in data.batches(epoch)]
    last = batches[-1]
    assert data.num_examples(1) % config.batch_size, "the last batch should need padding"
    assert last.masks.shape == (config.batch_size, config.max_length)
    assert not last.masks[-1].any()  # a padding row
    losses = [trainer.train_step(batches[0])]
    traced_by_the_first_step = len(traces)
    assert traced_by_the_first_step >= 1
    losses += [trainer.train_step(batch) for batch in batches[1:]]
    assert np.isfinite(trainer.losses_to_numpy(losses)).all()
    assert len(traces) == traced_by_the_first_step, traces

    narrower = Batch(*(np.ascontiguousarray(array[:, :4]) if array.shape[1] > 1 else array
                       for array in last))
    trainer.train_step(narrower)  # the counter does count: a new shape is a new trace
    assert len(traces) > traced_by_the_first_step


@pytest.mark.parametrize("batch_size, chunk_rows, chunks", [(13, 5, 3), (12, 4, 3),
                                                          (12, 100, 1)])
def test_chunked_gradient_equals_autodiff_of_the_whole_objective(monkeypatch, batch_size,
                                                                   chunk_rows, chunks):
    """(13, 5): three chunks of 5 rows, two of them padding; (12, 100): one chunk."""
    from backends.jax import fast

    batch = make_batch(np.random.default_rng(batch_size + chunk_rows), batch_size,
                       all_padding_row=True)
    slots = batch.masks.shape[1]
    monkeypatch.setattr(fast, "CHUNK_ELEMENTS", chunk_rows * slots * EMBED)
    assert fast.chunking(batch_size, slots, EMBED, chunked=True)[0] == chunks
    loss, grads = backend(step="fast").loss_and_grads(batch)
    # The chapter step: jax.value_and_grad of the module's whole objective.
    autodiff_loss, autodiff_grads = backend(step="chapter").loss_and_grads(batch)
    assert loss == pytest.approx(autodiff_loss, rel=1e-6)
    for got, want in zip(grads, autodiff_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_parameter_and_optimizer_buffers_are_updated_in_place(step):
    trainer = backend(step=step)
    rng = np.random.default_rng(0)
    trainer.train_step(make_batch(rng))  # the first step may copy host-owned inputs

    def buffers() -> list[int]:
        leaves = jax.tree.leaves((trainer._params, trainer._opt_state))
        return [leaf.unsafe_buffer_pointer() for leaf in leaves if leaf.ndim == 2]

    before = buffers()
    assert len(before) == 6  # both tables, both moments of each
    old_leaves = jax.tree.leaves(trainer._params)
    trainer.train_step(make_batch(rng))
    assert buffers() == before  # XLA wrote the new values where the donated ones were
    assert all(leaf.is_deleted() for leaf in old_leaves)


def test_adam_eps_sits_where_torch_puts_it(step):
    """Tables near 1e-7 give gradients near eps, where its placement decides the step.

    Measured after three steps: eps 1e-7 (Keras' default) moves parameters by 2e-5, eps
    inside the square root (`eps_root`) by 6e-7, both far outside this test's 1e-7 (5e-5 of
    lr); the parity test's gradients are far above eps and cannot tell. The 1e-7 leaves room
    for Optax computing 1 - beta2^t in float32 (the reference, as torch, in float64).
    """
    trainer, reference = backend(step=step), backends.load("numpy")(VOCAB, EMBED, seed=3)
    tiny = reference.get_params()._replace(center=reference.get_params().center * 1e-6,
                                           context=reference.get_params().context * 1e-6)
    trainer.set_params(tiny)
    reference.set_params(tiny)
    rng = np.random.default_rng(1)
    for _ in range(3):
        batch = make_batch(rng, first_id=0)  # the draw the tolerance above was measured on
        trainer.train_step(batch)
        reference.train_step(batch)
    for got, want in zip(trainer.get_params(), reference.get_params()):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)


def test_train_step_leaves_the_loss_on_the_device():
    loss = backend().train_step(make_batch(np.random.default_rng(2)))
    assert isinstance(loss, jax.Array) and loss.shape == ()


def test_the_sparse_optimizers_compile_a_few_row_counts_and_keep_no_optax_state():
    """Local batches are padded to a power-of-two row count: one program per count."""
    trainer = backend(optimizer="sgd")
    batch = make_batch(np.random.default_rng(3))
    smaller = batch._replace(masks=batch.masks * (np.arange(len(batch.masks)) < 4)[:, None])
    for each in (batch, smaller, batch):  # other rows, the same (B, L)
        trainer.train_step(each)
    assert trainer._row_step._cache_size() == 1  # VOCAB=40 rows fit the smallest count, 64
    assert trainer._opt_state is None and trainer.optimizer_state().exp_avg.center.shape == \
        (0, trainer.embed_size)


def test_devices_map_onto_jax_devices():
    jax_backend = backends.load("jax")
    gpus = [device for device in jax.devices() if device.platform == "gpu"]
    assert jax_backend.devices() == ["cpu"] + [f"gpu:{index}" for index in range(len(gpus))]

    trainer = backend(device="cpu")
    assert trainer.jax_device == jax.devices("cpu")[0]
    loss = trainer.train_step(make_batch(np.random.default_rng(3)))
    assert loss.devices() == {jax.devices("cpu")[0]}
    for leaf in jax.tree.leaves(trainer._params):
        assert leaf.devices() == {jax.devices("cpu")[0]}
    if gpus:
        assert backend(device="gpu:0").jax_device == jax.devices("gpu")[0]
    else:
        with pytest.raises(DeviceError, match="this machine offers: cpu$"):
            backend(device="gpu")


def test_the_flax_module_alone_is_xavier_uniform():
    from flax import nnx

    from backends.jax import model

    vocab_size, embed_size = 300, 50
    module = model.SkipGramModel(vocab_size, embed_size, rngs=nnx.Rngs(0))
    bound = np.sqrt(6 / (vocab_size + embed_size))
    for table in (module.center.embedding[...], module.context.embedding[...]):
        table = np.asarray(table)
        assert table.shape == (vocab_size, embed_size)
        assert np.abs(table).max() <= bound
        assert np.abs(table).max() > 0.99 * bound  # uniform up to the bound, not N(0, 1)
        assert table.std() == pytest.approx(bound / np.sqrt(3), rel=0.02)


def test_probing_for_a_gpu_is_silent_and_never_fails(monkeypatch, caplog):
    """jaxlib without a GPU plugin raises for jax.devices("gpu") and may log a notice first
    (\"An NVIDIA GPU may be present ...\"): the device list just says cpu, in silence."""
    import logging

    from backends.jax import backend as jax_backend

    real_devices = jax.devices

    def devices_without_gpu_plugin(kind: str | None = None):
        if kind != "gpu":
            return real_devices(kind)
        logging.getLogger("jax._src.xla_bridge").warning(
            "An NVIDIA GPU may be present on this machine, but a CUDA-enabled jaxlib is not "
            "installed. Falling back to cpu.")
        raise RuntimeError("Unknown backend: 'gpu' requested, but no platforms that are "
                           "instances of gpu are present.")

    monkeypatch.setattr(jax_backend.jax, "devices", devices_without_gpu_plugin)
    with caplog.at_level(logging.WARNING):
        assert jax_backend.JaxBackend.devices() == ["cpu"]
    assert not caplog.records
