"""The epoch driver: loss bookkeeping, report points and the honest speed figures."""
from __future__ import annotations

import numpy as np
import pytest

from common.batching import Batch
from common.errors import W2VError
from common.training import Position, TrainResult, step_groups, train


class _ScriptedBackend:
    """Returns a scripted loss per step, so the driver's arithmetic can be checked exactly."""

    device = "cpu"

    def __init__(self, losses_per_row: list[float], steps_per_call: int = 1) -> None:
        self.losses_per_row = iter(losses_per_row)
        self.synced = 0
        self.steps_per_call = steps_per_call
        self.group_sizes: list[int] = []

    def train_step(self, batch: Batch) -> float:
        return next(self.losses_per_row) * int(np.count_nonzero(batch.masks[:, 0]))

    def train_steps(self, batches: list[Batch]) -> list[float]:
        self.group_sizes.append(len(batches))
        return [self.train_step(batch) for batch in batches]

    def losses_to_numpy(self, losses: list[float]) -> np.ndarray:
        return np.asarray(losses, dtype=np.float64)

    def synchronize(self) -> None:
        self.synced += 1


def _batch(rows: int, real: int) -> Batch:
    masks = np.zeros((rows, 4), np.float32)
    masks[:real, :2] = 1
    return Batch(np.ones((rows, 1), np.int32), np.ones((rows, 4), np.int32), masks,
                 np.zeros((rows, 4), np.float32))


def test_losses_are_means_over_real_examples_and_all_epochs():
    # epoch 1: 10 batches of 4 rows at loss 1.0; epoch 2: 10 batches, the last padded (1 real).
    backend = _ScriptedBackend([1.0] * 10 + [0.5] * 10)
    batches = {0: [_batch(4, 4)] * 10, 1: [_batch(4, 4)] * 9 + [_batch(4, 1)]}
    result = train(backend, lambda e, start: iter(batches[e][start:]),
                   lambda e: 10, 2, progress=False,
                   log=lambda line: None)
    assert [r.mean_loss for r in result.epochs] == [1.0, 0.5]
    assert [r.centre_words for r in result.epochs] == [40, 37]
    assert result.all_epochs_mean_loss == pytest.approx((40 * 1.0 + 37 * 0.5) / 77)
    assert len(result.curve) == 10  # five report points per epoch, as the chapter plots
    assert result.curve[4]["epoch"] == pytest.approx(1.0)
    assert result.curve[-1]["epoch"] == pytest.approx(2.0)


def test_grouped_steps_end_at_report_points_and_change_no_figure():
    # 23 batches: a report every 4 batches and after the last; groups of up to 3 steps.
    losses = list(np.linspace(1.0, 0.2, 23))
    batches = [_batch(4, 4)] * 22 + [_batch(4, 3)]
    one_by_one = train(_ScriptedBackend(losses), lambda e, start: iter(batches[start:]),
                       lambda e: 23, 1,
                       progress=False, log=lambda line: None)
    grouped_backend = _ScriptedBackend(losses, steps_per_call=3)
    grouped = train(grouped_backend, lambda e, start: iter(batches[start:]), lambda e: 23, 1,
                    progress=False, log=lambda line: None)
    # Groups end at multiples of 3 counted from the epoch's start, and at report points.
    assert grouped_backend.group_sizes == [3, 1, 2, 2, 1, 3, 3, 1, 2, 2, 1, 2]
    assert grouped.curve == one_by_one.curve
    assert grouped.epochs[0].mean_loss == one_by_one.epochs[0].mean_loss


def test_chapter_formula_overstates_speed_by_the_epoch_count():
    result = TrainResult(device="cpu")
    from common.training import EpochReport

    result.epochs = [EpochReport(e + 1, 0.5, 1000, 2.0) for e in range(5)]
    assert result.words_per_second == pytest.approx(500.0)
    assert result.chapter_tokens_per_second == pytest.approx(2500.0)
    assert result.summary_line().endswith("500.0 tokens/sec on cpu")


def test_divergence_is_a_one_line_error():
    backend = _ScriptedBackend([float("nan")] * 3)
    with pytest.raises(W2VError, match="diverged.*lower --lr"):
        train(backend, lambda e, start: iter([_batch(4, 4)] * (3 - start)),
              lambda e: 3, 1, progress=False,
              log=lambda line: None)


def test_groups_stay_aligned_to_the_epoch_when_iteration_starts_late():
    """A resumed epoch must run the same groups (the same compiled calls) from its batch on."""
    whole = [len(g) for g in step_groups(range(20), 8, lambda i: i == 9)]
    assert whole == [8, 2, 6, 4]
    assert [len(g) for g in step_groups(range(5, 20), 8, lambda i: i == 9, start=5)] == \
        [3, 2, 6, 4]


@pytest.mark.parametrize("steps_per_call", [1, 3])
@pytest.mark.parametrize("stop_after", [1, 6, 10, 17])
def test_stopping_and_continuing_gives_identical_figures(steps_per_call, stop_after):
    """Stop after some batches (mid-epoch or at its end), carry the state through a JSON
    round trip as a checkpoint does, continue: every figure equals an uninterrupted run's."""
    import json

    losses = list(np.linspace(1.0, 0.1, 33) ** 1.7)
    batches = {0: [_batch(4, 4)] * 10 + [_batch(4, 3)], 1: [_batch(4, 4)] * 11,
               2: [_batch(4, 2)] * 11}

    def run(**options) -> TrainResult:
        return train(backend, lambda e, start: iter(batches[e][start:]),
                     lambda e: 11, 3, progress=False,
                     log=lambda line: None, **options)

    backend = _ScriptedBackend(losses, steps_per_call=steps_per_call)
    whole = run()

    backend = _ScriptedBackend(losses, steps_per_call=steps_per_call)
    seen = []
    first = run(should_stop=lambda position: seen.append(position.batch) or
                sum(1 for _ in seen) * steps_per_call >= stop_after)
    assert first.stopped and first.position.batch < 11
    state = json.loads(json.dumps(first.state_dict()))
    restored = TrainResult.from_state_dict(state)
    assert isinstance(restored.position, Position)
    consumed = restored.position.epoch * 11 + restored.position.batch
    backend.losses_per_row = iter(losses[consumed:])  # the parameters would carry on likewise
    second = run(result=restored, position=restored.position)
    assert not second.stopped
    assert second.curve == whole.curve
    assert [(r.epoch, r.mean_loss, r.centre_words) for r in second.epochs] == \
        [(r.epoch, r.mean_loss, r.centre_words) for r in whole.epochs]
    assert second.all_epochs_mean_loss == whole.all_epochs_mean_loss


def test_the_learning_rate_schedules():
    from common.config import scheduled_lr

    assert [scheduled_lr(0.01, "constant", t, 4) for t in (1, 4, 9)] == [0.01] * 3
    linear = [scheduled_lr(0.01, "linear", t, 4) for t in range(1, 7)]
    np.testing.assert_allclose(linear, [0.01, 0.0075, 0.005, 0.0025, 0.0025, 0.0025])
    assert scheduled_lr(0.01, "linear", 1, 0) == 0.01  # no known length: constant
