"""The contract every backend fulfils; its docstrings are the specification.

A backend holds only what is framework-specific: arrays and devices, the embedding pair,
`skip_gram`, the masked loss, autodiff, the optimiser step and compilation. Everything else
(data, epochs, metrics, export) lives once in `common/`.

The objective, identical everywhere (written out, with its gradient, in the NumPy oracle
`backends/numpy/model.py`):
    pred = skip_gram(centers, contexts_negatives).reshape(B, L)
    per_example = sum(mask * bce(pred, label), axis=1) / max(sum(mask, axis=1), 1)
    loss = per_example.sum()          # the optimised quantity, as in the chapter's PyTorch tab
`per_example` equals the chapter's `loss(pred, label, mask) * L / mask.sum(1)`; the `max(., 1)`
only matters for all-padding rows (fixed-shape backends pad the last batch), which then count 0.
Adam follows torch.optim.Adam: lr 0.002, betas (0.9, 0.999), eps 1e-8 added to sqrt(v_hat).

The optimisers (`optimizer=`), the same in every backend and step:
- adam: the chapter's dense Adam; every row's moments decay at every step, touched or not.
- sparse_adam: torch.optim.SparseAdam: only a batch's touched rows (`common.batching.
  touched_rows`) update their moments and weights, with SparseAdam's step size
  lr sqrt(1 - beta2^t) / (1 - beta1^t) and eps added to the uncorrected sqrt(v).
- sgd: word2vec's `w -= lr_t grad` on the touched rows (the others' gradient is 0).
Row 0 (`<unk>`, which the pipeline never emits) is the padding row: no optimiser touches it.

word2vec's other choices (`--model cbow`, `--loss hsoftmax`) are trained by each framework's
`variants.py` (`VariantBackend`, host side in `backends/variant_base.py`) on batches that
`common.variants.to_variant` makes from the chapter's. Batch shapes per combination, with B
the batch size, W the largest window, K the noise words, D the Huffman tree's depth:

    combination           inputs, input_masks   targets, masks, labels   tables
    skipgram + negative   (B, 1) the centre     (B, L <= 2W(1+K))        centre, context
    cbow + negative       (B, 2W) contexts      (B, 1+K) centre, noise   centre, context
    skipgram + hsoftmax   (B, 1) the centre     (B, 2W*D) paths          + inner (V-1, E)
    cbow + hsoftmax       (B, 2W) contexts      (B, D) the centre's path + inner (V-1, E)

The input vector is the masked mean of the input rows (gensim's cbow_mean=1); the input
table is the centre table for skip-gram and the context table for CBOW, the output table the
context table, the centre table, or the inner table. Each example's loss is the mean BCE over
its real output slots; the batch objective is their sum. Hierarchical softmax's labels are
1 - code along the path (word2vec's), its inner table starts at zero.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import numpy as np

from common.batching import Batch
# chapter: the chapter's formulation through the framework's own autodiff and stock optimiser
# (`model.py`); fast: the tuned step (`fast.py`: same figures, any means). Both train every
# backend and keep the same state, so a run may switch between them.
from common.config import STEPS

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


# What a step computes per batch (`Work.slots`): every (B, L) slot of the padded batch, or only
# its real (centre, context) pairs (padding, about 56% of PTB's slots at B=512, is skipped).
PADDED, PAIRS = "padded BxL", "real pairs"


class Work(NamedTuple):
    """The work one training step does and how it runs: disclosed beside every benchmark row,
    so that a reader compares frameworks doing the same thing (the chapter step) apart from
    how far each was tuned (the fast step)."""

    slots: str           # PADDED or PAIRS
    native_code: str     # the project's own compiled code that runs, or "none"
    steps_per_call: int  # optimiser steps per compiled (or dispatched) call
    compiled: str        # how the step runs: "eager", "jit (XLA)", ...


class Params(NamedTuple):
    """Exchange format for parity tests, export and checkpoints."""

    center: np.ndarray   # (V, E) float32, the chapter's embed_v (net[0])
    context: np.ndarray  # (V, E) float32, the chapter's embed_u (net[1])


class AdamState(NamedTuple):
    """Framework-neutral optimiser state, so a checkpoint from one backend resumes in another.

    adam and sparse_adam: the step count and both moments of both tables, (V, E) each.
    sgd: the step count alone (its schedule's position); the moments are (0, E) arrays.
    """

    step: int
    exp_avg: Params     # first moments, same shapes as the parameters
    exp_avg_sq: Params  # second moments


OPTIMIZERS = ("adam", "sparse_adam", "sgd")


def moment_rows(optimizer: str, vocab_size: int) -> int:
    """Rows of each moment table the optimiser keeps: V for the Adams, 0 for sgd."""
    return 0 if optimizer == "sgd" else vocab_size


def empty_state(optimizer: str, vocab_size: int, embed_size: int) -> AdamState:
    """A fresh optimiser's state: step 0, zero moments (none for sgd)."""
    zeros = Params(*(np.zeros((moment_rows(optimizer, vocab_size), embed_size), np.float32)
                     for _ in range(2)))
    return AdamState(0, zeros, zeros)


def xavier_uniform(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Glorot/Xavier-uniform (gain 1) for a (rows, cols) table, as torch's xavier_uniform_."""
    bound = float(np.sqrt(6.0 / (rows + cols)))
    return rng.uniform(-bound, bound, size=(rows, cols)).astype(np.float32)


def init_params_numpy(vocab_size: int, embed_size: int, seed: int) -> Params:
    """The one initialisation every backend starts from, so seeds mean the same everywhere."""
    rng = np.random.default_rng(seed)
    return Params(xavier_uniform(rng, vocab_size, embed_size),
                  xavier_uniform(rng, vocab_size, embed_size))


class Backend(abc.ABC):
    """One framework's implementation of skip-gram with negative sampling."""

    name: ClassVar[str]
    framework: ClassVar[str]  # the import name whose version `w2v backends` shows
    # Compiled steps (jit, tf.function) want one shape: every batch padded to the widest row
    # and the last batch to full size (padding rows have mask 0 and count for nothing).
    fixed_shapes: ClassVar[bool] = False
    # Batches the epoch driver passes to `train_steps` at once; above 1 where running several
    # steps in one compiled call beats one call per step.
    steps_per_call: ClassVar[int] = 1
    # How `--data-parallel N` runs (`backends/<fw>/distributed.py`, `common/parallel.py`):
    # "processes", one per replica, launched as torchrun launches them; "devices", N devices
    # in this process; "" where the backend has no distributed engine.
    data_parallel: ClassVar[str] = ""
    replicas: int = 1  # data-parallel replicas training this model
    rank: int = 0      # this process's replica (0 writes the run folder)

    def __init__(self, vocab_size: int, embed_size: int, *, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        from common.errors import ConfigError

        if step not in STEPS:
            raise ConfigError(f"--step must be one of {', '.join(STEPS)}, got {step!r}")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"the {self.name} backend's {step} step offers --optimizer "
                              f"{', '.join(OPTIMIZERS)}, got {optimizer!r}")
        self.step = step
        self.vocab_size = vocab_size
        self.embed_size = embed_size
        self.lr = lr
        self.device = device
        self.seed = seed
        self.optimizer = optimizer
        self.lr_schedule, self.total_steps = "constant", 0
        # The optimiser's step count mirrored on the host, so that a step's learning rate is
        # known without reading a device counter (a sync). `set_params` zeroes it and
        # `load_optimizer_state` restores it, with the optimiser's own count.
        self.adam_steps = 0

    def set_lr_schedule(self, schedule: str, total_steps: int) -> None:
        """Give optimiser step t the rate `scheduled_lr(lr, schedule, t, total_steps)`."""
        self.lr_schedule, self.total_steps = schedule, total_steps

    def next_lr(self) -> float:
        """Count one optimiser step and return its learning rate; call once per step."""
        from common.config import scheduled_lr

        self.adam_steps += 1
        return scheduled_lr(self.lr, self.lr_schedule, self.adam_steps, self.total_steps)

    # -- disclosure -------------------------------------------------------------------------
    @abc.abstractmethod
    def work(self) -> Work:
        """What this backend's chosen step (`self.step`) computes per batch and how it runs."""

    def slots_computed(self, batch: Batch) -> int:
        """The (example, slot) pairs this step computes for `batch`: B*L, or the real ones."""
        if self.work().slots == PADDED:
            return int(batch.masks.size)
        return int(np.count_nonzero(batch.masks))

    @classmethod
    def set_threads(cls, threads: int) -> str:
        """Run on `threads` CPU threads; returns how it was done, for the record.

        Call before the first step. The process is pinned to that many CPUs (every framework's
        pools obey that); a backend also sets its framework's intra-op and inter-op pools where
        the framework has a setting. 0 leaves the framework's defaults (every CPU).
        """
        from common.threads import limit_cpus

        return limit_cpus(threads)

    # -- arrays ---------------------------------------------------------------------------
    @abc.abstractmethod
    def asarray(self, x: np.ndarray) -> Any:
        """Host -> device, keeping the dtype."""

    @abc.abstractmethod
    def to_numpy(self, x: Any) -> np.ndarray:
        """Device -> host."""

    def losses_to_numpy(self, losses: list[Any]) -> np.ndarray:
        """Many device scalars -> one float64 host array (one sync where `stack_losses` is)."""
        if not losses:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self.stack_losses(losses), dtype=np.float64).reshape(len(losses))

    def stack_losses(self, losses: list[Any]) -> np.ndarray:
        """A non-empty list of device scalars -> a host array; backends stack on the device."""
        return np.array([float(self.to_numpy(x)) for x in losses])

    # -- the model --------------------------------------------------------------------------
    @abc.abstractmethod
    def embed(self, table: Any, ids: Any) -> Any:
        """Rows of `table` (V, E) at `ids` (...) -> (..., E)."""

    @abc.abstractmethod
    def skip_gram(self, centers: Any, contexts_negatives: Any, center_table: Any,
                  context_table: Any) -> Any:
        """(B, 1), (B, L) ids -> (B, 1, L) dot products of centre and context vectors."""

    @abc.abstractmethod
    def masked_bce(self, logits: Any, labels: Any, masks: Any) -> Any:
        """(B, L) logits, labels, masks -> (B,) mean over L of mask * sigmoid BCE."""

    # -- parameters -------------------------------------------------------------------------
    def init_params(self, seed: int) -> None:
        """Xavier-uniform on both tables, drawn in NumPy so every backend starts alike."""
        self.set_params(init_params_numpy(self.vocab_size, self.embed_size, seed))

    @abc.abstractmethod
    def get_params(self) -> Params:
        """A host copy of both tables."""

    @abc.abstractmethod
    def set_params(self, params: Params) -> None:
        """Replace both tables and reset the optimiser."""

    def _check_shape(self, table: np.ndarray, what: str) -> None:
        """Refuse a table of another shape in one line (say, a checkpoint of another run)."""
        from common.errors import DataError

        expected = (self.vocab_size, self.embed_size)
        if np.shape(table) != expected:
            raise DataError(f"{what} has shape {np.shape(table)}, this model needs {expected}")

    def _check_params(self, params: Params) -> None:
        """`set_params`' check, before anything is replaced: both tables (V, E)."""
        for table in params:
            self._check_shape(table, "parameter table")

    def _check_adam_state(self, state: AdamState) -> None:
        """`load_optimizer_state`'s check, before anything is replaced: four (V, E) moments
        for the Adams, four (0, E) for sgd (a checkpoint of another optimiser is refused)."""
        from common.errors import DataError

        expected = (moment_rows(self.optimizer, self.vocab_size), self.embed_size)
        for table in (*state.exp_avg, *state.exp_avg_sq):
            if np.shape(table) != expected:
                raise DataError(f"optimizer state has shape {np.shape(table)}, --optimizer "
                                f"{self.optimizer} needs {expected}: resume with the "
                                f"optimizer the run was trained with")

    # -- training ---------------------------------------------------------------------------
    @abc.abstractmethod
    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        """The objective on `batch` and its dense gradients, without updating anything."""

    def eval_loss(self, batch: Batch) -> Any:
        """The summed objective on `batch`, still on device, changing no parameter or state.

        For the held-out loss (`common/heldout.py`). This default goes through
        `loss_and_grads`, so it is right but pays for a backward pass; backends override it
        with a forward alone.
        """
        loss, _ = self.loss_and_grads(batch)
        return self.asarray(np.asarray(loss, dtype=np.float32))

    @abc.abstractmethod
    def train_step(self, batch: Batch) -> Any:
        """One optimiser step on the summed objective; returns that sum, still on device."""

    def train_steps(self, batches: Sequence[Batch]) -> list[Any]:
        """`train_step` on each batch in order; returns their losses, still on device.

        The epoch driver hands over up to `steps_per_call` batches at once. A compiled backend
        may run them in one call (one dispatch, one program): same steps, same results.
        """
        return [self.train_step(batch) for batch in batches]

    @abc.abstractmethod
    def optimizer_state(self) -> AdamState:
        """The optimiser's state on the host, for checkpoints and exact resume."""

    @abc.abstractmethod
    def load_optimizer_state(self, state: AdamState) -> None:
        """Restore what `optimizer_state` returned (after `set_params`)."""

    def agree_to_stop(self, signum: int) -> int:
        """The stop signal every replica agrees on (0: none), asked at each batch boundary.

        One replica: its own. Replicas in several processes take the largest, so all stop
        at the same batch boundary even when only some were signalled.
        """
        return signum

    def synchronize(self) -> None:
        """Wait for queued device work, so that timings measure it (no-op when eager)."""

    @classmethod
    def prepare_replicas(cls, replicas: int) -> None:
        """Before the framework starts its devices: ask for what `replicas` need (JAX's host
        devices, TensorFlow's logical CPUs); fail in one line when it started without them."""

    @classmethod
    def process_index(cls) -> int:
        """This process's number among those of a multi-process engine that runs its own
        (JAX's `jax.distributed`); 0, the writer, when it is alone."""
        return 0

    @classmethod
    def devices(cls) -> list[str]:
        """What this machine offers the framework: "cpu", "gpu:0", ..."""
        return ["cpu"]

    @classmethod
    def gpu_unavailable(cls) -> str:
        """Why `devices()` lists no GPU: the build lacks CUDA (and what to install), or no GPU
        is visible. Asked only when a GPU was requested and none is listed."""
        return f"the {cls.name} backend runs on the CPU only"

    @classmethod
    def check_device(cls, device: str) -> tuple[str, int]:
        """Parse `device`; fail in one line saying why when this framework cannot use it."""
        return require_device(device, cls.devices(), cls.gpu_unavailable)

    @classmethod
    def version(cls) -> str:
        """The framework's version string."""
        module = __import__(cls.framework)
        return str(getattr(module, "__version__", "unknown"))

    # -- use ------------------------------------------------------------------------------
    def similar(self, query_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine top-k over the centre table for each query, the query itself left out.

        (Q,) ids -> (Q, k) ids, (Q, k) similarities: the chapter's `get_similar_tokens`, with
        its `+ 1e-9`, for Q queries at once. Written once, on the host: a (Q, V) product is
        tiny next to training, and one implementation ranks ties alike in every backend.
        """
        table = self.get_params().center.astype(np.float32)
        query_ids = np.asarray(query_ids, dtype=np.int64)
        queries = table[query_ids]                                               # (Q, E)
        norms = (table * table).sum(1)[None, :] * (queries * queries).sum(1)[:, None]
        cos = (queries @ table.T) / np.sqrt(norms + 1e-9)                        # (Q, V)
        # The chapter takes the top k+1 and drops the first, assuming it is the query; masking
        # the query is exact even when another word ties with it.
        cos[np.arange(len(query_ids)), query_ids] = -np.inf
        top = np.argsort(-cos, axis=1, kind="stable")[:, :min(k, self.vocab_size)]
        return top, np.take_along_axis(cos, top, axis=1)


def normalize_device(device: str) -> tuple[str, int]:
    """'cpu' -> ('cpu', 0), 'gpu' -> ('gpu', 0), 'gpu:1'/'cuda:1' -> ('gpu', 1)."""
    from common.errors import DeviceError

    text = device.strip().lower()
    kind, _, index = text.partition(":")
    if kind == "cuda":
        kind = "gpu"
    if kind not in ("cpu", "gpu") or (index and not index.isdigit()):
        raise DeviceError(f"unknown device {device!r}: use cpu, gpu or gpu:N")
    return kind, int(index or 0)


def require_device(device: str, available: list[str],
                   why_no_gpu: Callable[[], str] | None = None) -> tuple[str, int]:
    """Parse `device` and fail in one line, listing `available`, when the machine lacks it.

    When a GPU is asked for and none is listed, `why_no_gpu()` says why (a CPU-only build and
    what to install, or no visible GPU), so the user is not left guessing.
    """
    from common.errors import DeviceError

    kind, index = normalize_device(device)
    name = "cpu" if kind == "cpu" else f"gpu:{index}"
    if name not in available:
        no_gpu = kind == "gpu" and not any(d.startswith("gpu") for d in available)
        reason = f": {why_no_gpu()}" if no_gpu and why_no_gpu is not None else ""
        raise DeviceError(f"device {device!r} is not available here{reason}; this machine "
                          f"offers: {', '.join(available)}")
    return kind, index
