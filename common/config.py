"""Training configuration: the chapter's hyperparameters as defaults, validated in one place.

The CLI builds its `train` flags from the fields of `TrainConfig` (their `help` metadata),
so a new hyperparameter is added here once and appears everywhere.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from common.errors import ConfigError
from common.variants import LOSSES, MODELS, combination_error

SAMPLING_MODES = ("static", "resample")
OPTIMIZERS = ("adam", "sparse_adam", "sgd")
# decay: word2vec's and gensim's schedule, from lr down to `DECAY_FLOOR * lr` (0.025 -> 0.0001).
LR_SCHEDULES = ("constant", "linear", "decay")
DECAY_FLOOR = 0.004
# Each optimiser's rate and schedule when --lr / --lr-schedule are not given. Adam and sparse
# Adam keep the chapter's; sgd's starting rate comes from a measured sweep on PTB: 2.0 is on its
# plateau (2-3) and, unlike 2.5, does not diverge on small data (benchmarks/README.md,
# "The sgd starting rate").
DEFAULT_LR = {"adam": 0.002, "sparse_adam": 0.002, "sgd": 2.0}
DEFAULT_LR_SCHEDULE = {"adam": "constant", "sparse_adam": "constant", "sgd": "decay"}
MAX_EPOCHS = 1_000_000  # far beyond any run, and still an exact float and a small int64
# What `--step` chooses; `backends.base` imports it from here (`common` imports no backend).
STEPS = ("chapter", "fast")


def scheduled_lr(lr: float, schedule: str, step: int, total_steps: int) -> float:
    """The learning rate of optimiser step `step` (1-based) of `total_steps`.

    constant: `lr` throughout (the chapter). linear: from `lr` at the first step down to
    `lr / total_steps` at the last, so the vectors settle instead of drifting at full step
    size; never 0, even past the end (a resumed run with more epochs recomputes
    `total_steps`). decay: word2vec's and gensim's, from `lr` at the first step to
    `DECAY_FLOOR * lr` at the last, and no lower after. One definition for every backend.
    """
    if schedule == "constant" or total_steps < 1:
        return lr
    if schedule == "decay":  # word2vec: lr (1 - progress), never below its floor
        progress = (step - 1) / max(total_steps - 1, 1)
        return lr * (DECAY_FLOOR + (1.0 - DECAY_FLOOR) * max(1.0 - progress, 0.0))
    return lr * max(total_steps - step + 1, 1) / total_steps


# The optimisers each backend's replicas train with: those a parity test proves equal to one
# replica (tests/test_data_parallel.py). torch's engine all-reduces sparse gradients (gloo).
REPLICA_OPTIMIZERS = {"torch": OPTIMIZERS}


def replica_optimizer_error(backend: str, optimizer: str, replicas: int) -> str | None:
    """The one line refusing `--optimizer` with `--data-parallel N > 1` where the backend's
    replicas do not train it (naming what works), or None."""
    if replicas == 1 or optimizer in REPLICA_OPTIMIZERS.get(backend, ("adam",)):
        return None
    where = [name for name, optimizers in REPLICA_OPTIMIZERS.items() if optimizer in optimizers]
    return (f"--data-parallel {replicas} on the {backend} backend trains with --optimizer adam; "
            f"--optimizer {optimizer} trains with --data-parallel 1, or with replicas on "
            f"--backend {' or '.join(where)}")


def _flag(help_text: str, **extra: Any) -> Any:
    return {"help": help_text, **extra}


@dataclass
class TrainConfig:
    """Everything that defines a training run; `validate()` rejects impossible values."""

    backend: str = field(default="torch", metadata=_flag("framework backend (env W2V_BACKEND)"))
    device: str = field(default="cpu", metadata=_flag("cpu, gpu or gpu:N"))
    data_parallel: int = field(default=1, metadata=_flag(
        "replicas trained data-parallel by the framework's own engine, each on its share of "
        "every --batch-size batch; gradients summed, so N replicas train as one"))
    epochs: int = field(default=5, metadata=_flag("training epochs"))
    # None: not given, the optimiser's default (`learning_rate`); a value overrides it.
    lr: float | None = field(default=None, metadata=_flag(
        "learning rate (adam, sparse_adam: 0.002; sgd: its starting rate, "
        f"{DEFAULT_LR['sgd']})"))
    batch_size: int = field(default=512, metadata=_flag("centre words per minibatch"))
    embed_size: int = field(default=100, metadata=_flag("embedding dimension"))
    max_window_size: int = field(default=5, metadata=_flag("largest context window"))
    num_noise_words: int = field(default=5, metadata=_flag("noise words per context word"))
    min_freq: int = field(default=10, metadata=_flag("rarer words become <unk>"))
    subsample_t: float = field(default=1e-4, metadata=_flag("subsampling threshold t"))
    sampling: str = field(
        default="static",
        metadata=_flag("static: sample once (chapter); resample: every epoch (exercise 2)",
                       choices=SAMPLING_MODES),
    )
    lr_schedule: str | None = field(
        default=None,
        metadata=_flag("constant (chapter), linear: to about 0 over the run, decay: to 0.4%% "
                       "of the rate (word2vec's); default: constant for adam and sparse_adam, "
                       "decay for sgd", choices=LR_SCHEDULES),
    )
    optimizer: str = field(
        default="adam",
        metadata=_flag("adam: the chapter's dense Adam; sparse_adam: torch's SparseAdam, the "
                       "touched rows only; sgd: word2vec's update on the touched rows",
                       choices=OPTIMIZERS),
    )
    model: str = field(
        default="skipgram",
        metadata=_flag("skipgram: the centre predicts its contexts (chapter); cbow: the mean of "
                       "the contexts predicts the centre", choices=MODELS),
    )
    loss: str = field(
        default="negative",
        metadata=_flag("negative: negative sampling (chapter); hsoftmax: hierarchical softmax "
                       "over a Huffman tree", choices=LOSSES),
    )
    step: str = field(
        default="fast",
        metadata=_flag("chapter: the chapter's code through the framework's own autodiff and "
                       "Adam; fast: the tuned step (same figures)", choices=STEPS),
    )
    seed: int = field(default=0, metadata=_flag("seed for sampling, shuffling and init"))
    threads: int = field(default=0, metadata=_flag(
        "CPU threads: the framework's intra-op (and inter-op) pools, the process pinned to "
        "that many CPUs; 0: every CPU"))
    corpus: str = field(
        default="auto",
        metadata=_flag("ptb, text8, lee, a text file (one sentence per line), or auto (ptb, "
                       "else lee when offline)"),
    )
    data: str | None = field(default=None, metadata=_flag(
        "local copy of the named corpus: ptb.zip or its folder (env W2V_PTB), text8 or "
        "text8.zip (env W2V_TEXT8)"))

    def validate(self) -> "TrainConfig":
        """Raise `ConfigError` naming the first invalid field; return self for chaining."""
        positive_ints = ("epochs", "batch_size", "embed_size", "max_window_size",
                         "num_noise_words", "min_freq", "data_parallel")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, "
                                  f"got {value!r}")
        if self.epochs > MAX_EPOCHS:  # sizes are the preflight's; a count of steps is not
            raise ConfigError(f"--epochs must be at most {MAX_EPOCHS:,}, got {self.epochs!r}")
        for name in ("lr", "subsample_t"):
            value = getattr(self, name)
            if name == "lr" and value is None:
                continue  # not given: the optimiser's default
            if not isinstance(value, (int, float)) or not value > 0 or value != value \
                    or value == float("inf"):
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive number, "
                                  f"got {value!r}")
        if self.data_parallel > self.batch_size:
            raise ConfigError(f"--data-parallel {self.data_parallel} exceeds --batch-size "
                              f"{self.batch_size}: each replica needs at least one example "
                              f"of every batch")
        if self.sampling not in SAMPLING_MODES:
            raise ConfigError(f"--sampling must be one of {', '.join(SAMPLING_MODES)}, "
                              f"got {self.sampling!r}")
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, "
                              f"got {self.lr_schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, "
                              f"got {self.optimizer!r}")
        if self.step not in STEPS:
            raise ConfigError(f"--step must be one of {', '.join(STEPS)}, got {self.step!r}")
        problem = combination_error(self.model, self.loss, self.optimizer)
        if problem is not None:
            raise ConfigError(problem)
        problem = replica_optimizer_error(self.backend, self.optimizer, self.data_parallel)
        if problem is not None:
            raise ConfigError(problem)
        if (self.backend == "mxnet" and os.environ.get("DMLC_ROLE") == "worker"
                and (self.model, self.loss) != ("skipgram", "negative")):
            # Before the worker joins MXNet's dist_sync (a worker that left after joining
            # would keep the others waiting).
            raise ConfigError("MXNet's dist_sync workers train --model skipgram --loss "
                              "negative; the other combinations train on one process's "
                              "contexts (--data-parallel N without MXNet's launcher)")
        if (self.data_parallel > 1 and self.optimizer != "adam"
                and (self.model, self.loss) != ("skipgram", "negative")):
            # torch's sparse replicas were proven on the chapter's combination only.
            raise ConfigError(f"--data-parallel {self.data_parallel} trains --model {self.model} "
                              f"--loss {self.loss} with --optimizer adam; --optimizer "
                              f"{self.optimizer} trains it with --data-parallel 1")
        from common.threads import check as check_threads

        check_threads(self.threads)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"--seed must be a non-negative integer, got {self.seed!r}")
        return self

    @property
    def learning_rate(self) -> float:
        """`--lr` when given, else the optimiser's default."""
        return float(self.lr) if self.lr is not None else DEFAULT_LR.get(self.optimizer, 0.002)

    @property
    def schedule(self) -> str:
        """`--lr-schedule` when given, else the optimiser's default."""
        return self.lr_schedule or DEFAULT_LR_SCHEDULE.get(self.optimizer, "constant")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a stored `config.json`, ignoring keys a newer version may add."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def max_length(self) -> int:
        """Widest possible row of contexts and noise: `2 * window * (1 + K)`."""
        return 2 * self.max_window_size * (1 + self.num_noise_words)


def fields() -> tuple[dataclasses.Field, ...]:
    """The dataclass fields, for the CLI to turn into flags."""
    return dataclasses.fields(TrainConfig)
