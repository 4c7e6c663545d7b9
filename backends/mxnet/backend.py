"""The MXNet (Gluon) backend: the shell that joins the chosen step to `backends/base.py`.

`--step chapter` (`model.py`): the chapter's MXNet tab, optimising exactly the others'
objective: the `nn.Embedding` pair, `autograd.record()` and `backward()` through one
hybridized graph, and `gluon.Trainer(..., 'adam')`. Its differences from the tab, each so that
it trains what the PyTorch tab (and every other backend here) trains: Xavier-uniform tables
(set from `init_params_numpy`), `trainer.step(1)` on the summed objective instead of
`step(batch_size)` on the mean, and MXNet's Adam given torch's eps placement
(`model.torch_epsilon`). `--step fast` (`fast.py`): the same numbers from a written-out
gradient over the batch's real pairs, native operators and torch's Adam called directly.

`--optimizer sparse_adam` and `sgd` (`optim.py`): MXNet's own Adam and SGD with
`lazy_update=True` on row-sparse gradients of the touched rows; the chapter step takes them
from its autograd graph (`ChapterLazyStep`), the fast step from a local batch of the rows it
looks up (`FastLazyStep`), so its cost follows the batch, not V.
"""
from __future__ import annotations

import pickle
from typing import Any, ClassVar

import mxnet as mx
import numpy as np

from backends.base import PADDED, PAIRS, AdamState, Backend, Params, Work
from backends.mxnet import fast, kernels, model, optim
from common.batching import Batch, local_rows, localize, touched_rows

BATCH_DTYPES = (np.int32, np.int32, np.float32, np.float32)


def available_devices() -> list[str]:
    """The `--device` values MXNet can use here: cpu, then gpu:i (none on the CPU-only wheel)."""
    try:
        gpus = mx.context.num_gpus()
    except mx.base.MXNetError:  # a CUDA build on a machine without a usable driver
        gpus = 0
    return ["cpu"] + [f"gpu:{index}" for index in range(gpus)]


def mxnet_context(device: str) -> mx.Context:
    """`--device` -> MXNet context: cpu -> mx.cpu(), gpu or gpu:N -> mx.gpu(N).

    A device this machine lacks raises a one-line DeviceError listing what it has.
    """
    kind, index = MXNetBackend.check_device(device)
    return mx.cpu() if kind == "cpu" else mx.gpu(index)


class ChapterStep:
    """The chapter's step (`model.train_step`) and its `gluon.Trainer`, over `net`."""

    def __init__(self, net: model.SkipGramModel, lr: float, context: mx.Context) -> None:
        self.net, self.lr, self.context = net, lr, context
        self.objective = model.SkipGramObjective(net)
        # One cached graph for the forward and its backward; static_alloc keeps its memory
        # from step to step, static_shape its plan for each (B, L) seen.
        self.objective.hybridize(static_alloc=True, static_shape=True)
        self.reset()

    def reset(self) -> None:
        """A fresh Trainer: no optimiser state, step 0."""
        self.trainer = model.trainer(self.net, self.lr)
        self.step_count = 0

    def batch_arrays(self, batch: Batch) -> tuple[mx.np.ndarray, ...]:
        """Batch -> (B, 1), (B, L) int32 ids and (B, L) float32 masks, labels on the context."""
        return tuple(mx.np.array(array, dtype=dtype, ctx=self.context)
                     for array, dtype in zip(batch, BATCH_DTYPES))

    def train_step(self, batch: Batch, lr: float) -> mx.np.ndarray:
        self.step_count += 1
        self.trainer.set_learning_rate(lr)
        return model.train_step(self.objective, self.trainer, *self.batch_arrays(batch),
                                self.step_count)

    def loss_and_grads(self, batch: Batch) -> tuple[mx.np.ndarray, tuple[mx.np.ndarray, ...]]:
        """`l.sum()` and both tables' gradients from `backward()`, with no optimiser step."""
        with mx.autograd.record():
            losses = self.objective(*self.batch_arrays(batch))
        losses.backward()
        return losses.sum(), (self.net.center.weight.grad(), self.net.context.weight.grad())

    def eval_loss(self, batch: Batch) -> mx.np.ndarray:
        return self.objective(*self.batch_arrays(batch)).sum()

    # The Trainer keeps Adam's moments in its Updater (`Updater.get_states`/`set_states`,
    # pickles of {parameter index: (mean, var)}) and the step count t in the optimiser.
    def _updater(self) -> Any:
        return self.trainer._updaters[0]  # one per context; Gluon has no public accessor

    def state(self) -> AdamState:
        states = pickle.loads(self._updater().get_states(dump_optimizer=False))
        shape = self.net.center.weight.shape
        moments = [states.get(index) for index in range(2)]
        exp_avg, exp_avg_sq = (
            Params(*(np.zeros(shape, np.float32) if pair is None else pair[which].asnumpy()
                     for pair in moments)) for which in (0, 1))
        return AdamState(self.step_count, exp_avg, exp_avg_sq)

    def load_state(self, state: AdamState) -> None:
        self.reset()
        states = {index: tuple(mx.nd.array(np.asarray(values, np.float32), ctx=self.context)
                               for values in (exp_avg, exp_avg_sq))
                  for index, (exp_avg, exp_avg_sq) in enumerate(zip(state.exp_avg,
                                                                    state.exp_avg_sq))}
        self._updater().set_states(pickle.dumps(states))
        # MXNet's Adam counts t per parameter; the next step is t + 1 for both tables.
        self.trainer.optimizer._index_update_count.update({0: state.step, 1: state.step})
        self.trainer.optimizer.num_update = int(state.step)
        self.step_count = int(state.step)


def _take(array: Any, positions: np.ndarray, context: mx.Context) -> mx.nd.NDArray:
    """Rows `positions` of a device array, as a legacy NDArray (what sparse arrays take)."""
    return array.as_nd_ndarray().take(mx.nd.array(positions, ctx=context, dtype=np.int64))


class ChapterLazyStep(ChapterStep):
    """The chapter's graph and `backward()`, then MXNet's lazy optimiser (`optim.py`) on the
    touched rows of the gradient, as a row-sparse array."""

    def __init__(self, net: model.SkipGramModel, lr: float, context: mx.Context,
                 kind: str) -> None:
        self.kind = kind
        super().__init__(net, lr, context)

    def reset(self) -> None:
        self.lazy = optim.LazyOptimizer(self.kind, self.lr, self.net.center.weight.shape,
                                        self.context)

    def train_step(self, batch: Batch, lr: float) -> mx.np.ndarray:
        with mx.autograd.record():
            losses = self.objective(*self.batch_arrays(batch))
        losses.backward()
        rows = touched_rows(batch)
        grads = tuple(_take(parameter.grad(), table_rows, self.context)
                      for parameter, table_rows in zip(
                          (self.net.center.weight, self.net.context.weight), rows))
        self.lazy.step(self.net.tables, rows, grads, lr)
        return losses.sum()

    def state(self) -> AdamState:
        return self.lazy.state()

    def load_state(self, state: AdamState) -> None:
        self.lazy.load_state(state)


class FastLazyStep:
    """The fast step for the lazy optimisers: `fast.FastStep`'s gradient over a local batch
    (the rows it looks up, padded to a power-of-two count: one cached graph per count), then
    MXNet's lazy optimiser on the touched rows."""

    def __init__(self, vocab_size: int, embed_size: int, lr: float, context: mx.Context,
                 kind: str) -> None:
        self.embed_size, self.lr, self.context = embed_size, lr, context
        self.lazy = optim.LazyOptimizer(kind, lr, (vocab_size, embed_size), context)
        self.steps: dict[int, fast.FastStep] = {}

    def reset(self) -> None:
        self.lazy.reset()

    def _local(self, tables: tuple[Any, Any], batch: Batch) -> tuple[Any, Any, fast.FastStep,
                                                                   tuple[Any, Any]]:
        """(the local batch, its row count n, the FastStep of that n, the gathered tables)."""
        local = localize(batch)
        count = local_rows(len(local.rows))
        if count not in self.steps:
            self.steps[count] = fast.FastStep(count, self.embed_size, self.lr, self.context)
        rows = np.zeros(count, np.int64)
        rows[:len(local.rows)] = local.rows
        gathered = tuple(_take(table, rows, self.context).as_np_ndarray() for table in tables)
        return local, rows, self.steps[count], gathered

    def train_step(self, tables: tuple[Any, Any], batch: Batch, lr: float) -> mx.np.ndarray:
        local, _, step, gathered = self._local(tables, batch)
        loss = step.gradients(gathered, local.batch)
        picked = [np.flatnonzero(touched)
                  for touched in (local.center_touched, local.context_touched)]
        self.lazy.step(tables, tuple(local.rows[where] for where in picked),
                       tuple(_take(grad, where, self.context)
                             for grad, where in zip(step.grads, picked)), lr)
        return loss

    def loss_and_grads(self, tables: tuple[Any, Any], batch: Batch) -> tuple[Any, Params]:
        """The loss and the dense host gradients the step would apply (for parity tests)."""
        local, rows, step, gathered = self._local(tables, batch)
        loss = step.gradients(gathered, local.batch)
        dense = np.zeros((2, *self.lazy.shape), np.float32)
        for table, grad in zip(dense, step.grads):
            np.add.at(table, rows, grad.asnumpy())  # repeated 0s add padding's 0s
            table[0] = 0  # the padding row: no gradient reaches it
        return loss, Params(*dense)

    def eval_loss(self, tables: tuple[Any, Any], batch: Batch) -> Any:
        local, _, step, gathered = self._local(tables, batch)
        return step.eval_loss(gathered, local.batch)

    def state(self) -> AdamState:
        return self.lazy.state()

    def load_state(self, state: AdamState) -> None:
        self.lazy.load_state(state)


class MXNetBackend(Backend):
    """MXNet 1.9 Gluon on CPU or CUDA: `--device cpu`, `gpu`, `gpu:N`."""

    name: ClassVar[str] = "mxnet"
    framework: ClassVar[str] = "mxnet"
    # Eager shapes: the chapter step re-plans its cached graph per (B, L) (few: L is the
    # batch's widest row), and the fast step sees pairs, not slots.
    fixed_shapes: ClassVar[bool] = False
    data_parallel: ClassVar[str] = "devices"  # distributed.py: a context list, a kvstore

    def __init__(self, vocab_size: int, embed_size: int, *, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                         optimizer=optimizer, step=step)
        self.context = mxnet_context(device)
        self.net = model.SkipGramModel(vocab_size, embed_size)
        self.net.initialize(ctx=self.context)  # Xavier, then overwritten by init_params
        self.trainer: ChapterStep | fast.FastStep | FastLazyStep
        if step == "chapter":
            self.trainer = ChapterStep(self.net, lr, self.context) if optimizer == "adam" else \
                ChapterLazyStep(self.net, lr, self.context, optimizer)
        else:
            kernels.kernel_mode()  # a bad W2V_MXNET_KERNEL fails here, not at the first step
            self.trainer = fast.FastStep(vocab_size, embed_size, lr, self.context) \
                if optimizer == "adam" else \
                FastLazyStep(vocab_size, embed_size, lr, self.context, optimizer)
        self.init_params(seed)

    # -- disclosure -------------------------------------------------------------------------
    def work(self) -> Work:
        if self.step == "chapter":
            how = "adam" if self.optimizer == "adam" else f"{self.optimizer}, lazy_update"
            return Work(PADDED, "none", 1, f"hybridized Gluon graph, autograd, gluon.Trainer {how}")
        if self.optimizer != "adam":
            return Work(PAIRS, "none", 1, f"hybridized loss graph on the touched rows, "
                        f"{self.optimizer} lazy update")
        native = [what for what, operator in (
            ("Adam", self.trainer.optimizer.native_adam(self.context)),
            ("gradients", self.trainer.native_gradients)) if operator is not None]
        code = f"C++ -march=native ({', '.join(native)})" if native else "none"
        return Work(PAIRS, code, 1, "hybridized loss graph, gradient written out, torch's Adam")

    @classmethod
    def set_threads(cls, threads: int) -> str:
        """Pin the CPUs, then MXNet's OpenMP pool (intra-op). Its engine's worker threads
        (inter-op, MXNET_CPU_WORKER_NTHREADS) are fixed when MXNet is imported."""
        how = super().set_threads(threads)
        if threads:
            import ctypes

            mx.base.check_call(mx.base._LIB.MXSetNumOMPThreads(ctypes.c_int(threads)))
            how += f"; MXNet OpenMP threads {threads}"
        return how

    # -- arrays ---------------------------------------------------------------------------
    def asarray(self, x: np.ndarray) -> mx.np.ndarray:
        return mx.np.array(x, dtype=np.asarray(x).dtype, ctx=self.context)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.asnumpy()

    def stack_losses(self, losses: list[Any]) -> np.ndarray:
        """One stack and one device -> host copy for all pending losses (one sync)."""
        return mx.np.stack(losses).asnumpy()

    # -- the model --------------------------------------------------------------------------
    def embed(self, table: mx.np.ndarray, ids: mx.np.ndarray) -> mx.np.ndarray:
        return model.embed(mx.nd, table, ids)

    def skip_gram(self, centers: mx.np.ndarray, contexts_negatives: mx.np.ndarray,
                  center_table: mx.np.ndarray, context_table: mx.np.ndarray) -> mx.np.ndarray:
        return model.skip_gram(mx.nd, centers, contexts_negatives,
                               lambda ids: model.embed(mx.nd, center_table, ids),
                               lambda ids: model.embed(mx.nd, context_table, ids))

    def masked_bce(self, logits: mx.np.ndarray, labels: mx.np.ndarray,
                   masks: mx.np.ndarray) -> mx.np.ndarray:
        return model.masked_bce(mx.gluon.loss.SigmoidBCELoss(), logits, labels, masks)

    # -- parameters -------------------------------------------------------------------------
    def get_params(self) -> Params:
        return Params(*(table.asnumpy() for table in self.net.tables))

    def set_params(self, params: Params) -> None:
        self._check_params(params)
        for parameter, values in zip((self.net.center.weight, self.net.context.weight), params):
            parameter.set_data(self.asarray(np.asarray(values, dtype=np.float32)))
        self.trainer.reset()
        self.adam_steps = 0

    # -- training ---------------------------------------------------------------------------
    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        # The gradient that `train_step` uses, so parity tests check what trains.
        if isinstance(self.trainer, FastLazyStep):
            loss, params = self.trainer.loss_and_grads(self.net.tables, batch)
            return float(loss.asnumpy()), params
        if self.step == "chapter":
            loss, grads = self.trainer.loss_and_grads(batch)
        else:
            loss, grads = self.trainer.gradients(self.net.tables, batch), self.trainer.grads
        return float(loss.asnumpy()), Params(*(grad.asnumpy() for grad in grads))

    def eval_loss(self, batch: Batch) -> mx.np.ndarray:
        """The objective alone (no gradient is written, no state changes), still on device."""
        if self.step == "chapter":
            return self.trainer.eval_loss(batch)
        return self.trainer.eval_loss(self.net.tables, batch)

    def train_step(self, batch: Batch) -> mx.np.ndarray:
        lr = self.next_lr()  # the schedule's rate for this step
        if self.step == "chapter":
            return self.trainer.train_step(batch, lr)
        return self.trainer.train_step(self.net.tables, batch, lr)  # no asnumpy(): no sync

    def optimizer_state(self) -> AdamState:
        return self.trainer.state()

    def load_optimizer_state(self, state: AdamState) -> None:
        self._check_adam_state(state)
        self.trainer.load_state(state)
        self.adam_steps = int(state.step)

    def synchronize(self) -> None:
        # MXNet's engine is asynchronous on CPU as well: calls return before the work is done.
        mx.nd.waitall()

    @classmethod
    def process_index(cls) -> int:
        """This worker's rank under MXNet's launcher (`dist_sync`), else 0."""
        from backends.mxnet.distributed import dist_kvstore

        kvstore = dist_kvstore()
        return 0 if kvstore is None else int(kvstore.rank)

    @classmethod
    def devices(cls) -> list[str]:
        return available_devices()

    @classmethod
    def gpu_unavailable(cls) -> str:
        if not mx.runtime.Features().is_enabled("CUDA"):
            return (f"mxnet {mx.__version__} is the CPU build; MXNet's CUDA builds are separate "
                    f"packages (pip install mxnet-cu112==1.9.1 in .venv-mxnet, README: GPUs)")
        return (f"mxnet {mx.__version__} is built with CUDA but sees no GPU (no NVIDIA driver, "
                f"or CUDA_VISIBLE_DEVICES hides them)")
