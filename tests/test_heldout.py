"""The held-out loss: `Backend.eval_loss` against the reference, and `HeldOut` on a tiny PTB."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import backends
from backends.base import Backend
from backends.numpy import model as reference
from common.config import TrainConfig
from common.heldout import HeldOut
from common.vocab import Vocab
from helpers import EMBED, VOCAB, make_batch, tiny_corpus, tiny_ptb


def _state(backend: Backend) -> list[np.ndarray]:
    state = backend.optimizer_state()
    return [*backend.get_params(), np.asarray(state.step), *state.exp_avg, *state.exp_avg_sq]


def test_eval_loss_is_the_reference_objective_and_changes_nothing(backend_name):
    rng = np.random.default_rng(3)
    backend = backends.load(backend_name)(VOCAB, EMBED, seed=1)
    backend.train_step(make_batch(rng))  # Adam state that an evaluation must leave alone
    batch = make_batch(rng, all_padding_row=True)
    before = _state(backend)
    loss = float(backend.losses_to_numpy([backend.eval_loss(batch)])[0])
    params = backend.get_params()
    expected = reference.objective(batch.centers, batch.contexts_negatives, batch.masks,
                                   batch.labels, params.center.astype(np.float64),
                                   params.context.astype(np.float64))
    assert loss == pytest.approx(float(expected), rel=1e-5)
    for got, want in zip(_state(backend), before):
        np.testing.assert_array_equal(got, want)
    # The next step is the one it would have been without the evaluation.
    twin = backends.load(backend_name)(VOCAB, EMBED, seed=1)
    twin.train_step(make_batch(np.random.default_rng(3)))
    after = make_batch(rng)
    np.testing.assert_allclose(backend.to_numpy(backend.train_step(after)),
                               twin.to_numpy(twin.train_step(after)), rtol=0, atol=0)


def test_the_default_eval_loss_agrees_with_the_override():
    """The default `Backend.eval_loss` (through `loss_and_grads`), checked on the reference."""
    backend = backends.load("numpy")(VOCAB, EMBED, seed=2)
    batch = make_batch(np.random.default_rng(4))
    default = float(Backend.eval_loss(backend, batch))
    assert default == pytest.approx(float(backend.eval_loss(batch)), rel=1e-6)


def _config(folder: Path, **overrides: object) -> TrainConfig:
    values = dict(corpus="ptb", data=str(folder), min_freq=1, batch_size=64, embed_size=8,
                  subsample_t=1.0, epochs=2, backend="numpy")
    return TrainConfig(**{**values, **overrides})


def test_heldout_is_fixed_and_equal_under_fixed_shapes(tmp_path):
    folder = tiny_ptb(tmp_path)
    config = _config(folder)
    vocab = Vocab([line.split() for line in
                   (folder / "ptb.train.txt").read_text(encoding="utf-8").splitlines()],
                  min_freq=1)
    heldout = HeldOut.build(config, vocab)
    assert heldout is not None and heldout.num_examples > 0
    assert "zebra" not in vocab.token_to_idx  # unseen words are <unk> and dropped
    backend = backends.load("numpy")(len(vocab), config.embed_size, seed=0)
    first = heldout.loss(backend)
    assert first == pytest.approx(np.log(2), abs=0.05)  # small initial logits: BCE near log 2
    assert heldout.loss(backend) == first
    again = HeldOut.build(config, vocab)
    np.testing.assert_array_equal(again.data.dataset(0).contexts_negatives,
                                  heldout.data.dataset(0).contexts_negatives)
    padded = HeldOut.build(config, vocab, fixed_shapes=True)
    assert padded.loss(backend) == pytest.approx(first, rel=1e-6)
    # The seed picks the noise words; another seed, other examples.
    other = HeldOut.build(_config(folder, seed=1), vocab)
    assert not np.array_equal(other.data.dataset(0).contexts_negatives,
                              heldout.data.dataset(0).contexts_negatives)


def test_no_heldout_without_a_validation_split(tmp_path):
    vocab = Vocab([["a", "b"]], min_freq=1)
    assert HeldOut.build(TrainConfig(corpus=str(tiny_corpus(tmp_path))), vocab) is None
    assert HeldOut.build(TrainConfig(corpus="lee"), vocab) is None
    # auto that fell back to lee for training
    assert HeldOut.build(TrainConfig(corpus="auto"), vocab, corpus_name="lee") is None


def test_training_reports_the_validation_loss_every_epoch(tmp_path):
    from common.session import train_run

    lines: list[str] = []
    outcome = train_run(_config(tiny_ptb(tmp_path), epochs=3), tmp_path / "run",
                        log=lines.append, progress=False, evaluate_at_end=False)
    losses = outcome.valid_losses
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]  # a learnable corpus: held-out loss falls too
    assert sum("validation loss" in line for line in lines) == 3
    rows = [json.loads(line) for line in
            (outcome.run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["valid_loss"] for row in rows if row["kind"] == "epoch"] == losses
    report = json.loads((outcome.run / "report.json").read_text(encoding="utf-8"))
    assert report["valid_losses"] == losses
