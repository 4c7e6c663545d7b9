"""What only the torch backend has: a hand-derived gradient with two routes, and SparseAdam.

The parity tests compare `loss_and_grads` with NumPy; here the hand-derived gradient is also
checked against torch's own autograd on the chapter's model, and the GPU route (index_add_)
against the CPU route (CSR product), both runnable on a CPU.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import require_backend
from test_parity import EMBED, VOCAB, make_batch

import backends
from common.errors import ConfigError

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _torch_backend() -> None:
    require_backend("torch")


def backend(**options: object):
    return backends.load("torch")(VOCAB, EMBED, seed=3, **options)


def test_hand_derived_gradient_equals_autograd():
    dense = backend()
    batch = make_batch(np.random.default_rng(0), all_padding_row=True)
    loss, grads = dense.loss_and_grads(batch)

    tensors = dense._batch_tensors(batch)
    autograd_loss = dense.model.objective(*tensors)
    expected = torch.autograd.grad(autograd_loss, [dense.model.center.weight,
                                                   dense.model.context.weight])
    assert loss == pytest.approx(float(autograd_loss.detach()), rel=1e-6)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-7)


def test_index_add_route_equals_csr_route():
    from backends.torch import model

    dense = backend()
    batch = make_batch(np.random.default_rng(1))
    tensors = dense._batch_tensors(batch)
    tables = (dense.model.center.weight.detach(), dense.model.context.weight.detach())
    routes = {}
    for name, plan in (("csr", model.scatter_plan(batch.contexts_negatives, VOCAB)),
                       ("index_add", None)):
        grads = (torch.full((VOCAB, EMBED), 7.0), torch.full((VOCAB, EMBED), 7.0))
        loss = dense._gradients(*tensors, *tables, *grads, plan)  # must overwrite the 7s
        routes[name] = (float(loss), *(g.numpy() for g in grads))
    assert routes["csr"][0] == pytest.approx(routes["index_add"][0], rel=1e-6)
    for got, want in zip(routes["csr"][1:], routes["index_add"][1:]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_sparse_adam_has_the_same_gradient_but_leaves_untouched_rows_alone():
    dense, sparse = backend(), backend(optimizer="sparse_adam")
    rng = np.random.default_rng(2)
    first, second = make_batch(rng), make_batch(rng)
    _, dense_grads = dense.loss_and_grads(first)
    _, sparse_grads = sparse.loss_and_grads(first)
    for got, want in zip(sparse_grads, dense_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)

    for model in (dense, sparse):
        model.train_step(first)
    before = sparse.get_params().context
    for model in (dense, sparse):
        model.train_step(second)
    # Rows the first batch moved and the second does not touch: dense Adam keeps moving
    # them (their moments decay), SparseAdam does not.
    touched_first = np.union1d(first.centers, first.contexts_negatives)
    idle = np.setdiff1d(touched_first, np.union1d(second.centers, second.contexts_negatives))
    assert idle.size
    np.testing.assert_array_equal(sparse.get_params().context[idle], before[idle])
    assert np.all(np.abs(dense.get_params().context[idle] - before[idle]).max(axis=1) > 0)


def test_sparse_adam_state_resumes_exactly():
    rng = np.random.default_rng(3)
    batches = [make_batch(rng) for _ in range(3)]
    trained, resumed = backend(optimizer="sparse_adam"), backend(optimizer="sparse_adam")
    for batch in batches[:2]:
        trained.train_step(batch)
    resumed.set_params(trained.get_params())
    resumed.load_optimizer_state(trained.optimizer_state())
    assert resumed.optimizer_state().step == 2
    losses = [float(model.train_step(batches[2])) for model in (trained, resumed)]
    assert losses[0] == losses[1]
    for got, want in zip(resumed.get_params(), trained.get_params()):
        np.testing.assert_array_equal(got, want)


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="sparse_adam"):
        backend(optimizer="sgd")


def test_train_step_leaves_the_loss_on_the_device():
    dense = backend()
    losses = [dense.train_step(make_batch(np.random.default_rng(4))) for _ in range(2)]
    assert all(isinstance(loss, torch.Tensor) and loss.ndim == 0 for loss in losses)
    assert dense.losses_to_numpy(losses).dtype == np.float64
    assert dense.losses_to_numpy([]).shape == (0,)
