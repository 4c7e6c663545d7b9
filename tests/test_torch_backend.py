"""What only the torch backend has: a hand-derived gradient with two routes, and SparseAdam.

The parity tests compare `loss_and_grads` with NumPy; here the hand-derived gradient is also
checked against torch's own autograd on the chapter's model (batches with nearly empty and
all-padding rows included), and the GPU route (all slots, index_add_) against the CPU route
(real pairs only), both runnable on a CPU.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import EMBED, VOCAB, make_batch, require_backend

import backends
from common.batching import Batch
from common.errors import ConfigError

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _torch_backend() -> None:
    require_backend("torch")


def backend(**options: object):
    return backends.load("torch")(VOCAB, EMBED, seed=3, **options)


def sparse_rows_batch(rng: np.random.Generator) -> Batch:
    """Rows with one, two or no real slot, a row without a context word, repeated centres."""
    batch = make_batch(rng, batch_size=16, all_padding_row=True)
    masks, labels = batch.masks.copy(), batch.labels.copy()
    masks[0, 1:] = 0             # a single real slot: one context word
    masks[1, 2:] = 0             # a context word and one noise word
    masks[2, :] = 0              # padding in the middle of the batch
    labels[3, :] = 0             # noise words only
    labels *= masks
    centers = batch.centers.copy()
    centers[4:8] = centers[3]    # one centre id for several examples
    ids = np.where(masks > 0, batch.contexts_negatives, 0).astype(np.int32)
    return Batch(centers, ids, masks, labels)


def autograd_reference(vocab_size: int, batch: Batch) -> tuple[float, list[np.ndarray]]:
    """The chapter's objective and its gradients through torch's autograd (the chapter step)."""
    loss, grads = backends.load("torch")(vocab_size, EMBED, seed=3,
                                         step="chapter").loss_and_grads(batch)
    return loss, list(grads)


@pytest.mark.parametrize("case", ["chapter", "sparse_rows", "all_padding", "tiny_vocab"])
def test_hand_derived_gradient_equals_autograd(case):
    rng = np.random.default_rng(0)
    batch = make_batch(rng, all_padding_row=True)
    dense = backend()
    if case == "sparse_rows":
        batch = sparse_rows_batch(rng)
    elif case == "all_padding":  # no pair at all
        batch = batch._replace(masks=np.zeros_like(batch.masks),
                               labels=np.zeros_like(batch.labels),
                               contexts_negatives=np.zeros_like(batch.contexts_negatives))
    elif case == "tiny_vocab":  # more pairs than V * V: the logits' fallback route
        dense = backends.load("torch")(3, EMBED, seed=3)
        batch = batch._replace(centers=batch.centers % 3,
                               contexts_negatives=batch.contexts_negatives % 3)
    loss, grads = dense.loss_and_grads(batch)  # fast, on CPU: the real pairs (PairGradients)
    want_loss, want_grads = autograd_reference(dense.vocab_size, batch)
    assert loss == pytest.approx(want_loss, rel=1e-6, abs=1e-7)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_pair_plan_sorts_wide_vocabularies_too():
    """Above 65,536 rows the plan sorts int64 ids instead of 16-bit keys."""
    vocab = 70_000
    dense = backends.load("torch")(vocab, EMBED, seed=3)
    batch = sparse_rows_batch(np.random.default_rng(5))
    spread = np.array([0, 1, 40_000, 65_535, 65_536, 69_999] + list(range(2, 36)))
    batch = batch._replace(centers=spread[batch.centers].astype(np.int32),
                           contexts_negatives=spread[batch.contexts_negatives].astype(np.int32))
    loss, grads = dense.loss_and_grads(batch)
    want_loss, want_grads = autograd_reference(vocab, batch)
    assert loss == pytest.approx(want_loss, rel=1e-6)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_slot_route_equals_pair_route():
    """The GPU route (all slots, index_add_) against the CPU one (real pairs), on a CPU."""
    from backends.torch import fast

    tables = [torch.from_numpy(table) for table in backend().get_params()]
    slots = fast.DenseGradients(VOCAB, EMBED, torch.device("cpu"))
    pairs = fast.PairGradients(VOCAB)
    for batch in (make_batch(np.random.default_rng(1)),
                  sparse_rows_batch(np.random.default_rng(6))):
        ids = [torch.from_numpy(x.astype(np.int64)) for x in batch[:2]]
        floats = [torch.from_numpy(x) for x in batch[2:]]
        grads = (torch.full((VOCAB, EMBED), 7.0), torch.full((VOCAB, EMBED), 7.0))
        slot_loss = slots(*ids, *floats, *tables, *grads)  # overwrites grads
        pair_loss, *pair_grads = pairs(fast.pair_plan(batch, VOCAB), *tables)
        assert float(slot_loss) == pytest.approx(float(pair_loss), rel=1e-6)
        for got, want in zip(grads, pair_grads):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)


def test_sparse_adam_has_the_same_gradient_but_leaves_untouched_rows_alone():
    dense, sparse = backend(), backend(optimizer="sparse_adam")
    rng = np.random.default_rng(2)
    first, second = make_batch(rng), make_batch(rng, batch_size=3)  # a small second batch
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
    with pytest.raises(ConfigError, match="adam, sparse_adam, sgd"):
        backend(optimizer="adagrad")


def test_train_step_leaves_the_loss_on_the_device():
    dense = backend()
    losses = [dense.train_step(make_batch(np.random.default_rng(4))) for _ in range(2)]
    assert all(isinstance(loss, torch.Tensor) and loss.ndim == 0 for loss in losses)
    assert dense.losses_to_numpy(losses).dtype == np.float64
    assert dense.losses_to_numpy([]).shape == (0,)


def test_sgds_whole_table_route_gives_the_row_routes_numbers(monkeypatch):
    """A small vocabulary's sgd updates whole tables (zero gradients elsewhere); forced onto
    the renumbered rows' route, the same 3 steps give the same tables."""
    require_backend("torch")
    import backends.torch.backend as torch_backend

    rng = np.random.default_rng(4)
    batches = [make_batch(rng) for _ in range(3)]
    results = []
    for rows_per_slot in (torch_backend.DENSE_SGD_ROWS_PER_SLOT, 0.0):
        monkeypatch.setattr(torch_backend, "DENSE_SGD_ROWS_PER_SLOT", rows_per_slot)
        backend = backends.load("torch")(VOCAB, EMBED, optimizer="sgd", lr=1.0, step="fast")
        losses = [float(backend.train_step(batch)) for batch in batches]
        results.append((losses, backend.get_params()))
    (dense_losses, dense), (row_losses, rows) = results
    np.testing.assert_allclose(dense_losses, row_losses, rtol=1e-6)
    for a, b in zip(dense, rows):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(dense.center, backends.load("torch")(VOCAB, EMBED).get_params()
                              .center)  # it trained
