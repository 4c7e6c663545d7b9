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


def real_examples(batch: Batch) -> int:
    """Rows that hold an example: every real row has a context word in slot 0."""
    return int(np.count_nonzero(batch.masks[:, 0]))


def step_groups(batches: Iterable[Batch], size: int,
                ends_group: Callable[[int], bool] = lambda index: False) -> Iterator[list[Batch]]:
    """Consecutive batches in lists of at most `size` for `Backend.train_steps`.

    A list also ends after batch `index` (counted from 0) when `ends_group(index)`, so that the
    driver can read the losses at its report points; the last list may be short.
    """
    group: list[Batch] = []
    for index, batch in enumerate(batches):
        group.append(batch)
        if len(group) >= size or ends_group(index):
            yield group
            group = []
    if group:
        yield group


def _progress(total: int, description: str, enabled: bool | None) -> Any:
    from tqdm import tqdm  # imported here: only the CLI path needs it

    # disable=None lets tqdm switch itself off when stderr is not a terminal (CI logs).
    return tqdm(total=total, desc=description, unit="batch", leave=False,
                disable=enabled if enabled is None else not enabled, dynamic_ncols=True)


def train(backend: Any, epoch_batches: Callable[[int], Iterable[Batch]],
          batches_per_epoch: Callable[[int], int], epochs: int, *,
          start_epoch: int = 0, progress: bool | None = None,
          log: Callable[[str], None] = print,
          on_epoch_end: Callable[[EpochReport, TrainResult], None] | None = None,
          result: TrainResult | None = None) -> TrainResult:
    """Run `epochs` epochs of `backend.train_steps` over `epoch_batches(epoch)`.

    `epoch_batches(epoch)` yields the epoch's batches (shuffled, possibly re-sampled);
    `batches_per_epoch(epoch)` is their count, for the progress bar and the report points.
    `on_epoch_end` lets the caller checkpoint and plot; it runs outside the timed region.
    """
    result = result or TrainResult(device=backend.device)
    for epoch in range(start_epoch, epochs):
        total_batches = batches_per_epoch(epoch)
        report_every = max(total_batches // REPORTS_PER_EPOCH, 1)
        pending: list[Any] = []
        epoch_loss_sum, epoch_examples, pending_examples = 0.0, 0, 0

        def is_report_point(index: int) -> bool:
            return (index + 1) % report_every == 0 or index + 1 == total_batches

        bar = _progress(total_batches, f"epoch {epoch + 1}/{epochs}", progress)
        backend.synchronize()
        started = time.perf_counter()
        index = -1  # of the last batch trained
        for group in step_groups(epoch_batches(epoch), backend.steps_per_call,
                                 is_report_point):
            pending.extend(backend.train_steps(group))
            pending_examples += sum(real_examples(batch) for batch in group)
            index += len(group)
            bar.update(len(group))
            if is_report_point(index):
                losses = backend.losses_to_numpy(pending)  # the only sync point
                epoch_loss_sum += float(losses.sum())
                epoch_examples += pending_examples
                result.all_epochs_loss_sum += float(losses.sum())
                result.all_epochs_examples += pending_examples
                result.curve.append({
                    "epoch": epoch + (index + 1) / total_batches,
                    "loss": result.all_epochs_mean_loss,          # the chapter's plotted figure
                    "interval_loss": float(losses.sum()) / max(pending_examples, 1),
                })
                pending, pending_examples = [], 0
                elapsed = time.perf_counter() - started
                bar.set_postfix(loss=f"{epoch_loss_sum / max(epoch_examples, 1):.3f}",
                                words_per_s=f"{epoch_examples / max(elapsed, 1e-9):,.0f}")
        backend.synchronize()
        seconds = time.perf_counter() - started
        bar.close()
        if pending:  # an iterator shorter than announced: account for what it gave
            losses = backend.losses_to_numpy(pending)
            epoch_loss_sum += float(losses.sum())
            epoch_examples += pending_examples
            result.all_epochs_loss_sum += float(losses.sum())
            result.all_epochs_examples += pending_examples
        report = EpochReport(epoch + 1, epoch_loss_sum / max(epoch_examples, 1), epoch_examples,
                             seconds)
        if not math.isfinite(report.mean_loss):
            from common.errors import W2VError

            raise W2VError(f"epoch {epoch + 1} diverged (loss {report.mean_loss}): "
                           f"lower --lr and try again")
        result.epochs.append(report)
        log(f"epoch {report.epoch}: loss {report.mean_loss:.3f}, "
            f"{report.words_per_second:,.1f} centre words/s, {report.seconds:.1f} s")
        if on_epoch_end is not None:
            on_epoch_end(report, result)
    return result

