"""The epoch driver shared by every backend: progress, loss, centre words/s, the report.

A backend owns one optimiser step; everything around it is here, once. The loss leaves the
device only when it is reported (five times an epoch, as the chapter's plot samples it), so
the loop never waits on the accelerator between steps.

Honest figures. The chapter prints `loss 0.410, 223842.3 tokens/sec`: the mean loss over the
batches of *all* epochs (kept here as `all_epochs_mean_loss`, the figure comparable with 0.410)
and *all* epochs' centre words divided by the *last* epoch's seconds (about `epochs` times too
high; kept as `chapter_tokens_per_second` only to say what it would have printed). The speed
reported is centre words over the seconds spent training them.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from common.batching import Batch

REPORTS_PER_EPOCH = 5  # the chapter adds a point to its plot every num_batches // 5 batches


@dataclass
class EpochReport:
    """One epoch's figures; `mean_loss` is the mean of the per-example objective."""

    epoch: int
    mean_loss: float
    centre_words: int
    seconds: float

    @property
    def words_per_second(self) -> float:
        return self.centre_words / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class TrainResult:
    """Everything a run reports at its end."""

    device: str
    epochs: list[EpochReport] = field(default_factory=list)
    curve: list[dict[str, float]] = field(default_factory=list)
    all_epochs_loss_sum: float = 0.0
    all_epochs_examples: int = 0
    position: "Position | None" = None  # where training stands (set by `train`)
    stopped: bool = False               # True when `should_stop` ended it early

    @property
    def all_epochs_mean_loss(self) -> float:
        """The chapter's printed loss: the mean over the examples of all epochs."""
        return self.all_epochs_loss_sum / max(self.all_epochs_examples, 1)

    @property
    def last_epoch_mean_loss(self) -> float:
        return self.epochs[-1].mean_loss if self.epochs else float("nan")

    @property
    def centre_words(self) -> int:
        return sum(report.centre_words for report in self.epochs)

    @property
    def seconds(self) -> float:
        return sum(report.seconds for report in self.epochs)

    @property
    def words_per_second(self) -> float:
        """The true rate: all centre words over all training seconds."""
        return self.centre_words / self.seconds if self.seconds > 0 else float("nan")

    @property
    def chapter_tokens_per_second(self) -> float:
        """What the chapter's formula would print: all epochs' words / last epoch's seconds."""
        return self.centre_words / self.epochs[-1].seconds if self.epochs else float("nan")

    def summary_line(self) -> str:
        """The chapter's closing line, made honest."""
        return (f"loss {self.all_epochs_mean_loss:.3f}, {self.words_per_second:.1f} "
                f"tokens/sec on {self.device}")

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to carry the figures across an interruption (JSON-safe)."""
        return {"device": self.device, "epochs": [asdict(report) for report in self.epochs],
                "curve": self.curve, "all_epochs_loss_sum": self.all_epochs_loss_sum,
                "all_epochs_examples": self.all_epochs_examples,
                "position": (self.position or Position()).to_dict()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "TrainResult":
        return cls(device=state["device"],
                   epochs=[EpochReport(**report) for report in state["epochs"]],
                   curve=[dict(point) for point in state["curve"]],
                   all_epochs_loss_sum=float(state["all_epochs_loss_sum"]),
                   all_epochs_examples=int(state["all_epochs_examples"]),
                   position=Position.from_dict(state["position"]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "all_epochs_mean_loss": self.all_epochs_mean_loss,
            "last_epoch_mean_loss": self.last_epoch_mean_loss,
            "centre_words": self.centre_words,
            "seconds": self.seconds,
            "centre_words_per_second": self.words_per_second,
            "chapter_formula_tokens_per_second": self.chapter_tokens_per_second,
            "epochs": [dict(asdict(report), words_per_second=report.words_per_second)
                       for report in self.epochs],
        }


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_state(state: Any) -> str | None:
    """What is wrong with a `TrainResult.state_dict()` read back from a file, or None.

    Types and ranges only; whether the position lies inside its epoch depends on the data
    and is checked where the data is known (`session.resume_run`).
    """
    if not isinstance(state, dict):
        return "its training state is not an object"
    if not isinstance(state.get("device"), str):
        return "its training device is not a string"
    epochs, curve = state.get("epochs"), state.get("curve")
    if not isinstance(epochs, list) or not isinstance(curve, list):
        return "its epochs or loss curve is not a list"
    for number, report in enumerate(epochs, start=1):
        if not isinstance(report, dict) or set(report) != {"epoch", "mean_loss", "centre_words",
                                                           "seconds"} \
                or report["epoch"] != number or not _is_count(report["centre_words"]) \
                or not _is_number(report["mean_loss"]) or not _is_number(report["seconds"]):
            return f"its report of epoch {number} is malformed"
    if not all(isinstance(point, dict) and all(isinstance(key, str) and _is_number(value)
                                               for key, value in point.items())
               for point in curve):
        return "its loss curve holds something other than numbers"
    if not _is_number(state.get("all_epochs_loss_sum")) or \
            not _is_count(state.get("all_epochs_examples")):
        return "its loss sums are not numbers"
    valid_losses = state.get("valid_losses", [])
    if not isinstance(valid_losses, list) or not all(map(_is_number, valid_losses)):
        return "its validation losses are not a list of numbers"
    position = state.get("position")
    fields = {"epoch": _is_count, "batch": _is_count, "epoch_loss_sum": _is_number,
              "epoch_examples": _is_count, "epoch_seconds": _is_number,
              "pending_losses": lambda value: isinstance(value, list)
              and all(map(_is_number, value)), "pending_examples": _is_count}
    if not isinstance(position, dict) or set(position) != set(fields) or \
            not all(check(position[name]) for name, check in fields.items()):
        return "its position is malformed"
    if position["epoch"] != len(epochs):
        return (f"its position is in epoch {position['epoch'] + 1} but {len(epochs)} epochs "
                f"are reported")
    return None


def real_examples(batch: Batch) -> int:
    """Rows that hold an example: every real row has a context word in slot 0."""
    return int(np.count_nonzero(batch.masks[:, 0]))


@dataclass
class Position:
    """Where training stands, exactly enough to continue as if it had never stopped.

    `batch` batches of epoch `epoch` (0-based) are trained; the epoch's partial sums and the
    host copies of the losses since the last report point travel with it, so that a resumed
    run sums the very same numbers in the same order (bit-identical figures).
    """

    epoch: int = 0
    batch: int = 0
    epoch_loss_sum: float = 0.0
    epoch_examples: int = 0
    epoch_seconds: float = 0.0
    pending_losses: list[float] = field(default_factory=list)
    pending_examples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Position":
        return cls(**values)


def step_groups(batches: Iterable[Batch], size: int,
                ends_group: Callable[[int], bool] = lambda index: False, *,
                start: int = 0) -> Iterator[list[Batch]]:
    """Consecutive batches in lists of at most `size` for `Backend.train_steps`.

    A list ends after batch `index` (counted from 0 within the epoch; the first batch given is
    number `start`) when `(index + 1) % size == 0` or `ends_group(index)`: groups are aligned
    to the epoch, not to where iteration began, so a resumed epoch runs the same compiled
    groups as an uninterrupted one. The last list may be short.
    """
    group: list[Batch] = []
    for index, batch in enumerate(batches, start):
        group.append(batch)
        if (index + 1) % size == 0 or ends_group(index):
            yield group
            group = []
    if group:
        yield group


def _progress(total: int, initial: int, description: str, enabled: bool | None) -> Any:
    from tqdm import tqdm  # imported here: only the CLI path needs it

    # disable=None lets tqdm switch itself off when stderr is not a terminal (CI logs).
    return tqdm(total=total, initial=initial, desc=description, unit="batch", leave=False,
                disable=enabled if enabled is None else not enabled, dynamic_ncols=True)


def train(backend: Any, epoch_batches: Callable[[int, int], Iterable[Batch]],
          batches_per_epoch: Callable[[int], int], epochs: int, *,
          progress: bool | None = None, log: Callable[[str], None] = print,
          on_epoch_end: Callable[[EpochReport, TrainResult], None] | None = None,
          result: TrainResult | None = None, position: Position | None = None,
          should_stop: Callable[[Position], bool] | None = None) -> TrainResult:
    """Train from `position` (default: the start) to the end of epoch `epochs`.

    `epoch_batches(epoch, start)` yields the epoch's batches (shuffled, possibly re-sampled)
    from batch `start` on, and must yield the same ones whenever asked: a resumed epoch
    starts after the `position.batch` already trained, without making them.
    `batches_per_epoch(epoch)` is their count, for the progress bar and the
    report points. `on_epoch_end` lets the caller checkpoint and plot, outside the timed
    region. `should_stop(position)` is asked after every group of steps; when it says yes the
    pending losses are fetched and the result comes back with `result.position` set to where
    training stopped (`result.stopped` is then True).
    """
    result = result or TrainResult(device=backend.device)
    position = position or Position()
    result.position, result.stopped = position, False
    while position.epoch < epochs:
        epoch = position.epoch
        total_batches = batches_per_epoch(epoch)
        report_every = max(total_batches // REPORTS_PER_EPOCH, 1)
        # Losses of steps since the last report point: host floats carried over from a
        # checkpoint first, then device scalars.
        carried = np.asarray(position.pending_losses, dtype=np.float64)
        pending: list[Any] = []

        def is_report_point(index: int) -> bool:
            return (index + 1) % report_every == 0 or index + 1 == total_batches

        def fetch_pending() -> np.ndarray:
            fetched = backend.losses_to_numpy(pending) if pending else np.zeros(0)
            return np.concatenate([carried, fetched])

        bar = _progress(total_batches, position.batch, f"epoch {epoch + 1}/{epochs}", progress)
        backend.synchronize()
        started = time.perf_counter()
        batches = iter(epoch_batches(epoch, position.batch))
        stopped = False
        for group in step_groups(batches, backend.steps_per_call, is_report_point,
                                 start=position.batch):
            pending.extend(backend.train_steps(group))
            position.pending_examples += sum(real_examples(batch) for batch in group)
            position.batch += len(group)
            bar.update(len(group))
            if is_report_point(position.batch - 1):
                losses = fetch_pending()  # the only sync point
                total = float(losses.sum())
                position.epoch_loss_sum += total
                position.epoch_examples += position.pending_examples
                result.all_epochs_loss_sum += total
                result.all_epochs_examples += position.pending_examples
                result.curve.append({
                    "epoch": epoch + position.batch / total_batches,
                    "loss": result.all_epochs_mean_loss,          # the chapter's plotted figure
                    "interval_loss": total / max(position.pending_examples, 1),
                })
                carried, pending, position.pending_examples = np.zeros(0), [], 0
                elapsed = position.epoch_seconds + time.perf_counter() - started
                bar.set_postfix(
                    loss=f"{position.epoch_loss_sum / max(position.epoch_examples, 1):.3f}",
                    words_per_s=f"{position.epoch_examples / max(elapsed, 1e-9):,.0f}")
            if should_stop is not None and position.batch < total_batches \
                    and should_stop(position):
                stopped = True
                break
        backend.synchronize()
        position.epoch_seconds += time.perf_counter() - started
        bar.close()
        if stopped:
            position.pending_losses = [float(x) for x in fetch_pending()]
            result.stopped = True
            return result
        if pending or len(carried):  # an iterator shorter than announced: count what it gave
            total = float(fetch_pending().sum())
            position.epoch_loss_sum += total
            position.epoch_examples += position.pending_examples
            result.all_epochs_loss_sum += total
            result.all_epochs_examples += position.pending_examples
        report = EpochReport(epoch + 1, position.epoch_loss_sum / max(position.epoch_examples, 1),
                             position.epoch_examples, position.epoch_seconds)
        if not math.isfinite(report.mean_loss):
            from common.errors import W2VError

            raise W2VError(f"epoch {epoch + 1} diverged (loss {report.mean_loss}): "
                           f"lower --lr and try again")
        result.epochs.append(report)
        position = Position(epoch=epoch + 1)
        result.position = position
        log(f"epoch {report.epoch}: loss {report.mean_loss:.3f}, "
            f"{report.words_per_second:,.1f} centre words/s, {report.seconds:.1f} s")
        if on_epoch_end is not None:
            on_epoch_end(report, result)
    return result
