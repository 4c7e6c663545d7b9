"""The three optimisers beyond the oracle parity (tests/test_parity.py): defaults per
optimiser, word2vec's decay, touched rows, checkpoints and the preflight's state."""
from __future__ import annotations

import json

import numpy as np
import pytest

from common import preflight, runs
from common.batching import Batch, localize, touched_rows
from common.cli import main
from common.config import DECAY_FLOOR, TrainConfig, scheduled_lr
from common.errors import ResourceError
from helpers import error_line, train_tiny


# -- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer, lr, schedule", [("adam", 0.002, "constant"),
                                                     ("sparse_adam", 0.002, "constant"),
                                                     ("sgd", TrainConfig(optimizer="sgd").
                                                      learning_rate, "decay")])
def test_each_optimizer_has_its_defaults_and_given_flags_override_them(optimizer, lr, schedule):
    config = TrainConfig(optimizer=optimizer).validate()
    assert config.lr is None and config.lr_schedule is None  # "not given" is kept as such
    assert (config.learning_rate, config.schedule) == (lr, schedule)
    given = TrainConfig(optimizer=optimizer, lr=0.05, lr_schedule="linear").validate()
    assert (given.learning_rate, given.schedule) == (0.05, "linear")
    assert TrainConfig.from_dict(config.to_dict()).learning_rate == lr


def test_the_default_sgd_rate_is_not_adams():
    assert TrainConfig(optimizer="sgd").learning_rate > 0.002


def test_decay_goes_from_the_rate_to_its_floor_as_word2vec_does():
    rates = [scheduled_lr(0.025, "decay", step, 5) for step in range(1, 8)]
    assert rates[0] == 0.025 and rates[4] == pytest.approx(0.025 * DECAY_FLOOR)
    assert rates[4] == pytest.approx(0.0001)
    assert all(a > b for a, b in zip(rates[:5], rates[1:5]))
    assert rates[5] == rates[6] == rates[4]  # past the end (a resume with more epochs)
    # The linear schedule keeps its figures: lr / T at the last step.
    assert scheduled_lr(0.002, "linear", 5, 5) == pytest.approx(0.002 / 5)


# -- touched rows ----------------------------------------------------------------------------
def test_touched_rows_are_the_centres_and_the_real_slots_not_the_padding():
    batch = Batch(np.array([[3], [5], [0]], np.int32),
                  np.array([[7, 8, 0], [9, 0, 0], [0, 0, 0]], np.int32),
                  np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32),
                  np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0]], np.float32))
    centres, contexts = touched_rows(batch)
    assert centres.tolist() == [3, 5] and contexts.tolist() == [7, 8, 9]
    local = localize(batch)
    assert local.rows.tolist() == [0, 3, 5, 7, 8, 9]
    np.testing.assert_array_equal(local.rows[local.batch.centers], batch.centers)
    np.testing.assert_array_equal(local.rows[local.batch.contexts_negatives],
                                  batch.contexts_negatives)
    assert local.rows[local.center_touched].tolist() == [3, 5]
    assert local.rows[local.context_touched].tolist() == [7, 8, 9]


@pytest.mark.parametrize("top", [50, 10**6])  # marked in a table of ids / sorted (np.unique)
def test_localize_renumbers_as_np_unique_does_by_either_route(top):
    rng = np.random.default_rng(top)
    ids = rng.integers(1, top, size=(16, 12)).astype(np.int32)
    batch = Batch(ids[:, :1], ids, np.ones(ids.shape, np.float32), np.zeros(ids.shape,
                                                                          np.float32))
    rows, inverse = np.unique(np.concatenate([[0], ids[:, 0], ids.ravel()]),
                              return_inverse=True)
    local = localize(batch)
    np.testing.assert_array_equal(local.rows, rows)
    np.testing.assert_array_equal(local.batch.contexts_negatives,
                                  inverse[1 + 16:].reshape(ids.shape))


# -- runs and checkpoints --------------------------------------------------------------------
def test_an_sgd_run_checkpoints_no_moments_and_resumes(tmp_path, capsys):
    code, run = train_tiny(tmp_path, "--optimizer", "sgd", "--epochs", "1")
    assert code == 0
    checkpoint = runs.load_checkpoint(run)
    assert checkpoint.optimizer == "sgd" and checkpoint.adam_step > 0
    assert checkpoint.exp_avg[0].shape == (0, 16) == checkpoint.exp_avg_sq[1].shape
    config = json.loads((run / runs.CONFIG).read_text())
    assert config["lr"] is None and config["lr_schedule"] is None
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert runs.load_checkpoint(run).epochs_done == 2


def test_a_checkpoint_of_another_optimizer_is_refused_in_one_line(tmp_path, capsys):
    code, run = train_tiny(tmp_path, "--optimizer", "sgd", "--epochs", "1")
    assert code == 0
    config = json.loads((run / runs.CONFIG).read_text())
    config["optimizer"] = "sparse_adam"
    (run / runs.CONFIG).write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) != 0
    line = error_line(capsys)
    assert "holds sgd state" in line and "--optimizer sparse_adam" in line


def test_a_checkpoint_from_before_the_optimizer_was_recorded_resumes(tmp_path, capsys):
    code, run = train_tiny(tmp_path, "--optimizer", "sparse_adam", "--epochs", "1")
    assert code == 0
    runs.save_checkpoint(run, runs.load_checkpoint(run)._replace(optimizer=""))
    assert runs.load_checkpoint(run).optimizer == ""
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0


# -- the preflight ---------------------------------------------------------------------------
def _estimate(optimizer: str, step: str = "fast", vocab: int = 1_000_000) -> preflight.Estimate:
    shape = preflight.Shape(vocab_size=vocab, tokens=10**8, longest_sentence=100,
                            centres=10**7)
    return preflight.estimate(TrainConfig(optimizer=optimizer, step=step), shape,
                              fixed_shapes=False)


def test_the_preflight_counts_each_optimizers_state():
    table = 1_000_000 * 100 * 4
    adam, lazy, sgd = (_estimate(name) for name in ("adam", "sparse_adam", "sgd"))
    assert adam.items["optimizer state"] == lazy.items["optimizer state"] == 4 * table
    assert sgd.items["optimizer state"] == 0
    assert adam.items["gradients"] == 2 * table > lazy.items["gradients"]
    assert _estimate("sgd", step="chapter").items["gradients"] == 2 * table
    assert adam.total > lazy.total > sgd.total


def test_a_vocabulary_whose_state_does_not_fit_is_refused_with_the_bytes_it_needs():
    shape = preflight.Shape(vocab_size=20_000_000, tokens=10**8, longest_sentence=100,
                            centres=10**7)
    available = lambda: (64 * 1024**3, "cgroup limit")  # noqa: E731
    with pytest.raises(ResourceError) as error:
        preflight.check(TrainConfig(optimizer="sparse_adam"), shape, fixed_shapes=False,
                        available=available)
    message = str(error.value)
    assert "\n" not in message and "optimizer state 29.8 GiB" in message
    assert "V=20,000,000" in message and "--optimizer sgd" in message
    # sgd keeps no moments: the same vocabulary fits.
    preflight.check(TrainConfig(optimizer="sgd"), shape, fixed_shapes=False,
                    available=available)
