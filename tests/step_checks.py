"""Checks of one backend's step (chapter or fast) against the NumPy reference, shared by the
backend test modules that run them for both steps (a helper module, not a test module).

The loss and dense gradients, three Adam steps, the optimiser-state round trip into a fresh
model, and the linear learning-rate schedule across a reload. Tolerances are float32's, except
the second moments: MXNet's kernels take beta2 as a float32 attribute (1 - beta2 is 1.3e-5
low), which shows at 1e-5 relative there.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_parity import EMBED, VOCAB, assert_params_close, make_batch

import backends

STEPS = ("chapter", "fast")


def _pair(name: str, step: str):
    return backends.load(name)(VOCAB, EMBED, seed=3, step=step), \
        backends.load("numpy")(VOCAB, EMBED, seed=3)


def check_loss_and_gradients(name: str, step: str) -> None:
    model, reference = _pair(name, step)
    batch = make_batch(np.random.default_rng(2), all_padding_row=True)
    loss, grads = model.loss_and_grads(batch)
    expected_loss, expected_grads = reference.loss_and_grads(batch)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert_params_close(grads, expected_grads, rtol=1e-5, atol=1e-6)
    assert model.optimizer_state().step == 0  # no state changed


def check_three_steps_and_state_round_trip(name: str, step: str) -> None:
    model, reference = _pair(name, step)
    rng = np.random.default_rng(4)
    batches = [make_batch(rng), make_batch(rng, batch_size=7), make_batch(rng)]
    losses = [model.train_step(batch) for batch in batches]
    expected = [reference.train_step(batch) for batch in batches]
    np.testing.assert_allclose(model.losses_to_numpy(losses),
                               reference.losses_to_numpy(expected), rtol=1e-5)
    assert_params_close(model.get_params(), reference.get_params(), rtol=1e-5, atol=1e-6)
    state, expected_state = model.optimizer_state(), reference.optimizer_state()
    assert state.step == expected_state.step == 3
    assert_params_close(state.exp_avg, expected_state.exp_avg, rtol=1e-5, atol=1e-7)
    assert_params_close(state.exp_avg_sq, expected_state.exp_avg_sq, rtol=1e-4, atol=1e-9)

    # Into a fresh model (another seed, a step taken, so the load must overwrite), then on.
    resumed = backends.load(name)(VOCAB, EMBED, seed=9, step=step)
    resumed.train_step(batches[0])
    resumed.set_params(model.get_params())
    assert resumed.optimizer_state().step == 0
    resumed.load_optimizer_state(state)
    loaded = resumed.optimizer_state()
    assert loaded.step == 3 and resumed.adam_steps == 3
    assert_params_close(loaded.exp_avg, state.exp_avg, rtol=0, atol=0)
    assert_params_close(loaded.exp_avg_sq, state.exp_avg_sq, rtol=0, atol=0)
    last = make_batch(rng)
    loss = resumed.to_numpy(resumed.train_step(last))
    assert float(loss) == pytest.approx(float(reference.train_step(last)), rel=1e-5)
    assert_params_close(resumed.get_params(), reference.get_params(), rtol=1e-5, atol=1e-6)
    assert resumed.optimizer_state().step == 4


def check_linear_schedule_across_a_reload(name: str, step: str) -> None:
    model, reference = _pair(name, step)
    constant = backends.load("numpy")(VOCAB, EMBED, seed=3)
    rng = np.random.default_rng(7)
    batches = [make_batch(rng) for _ in range(5)]
    for trainer in (model, reference):
        trainer.set_lr_schedule("linear", 5)
    model.train_steps(batches[:2])
    resumed = backends.load(name)(VOCAB, EMBED, seed=0, step=step)
    resumed.set_lr_schedule("linear", 5)
    resumed.set_params(model.get_params())
    resumed.load_optimizer_state(model.optimizer_state())
    resumed.train_steps(batches[2:])
    for batch in batches:
        reference.train_step(batch)
        constant.train_step(batch)
    assert resumed.adam_steps == reference.adam_steps == 5
    assert_params_close(resumed.get_params(), reference.get_params(), rtol=1e-5, atol=1e-6)
    # The schedule changed the result: rates 1, 4/5, ..., 1/5 of lr, not lr throughout.
    assert not np.allclose(reference.get_params().center, constant.get_params().center,
                           rtol=1e-3, atol=0)


def check_state_moves_between_steps(name: str) -> None:
    """A run may resume with the other step: both keep the same parameters and Adam state.

    Two steps with one, the state handed over, a third with the other: the reference's three.
    """
    rng = np.random.default_rng(5)
    batches = [make_batch(rng) for _ in range(3)]
    reference = backends.load("numpy")(VOCAB, EMBED, seed=3)
    for batch in batches:
        reference.train_step(batch)
    for first, second in (STEPS, STEPS[::-1]):
        before = backends.load(name)(VOCAB, EMBED, seed=3, step=first)
        before.train_steps(batches[:2])
        after = backends.load(name)(VOCAB, EMBED, seed=0, step=second)
        after.set_params(before.get_params())
        after.load_optimizer_state(before.optimizer_state())
        after.train_step(batches[2])
        assert_params_close(after.get_params(), reference.get_params(), rtol=1e-5, atol=1e-6)
        state, expected = after.optimizer_state(), reference.optimizer_state()
        assert state.step == expected.step == 3
        assert_params_close(state.exp_avg, expected.exp_avg, rtol=1e-5, atol=1e-7)
