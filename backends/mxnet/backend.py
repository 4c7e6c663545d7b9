"""The MXNet (Gluon) backend: the shell that joins the chosen step to `backends/base.py`.

`--step chapter` (`model.py`): the chapter's MXNet tab, optimising exactly the others'
objective: the `nn.Embedding` pair, `autograd.record()` and `backward()` through one
hybridized graph, and `gluon.Trainer(..., 'adam')`. Its differences from the tab, each so that
it trains what the PyTorch tab (and every other backend here) trains: Xavier-uniform tables
(set from `init_params_numpy`), `trainer.step(1)` on the summed objective instead of
`step(batch_size)` on the mean, and MXNet's Adam given torch's eps placement
(`model.torch_epsilon`). `--step fast` (`fast.py`): the same numbers from a written-out
gradient over the batch's real pairs, native operators and torch's Adam called directly.
"""
from __future__ import annotations

import pickle
from typing import Any, ClassVar

import mxnet as mx
import numpy as np

from backends.base import AdamState, Backend, Params
from backends.mxnet import fast, kernels, model
from common.batching import Batch
from common.errors import ConfigError

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
        if optimizer != "adam":
            raise ConfigError(f"the mxnet backend offers only --optimizer adam, got {optimizer!r}")
        self.net = model.SkipGramModel(vocab_size, embed_size)
        self.net.initialize(ctx=self.context)  # Xavier, then overwritten by init_params
        if step == "chapter":
            self.trainer: ChapterStep | fast.FastStep = ChapterStep(self.net, lr, self.context)
        else:
            kernels.kernel_mode()  # a bad W2V_MXNET_KERNEL fails here, not at the first step
            self.trainer = fast.FastStep(vocab_size, embed_size, lr, self.context)
        self.init_params(seed)

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
    def devices(cls) -> list[str]:
        return available_devices()

    @classmethod
    def gpu_unavailable(cls) -> str:
        if not mx.runtime.Features().is_enabled("CUDA"):
            return (f"mxnet {mx.__version__} is the CPU build; MXNet's CUDA builds are separate "
                    f"packages (pip install mxnet-cu112==1.9.1 in .venv-mxnet, README: GPUs)")
        return (f"mxnet {mx.__version__} is built with CUDA but sees no GPU (no NVIDIA driver, "
                f"or CUDA_VISIBLE_DEVICES hides them)")
