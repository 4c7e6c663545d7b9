"""Both steps of every backend against the NumPy oracle (`backends/numpy`, its chapter step).

A backend joins these tests by being registered: `backend_name` runs each one that is
installed here, and `step` each of its steps (`chapter`, the framework's own autodiff and
Adam; `fast`, the tuned one), so all of them must give the oracle's numbers. NumPy's own fast
step is checked against its chapter step the same way. Tolerances are float32's: the steps
sum in different orders.
"""
from __future__ import annotations

import numpy as np
import pytest

import backends
from backends.base import STEPS, Backend, Params, init_params_numpy
from common.batching import touched_rows
from common.config import DEFAULT_LR
from common.errors import ConfigError, DeviceError
from helpers import EMBED, VOCAB, assert_params_close, make_batch

RTOL, ATOL = 1e-5, 1e-6


def pair(name: str, step: str, seed: int = 0,
         optimizer: str = "adam") -> tuple[Backend, Backend]:
    """(backend with `step` and `optimizer`, the NumPy oracle with `optimizer`), both at
    init_params(seed), at the optimiser's default rate."""
    lr = DEFAULT_LR[optimizer]
    return (backends.load(name)(VOCAB, EMBED, seed=seed, step=step, optimizer=optimizer, lr=lr),
            backends.load("numpy")(VOCAB, EMBED, seed=seed, step="chapter", optimizer=optimizer,
                                   lr=lr))


# -- the chapter's numbers and shapes --------------------------------------------------------
def test_masked_loss_gives_the_chapters_numbers(backend_name, step):
    backend = backends.load(backend_name)(20, 4, step=step)
    pred = np.array([[1.1, -2.2, 3.3, -4.4]] * 2, np.float32)
    label = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
    loss = backend.to_numpy(backend.masked_bce(*map(backend.asarray, (pred, label, mask))))
    assert loss.shape == (2,)
    np.testing.assert_allclose(loss * mask.shape[1] / mask.sum(axis=1), [0.9352, 1.8462],
                               atol=1e-4)
    reference = backends.load("numpy")(20, 4).masked_bce(pred, label, mask)
    np.testing.assert_allclose(loss, reference, rtol=RTOL)


def test_embed_and_skip_gram_shapes_as_in_the_chapter(backend_name, step):
    backend = backends.load(backend_name)(20, 4, step=step)
    table = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    ids = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    embedded = backend.to_numpy(backend.embed(backend.asarray(table), backend.asarray(ids)))
    assert embedded.shape == (2, 3, 4)
    np.testing.assert_array_equal(embedded, table[ids])

    ones_center = backend.asarray(np.ones((2, 1), np.int32))
    ones_context = backend.asarray(np.ones((2, 4), np.int32))
    device_table = backend.asarray(table)
    pred = backend.to_numpy(backend.skip_gram(ones_center, ones_context, device_table,
                                              device_table))
    assert pred.shape == (2, 1, 4)
    np.testing.assert_allclose(pred, np.full((2, 1, 4), table[1] @ table[1]), rtol=RTOL)


# -- the building blocks on seeded inputs ----------------------------------------------------
def test_embed_skip_gram_and_masked_bce_match_numpy(backend_name, step):
    backend, reference = pair(backend_name, step)
    rng = np.random.default_rng(1)
    center_table, context_table = init_params_numpy(VOCAB, EMBED, seed=3)
    batch = make_batch(rng)
    arrays = {name: backend.asarray(value) for name, value in batch._asdict().items()}

    embedded = backend.embed(backend.asarray(context_table), arrays["contexts_negatives"])
    np.testing.assert_array_equal(backend.to_numpy(embedded),
                                  reference.embed(context_table, batch.contexts_negatives))

    pred = backend.skip_gram(arrays["centers"], arrays["contexts_negatives"],
                             backend.asarray(center_table), backend.asarray(context_table))
    expected = reference.skip_gram(batch.centers, batch.contexts_negatives, center_table,
                                   context_table)
    np.testing.assert_allclose(backend.to_numpy(pred), expected, rtol=RTOL, atol=ATOL)

    logits = rng.normal(0, 3, size=batch.masks.shape).astype(np.float32)
    loss = backend.masked_bce(backend.asarray(logits), arrays["labels"], arrays["masks"])
    np.testing.assert_allclose(backend.to_numpy(loss),
                               reference.masked_bce(logits, batch.labels, batch.masks),
                               rtol=RTOL, atol=ATOL)


def test_init_params_are_the_same_in_every_backend(framework_backend):
    backend, reference = pair(framework_backend, "fast", seed=7)
    assert_params_close(backend.get_params(), reference.get_params(), rtol=0, atol=0)
    backend.init_params(11)
    assert_params_close(backend.get_params(), init_params_numpy(VOCAB, EMBED, 11),
                        rtol=0, atol=0)


# -- gradients and training ------------------------------------------------------------------
def test_loss_and_grads_match_numpy(backend_name, step, optimizer):
    backend, reference = pair(backend_name, step, seed=2, optimizer=optimizer)
    batch = make_batch(np.random.default_rng(2), all_padding_row=True)
    loss, grads = backend.loss_and_grads(batch)
    expected_loss, expected_grads = reference.loss_and_grads(batch)
    assert loss == pytest.approx(expected_loss, rel=RTOL)
    assert_params_close(grads, expected_grads, rtol=RTOL, atol=ATOL)
    # Untouched rows have an exactly zero gradient, which dense Adam still decays.
    touched = np.union1d(batch.centers, batch.contexts_negatives)
    untouched = np.setdiff1d(np.arange(VOCAB), touched)
    assert untouched.size and not np.any(grads.context[untouched])


def test_train_steps_match_numpy(backend_name, step, optimizer):
    backend, reference = pair(backend_name, step, seed=4, optimizer=optimizer)
    rng = np.random.default_rng(4)
    batches = [make_batch(rng), make_batch(rng, batch_size=7), make_batch(rng)]
    losses, snapshots = [], [backend.get_params()]
    for batch in batches:
        losses.append(backend.train_step(batch))
        snapshots.append(backend.get_params())
    expected = [reference.train_step(batch) for batch in batches]
    np.testing.assert_allclose(backend.losses_to_numpy(losses),
                               reference.losses_to_numpy(expected), rtol=RTOL)
    assert_params_close(backend.get_params(), reference.get_params(), rtol=RTOL, atol=ATOL)
    state, expected_state = backend.optimizer_state(), reference.optimizer_state()
    assert state.step == 3
    assert_params_close(state.exp_avg, expected_state.exp_avg, rtol=RTOL, atol=ATOL)
    assert_params_close(state.exp_avg_sq, expected_state.exp_avg_sq, rtol=RTOL, atol=1e-9)
    # A row the first batch moved and the second does not touch: dense Adam moves it again
    # (its moments are not 0), the sparse optimisers leave it. Row 0, padding, never moves.
    first, second = touched_rows(batches[0]), touched_rows(batches[1])
    for table in range(2):
        left_out = np.setdiff1d(first[table], second[table])
        before, after = snapshots[1][table], snapshots[2][table]
        assert left_out.size, table
        moved = ~np.all(before[left_out] == after[left_out], axis=1)
        assert moved.all() if optimizer == "adam" else not moved.any(), table
        assert np.all(snapshots[0][table][0] == after[0]), table


def test_optimizer_state_round_trip_resumes_exactly(backend_name, step, optimizer):
    backend, reference = pair(backend_name, step, seed=5, optimizer=optimizer)
    rng = np.random.default_rng(5)
    first, second, third = make_batch(rng), make_batch(rng), make_batch(rng)
    reference.train_step(first)
    reference.train_step(second)
    saved = reference.optimizer_state()

    backend.train_step(third)  # state to be replaced, so the load must overwrite, not merge
    backend.set_params(reference.get_params())
    assert backend.optimizer_state().step == 0  # set_params resets the optimiser
    backend.load_optimizer_state(saved)
    loaded = backend.optimizer_state()
    assert loaded.step == 2
    assert_params_close(loaded.exp_avg, saved.exp_avg, rtol=0, atol=0)
    assert_params_close(loaded.exp_avg_sq, saved.exp_avg_sq, rtol=0, atol=0)

    loss = backend.to_numpy(backend.train_step(third))
    expected_loss = reference.train_step(third)
    assert float(loss) == pytest.approx(float(expected_loss), rel=RTOL)
    assert_params_close(backend.get_params(), reference.get_params(), rtol=RTOL, atol=ATOL)
    after, expected_after = backend.optimizer_state(), reference.optimizer_state()
    assert after.step == expected_after.step == 3
    assert_params_close(after.exp_avg, expected_after.exp_avg, rtol=RTOL, atol=ATOL)
    assert_params_close(after.exp_avg_sq, expected_after.exp_avg_sq, rtol=RTOL, atol=1e-9)


def test_a_linear_learning_rate_schedule_matches_numpy_across_a_reload(backend_name, step,
                                                                       optimizer):
    """`--lr-schedule linear` (`decay`, word2vec's, for sgd): every backend gives step t the
    same rate, also after a resume (the host's step count comes back with the optimiser
    state), in grouped calls too. The resumed half runs the other step: both keep the same
    state, so a resume may switch."""
    backend, reference = pair(backend_name, step, seed=7, optimizer=optimizer)
    lr = DEFAULT_LR[optimizer]
    constant = backends.load("numpy")(VOCAB, EMBED, seed=7, optimizer=optimizer, lr=lr)
    rng = np.random.default_rng(7)
    batches = [make_batch(rng) for _ in range(5)]
    schedule = "decay" if optimizer == "sgd" else "linear"
    for model in (backend, reference):
        model.set_lr_schedule(schedule, 5)
    backend.train_steps(batches[:2])
    for batch in batches[:2]:
        reference.train_step(batch)
        constant.train_step(batch)

    other_step = next(other for other in STEPS if other != step)
    resumed = backends.load(backend_name)(VOCAB, EMBED, seed=0, step=other_step,
                                          optimizer=optimizer, lr=lr)
    resumed.set_lr_schedule(schedule, 5)
    resumed.set_params(backend.get_params())
    resumed.load_optimizer_state(backend.optimizer_state())
    resumed.train_steps(batches[2:])
    for batch in batches[2:]:
        reference.train_step(batch)
        constant.train_step(batch)
    assert resumed.adam_steps == reference.adam_steps == 5
    assert_params_close(resumed.get_params(), reference.get_params(), rtol=RTOL, atol=ATOL)
    # The schedule changed the result: rates 1, 4/5, ..., 1/5 of lr, not lr throughout.
    assert not np.allclose(reference.get_params().center, constant.get_params().center,
                           rtol=1e-3, atol=0)


def test_an_unknown_optimizer_is_one_line_naming_what_works(backend_name, step):
    with pytest.raises(ConfigError) as error:
        backends.load(backend_name)(VOCAB, EMBED, step=step, optimizer="adagrad")
    message = str(error.value)
    assert "\n" not in message and "adagrad" in message
    assert "adam, sparse_adam, sgd" in message and step in message


# -- use -------------------------------------------------------------------------------------
def test_similar_agrees_with_numpy(framework_backend):
    backend, reference = pair(framework_backend, "fast", seed=6)
    queries = np.array([0, 5, 17, 39])
    top, sims = backend.similar(queries, 5)
    expected_top, expected_sims = reference.similar(queries, 5)
    assert top.shape == sims.shape == (4, 5)
    np.testing.assert_array_equal(top, expected_top)
    np.testing.assert_allclose(sims, expected_sims, rtol=RTOL, atol=ATOL)
    assert not np.any(top == queries[:, None])  # the query itself is left out


def test_a_missing_device_is_one_line_listing_what_exists(framework_backend):
    backend_class = backends.load(framework_backend)
    with pytest.raises(DeviceError) as error:
        backend_class(VOCAB, EMBED, device="gpu:7")
    message = str(error.value)
    assert "\n" not in message and "gpu:7" in message
    for device in backend_class.devices():
        assert device in message
