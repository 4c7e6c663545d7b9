"""The NumPy reference backend against the mathematics: it is the oracle for every other backend.

The chapter's numbers and shapes, gradients against central finite differences in float64,
the Xavier initialisation's bounds, and Adam against a step computed by hand.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import require_backend
from hypothesis import given, settings
from hypothesis import strategies as st

import backends
from backends.base import AdamState, Params
from backends.numpy import BACKEND, fast, model
from common.batching import Batch
from common.errors import ConfigError, DataError, DeviceError

VOCAB, EMBED = 7, 3


@pytest.fixture(autouse=True)
def _numpy_backend_ran() -> None:
    require_backend("numpy")  # records it, so CI's coverage line lists it in both environments


def _tiny_batch(dtype: type = np.float64) -> Batch:
    """B=3, L=4: a padded slot, an id repeated in a row and across rows, a repeated centre."""
    return Batch(
        centers=np.array([[2], [5], [2]], np.int32),
        contexts_negatives=np.array([[1, 3, 3, 0], [6, 2, 4, 1], [3, 0, 5, 5]], np.int32),
        masks=np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype),
        labels=np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype),
    )


def _tables(seed: int = 0, scale: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(0, scale, (VOCAB, EMBED)), rng.normal(0, scale, (VOCAB, EMBED)))


def _objective(batch: Batch, center: np.ndarray, context: np.ndarray) -> float:
    return float(model.objective(*batch, center, context))


def _backend(**kwargs: object) -> BACKEND:
    return BACKEND(VOCAB, EMBED, **kwargs)


# -- the chapter's numbers and shapes --------------------------------------------------------
def test_masked_bce_gives_the_chapters_numbers():
    pred = np.array([[1.1, -2.2, 3.3, -4.4]] * 2, np.float32)
    label = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
    loss = _backend().masked_bce(pred, label, mask)
    assert loss.shape == (2,)
    np.testing.assert_allclose(loss * mask.shape[1] / mask.sum(axis=1), [0.9352, 1.8462],
                               atol=5e-5)


def test_embed_and_skip_gram_shapes_as_in_the_chapter():
    backend = _backend()
    table = np.arange(80, dtype=np.float32).reshape(20, 4)
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    embedded = backend.embed(table, ids)
    assert embedded.shape == (2, 3, 4)
    np.testing.assert_array_equal(embedded[1, 2], table[6])

    ones_center, ones_context = np.ones((2, 1), np.int64), np.ones((2, 4), np.int64)
    pred = backend.skip_gram(ones_center, ones_context, table, table)
    assert pred.shape == (2, 1, 4)
    np.testing.assert_allclose(pred, np.full((2, 1, 4), table[1] @ table[1]))


def test_skip_gram_is_the_dot_product_of_centre_and_context_vectors():
    batch = _tiny_batch()
    center, context = _tables()
    pred = model.skip_gram(batch.centers, batch.contexts_negatives, center, context)
    expected = np.einsum("be,ble->bl", center[batch.centers[:, 0]],
                         context[batch.contexts_negatives])
    np.testing.assert_allclose(pred.reshape(3, 4), expected, rtol=1e-12)


def test_objective_is_the_chapters_rescaled_loss_summed():
    batch = _tiny_batch()
    center, context = _tables()
    pred = model.skip_gram(batch.centers, batch.contexts_negatives, center, context)
    chapter = (model.masked_bce(pred.reshape(3, 4), batch.labels, batch.masks)
               * batch.masks.shape[1] / batch.masks.sum(axis=1)).sum()
    assert _objective(batch, center, context) == pytest.approx(chapter, rel=1e-12)


def test_bce_is_stable_for_huge_logits():
    logits = np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]], np.float32)
    labels = np.array([[1, 0, 1, 1, 0]], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        bce = model.sigmoid_bce(logits, labels)
        probabilities = model.sigmoid(logits)
    np.testing.assert_allclose(bce, [[1e4, 0.0, np.log(2), 0.0, 1e4]], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(probabilities, [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-12)


# -- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("gradients, frequent_min_count", [
    (model.objective_and_gradients, None),  # the oracle (chapter step): np.add.at
    # the fast step, both paths of its scatter_add: every key via reduceat (1), mixed (2),
    # every key rare (10**6)
    (fast.objective_and_gradients, 1), (fast.objective_and_gradients, 2),
    (fast.objective_and_gradients, 10**6)])
def test_gradients_match_central_finite_differences(monkeypatch, gradients, frequent_min_count):
    if frequent_min_count is not None:
        monkeypatch.setattr(fast, "FREQUENT_KEY_MIN_COUNT", frequent_min_count)
    batch = _tiny_batch()
    center, context = _tables()
    loss, grads = gradients(*batch, center, context)
    assert float(loss) == pytest.approx(_objective(batch, center, context), rel=1e-13)

    step = 1e-6
    for table, grad in ((center, grads.center), (context, grads.context)):
        numeric = np.zeros_like(table)
        for index in np.ndindex(table.shape):
            saved = table[index]
            table[index] = saved + step
            plus = _objective(batch, center, context)
            table[index] = saved - step
            minus = _objective(batch, center, context)
            table[index] = saved
            numeric[index] = (plus - minus) / (2 * step)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    # rows no example touches get exactly zero
    assert not grads.center[[0, 1, 3, 4, 6]].any()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(0, 300), rows=st.integers(1, 40),
       frequent_min_count=st.sampled_from([1, 3, 16]))
def test_scatter_add_equals_np_add_at(seed, size, rows, frequent_min_count):
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, rows, size) ** 2 % rows  # skewed, so some keys repeat a lot
    sources = rng.integers(0, 9, size)
    weights = rng.normal(size=size)
    table = rng.normal(size=(9, 5))
    expected = rng.normal(size=(rows, 5))
    out = expected.copy()
    np.add.at(expected, keys, weights[:, None] * table[sources])
    fast.FREQUENT_KEY_MIN_COUNT, saved = frequent_min_count, fast.FREQUENT_KEY_MIN_COUNT
    try:
        fast.scatter_add(out, keys, sources, weights, table)
    finally:
        fast.FREQUENT_KEY_MIN_COUNT = saved
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_backend_gradients_are_float32_and_match_the_float64_maths():
    batch = _tiny_batch(np.float32)
    center, context = _tables()
    backend = _backend()
    backend.set_params(Params(center.astype(np.float32), context.astype(np.float32)))
    loss, grads = backend.loss_and_grads(batch)
    _, exact = model.objective_and_gradients(*_tiny_batch(), center.astype(np.float32)
                                             .astype(np.float64),
                                             context.astype(np.float32).astype(np.float64))
    assert isinstance(loss, float)
    assert grads.center.dtype == grads.context.dtype == np.float32
    np.testing.assert_allclose(grads.center, exact.center, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads.context, exact.context, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(backend.get_params().center, center.astype(np.float32))


@pytest.mark.parametrize("gradients", [model.objective_and_gradients,
                                       fast.objective_and_gradients])
def test_an_all_padding_row_contributes_nothing(gradients):
    batch = _tiny_batch()
    padded = Batch(*(np.concatenate([array, array[:1]]) for array in batch))
    padded.masks[-1] = 0
    padded.centers[-1] = 6  # a centre no other row uses: its gradient row must stay zero
    center, context = _tables()
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, grads = gradients(*padded, center, context)
    reference_loss, reference = gradients(*batch, center, context)
    assert float(loss) == pytest.approx(float(reference_loss), rel=1e-13)
    np.testing.assert_allclose(grads.center, reference.center, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(grads.context, reference.context, rtol=1e-13, atol=1e-15)
    assert not grads.center[6].any()

    everything_padded = Batch(batch.centers, batch.contexts_negatives,
                              np.zeros_like(batch.masks), batch.labels)
    loss, grads = gradients(*everything_padded, center, context)
    assert float(loss) == 0.0
    assert not grads.center.any() and not grads.context.any()


# -- initialisation -----------------------------------------------------------------------------
def test_xavier_uniform_bounds_and_spread():
    vocab, embed = 3000, 100
    params = BACKEND(vocab, embed, seed=3).get_params()
    bound = np.sqrt(6 / (vocab + embed))
    for table in params:
        assert table.shape == (vocab, embed) and table.dtype == np.float32
        assert np.abs(table).max() <= bound
        assert abs(table.mean()) < 0.01 * bound
        assert table.std() == pytest.approx(bound / np.sqrt(3), rel=0.01)
    assert not np.array_equal(params.center, params.context)
    again = BACKEND(vocab, embed, seed=3).get_params()
    np.testing.assert_array_equal(again.center, params.center)


# -- Adam ---------------------------------------------------------------------------------------
def test_first_adam_step_by_hand(step):
    # After one step m = (1-b1) g, v = (1-b2) g^2; the bias corrections cancel them, so
    # p1 = p0 - lr * g / (|g| + eps): about lr * sign(g) where g != 0, no move where g == 0.
    batch = _tiny_batch(np.float32)
    backend = _backend(lr=0.01, step=step)
    before = backend.get_params()
    _, grads = backend.loss_and_grads(batch)
    backend.train_step(batch)
    after = backend.get_params()
    for p0, g, p1 in zip(before, grads, after):
        g64 = g.astype(np.float64)
        expected = p0 - 0.01 * g64 / (np.abs(g64) + 1e-8)
        np.testing.assert_allclose(p1, expected, rtol=0, atol=1e-7)
    assert np.array_equal(after.center[0], before.center[0])  # an untouched row


def test_adam_follows_torch_formula_over_several_steps(step):
    batches = [_tiny_batch(np.float32),
               Batch(np.array([[0], [1], [6]], np.int32),
                     np.array([[2, 4, 0, 0], [3, 3, 5, 0], [1, 2, 4, 6]], np.int32),
                     np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], np.float32),
                     np.array([[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]], np.float32))]
    backend = _backend(lr=0.05, seed=4, step=step)
    params = [p.astype(np.float64) for p in backend.get_params()]
    exp_avg = [np.zeros_like(p) for p in params]
    exp_avg_sq = [np.zeros_like(p) for p in params]
    beta1, beta2, eps, lr = 0.9, 0.999, 1e-8, 0.05
    for t in range(1, 5):
        batch = batches[t % 2]
        _, grads = backend.loss_and_grads(batch)
        backend.train_step(batch)
        for index, grad in enumerate(grads):
            exp_avg[index] = beta1 * exp_avg[index] + (1 - beta1) * grad
            exp_avg_sq[index] = beta2 * exp_avg_sq[index] + (1 - beta2) * grad.astype(
                np.float64) ** 2
            denom = np.sqrt(exp_avg_sq[index]) / np.sqrt(1 - beta2 ** t) + eps
            params[index] = params[index] - lr / (1 - beta1 ** t) * exp_avg[index] / denom
        for mine, reference in zip(backend.get_params(), params):
            np.testing.assert_allclose(mine, reference, rtol=0, atol=2e-6)
    state = backend.optimizer_state()
    assert state.step == 4
    np.testing.assert_allclose(state.exp_avg.context, exp_avg[1], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(state.exp_avg_sq.center, exp_avg_sq[0], rtol=1e-5, atol=1e-12)


def test_loss_decreases_on_a_fixed_batch():
    batch = _tiny_batch(np.float32)
    backend = _backend(lr=0.05, seed=1)
    losses = [float(backend.train_step(batch)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))


def test_train_step_returns_the_loss_before_the_update_as_float32():
    batch = _tiny_batch(np.float32)
    backend = _backend()
    expected, _ = backend.loss_and_grads(batch)
    loss = backend.train_step(batch)
    assert isinstance(loss, np.float32)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert backend.losses_to_numpy([loss, loss]).dtype == np.float64


def test_optimizer_state_round_trip_resumes_exactly():
    batch = _tiny_batch(np.float32)
    first = _backend(lr=0.02, seed=7)
    for _ in range(3):
        first.train_step(batch)
    second = _backend(lr=0.02, seed=99)
    second.set_params(first.get_params())
    state = first.optimizer_state()
    second.load_optimizer_state(AdamState(state.step, state.exp_avg, state.exp_avg_sq))
    for _ in range(2):
        assert first.train_step(batch) == second.train_step(batch)
    for mine, theirs in zip(first.get_params(), second.get_params()):
        np.testing.assert_array_equal(mine, theirs)


def test_set_params_resets_the_optimizer_and_checks_shapes():
    backend = _backend()
    backend.train_step(_tiny_batch(np.float32))
    backend.set_params(backend.get_params())
    assert backend.optimizer_state().step == 0
    assert not backend.optimizer_state().exp_avg.center.any()
    with pytest.raises(DataError, match="shape"):
        backend.set_params(Params(np.zeros((VOCAB, EMBED + 1)), np.zeros((VOCAB, EMBED))))


# -- devices, options, registry -----------------------------------------------------------------
@pytest.mark.parametrize("device", ["gpu", "gpu:0", "cuda:1"])
def test_a_gpu_device_is_a_one_line_device_error(device):
    with pytest.raises(DeviceError) as error:
        _backend(device=device)
    assert "\n" not in str(error.value)


def test_an_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        _backend(optimizer="adagrad")
    assert str(error.value) == ("the numpy backend's fast step offers --optimizer adam, "
                                "sparse_adam, sgd, got 'adagrad'")


def test_registry_loads_the_numpy_backend_and_arrays_round_trip():
    assert backends.load("numpy") is BACKEND
    assert backends.missing("numpy") is None
    backend = _backend(device="cpu")
    for array in (np.arange(3, dtype=np.float32) / 3, np.arange(6, dtype=np.int32).reshape(2, 3)):
        back = backend.to_numpy(backend.asarray(array))
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)
    assert backend.losses_to_numpy([]).shape == (0,)
    losses = backend.losses_to_numpy([np.float32(0.5), np.float32(1.25)])
    assert losses.dtype == np.float64 and losses.tolist() == [0.5, 1.25]
