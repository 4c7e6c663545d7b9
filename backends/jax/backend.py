"""The JAX backend: Flax NNX for the model, Optax's Adam, one `jax.jit`-compiled step.

The stateful `Backend` shell holds a parameter pytree and an optimiser state; training calls a
pure, compiled `(params, opt_state, batch, lr) -> (params, opt_state, loss)`. Its gradient is
the step's (`step=`): "chapter", `jax.value_and_grad` of `model.SkipGramModel.objective`, the
whole objective; "fast", `fast.value_and_table_grads`, the same numbers computed chunk by
chunk. `fixed_shapes` makes the data pipeline pad every batch to one shape, so the step
compiles once per run. The parameter and optimiser buffers are donated to the step, so XLA
updates them in place instead of allocating fresh tables and moments every step.

Optimisers (`optimizer=`): "adam", Optax's, over the whole gradient (the chapter's dense
Adam; the chapter step keeps `value_and_grad` of the whole objective). "sparse_adam" and
"sgd" (`optim.py`): Optax has no lazy update, so in both steps the host renumbers the batch
to the rows it looks up, the compiled step gathers those rows, takes the step's gradient with
respect to them (`value_and_grad` of the module's objective over the gathered rows, or the
fast step's chunks) and scatters the update back: a step costs what the batch touches.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, ClassVar

import jax
import numpy as np
import optax
from flax import nnx

from backends.base import ADAM_BETAS, ADAM_EPS, PADDED, AdamState, Backend, Params, Work, moment_rows
from backends.jax import fast, model, optim
from backends.jax.fast import Tables
from common.batching import Batch, stack_local

TABLES = ("center", "context")  # SkipGramModel's two nnx.Embed, in `Params` order


def adam() -> optax.GradientTransformation:
    """`optax.adam` with torch.optim.Adam's hyperparameters and a learning rate set per step.

    Optax divides by sqrt(v / (1 - beta2^t)) + eps, which is torch's
    sqrt(v) / sqrt(1 - beta2^t) + eps: eps is added after the bias correction in both, so
    eps 1e-8 means the same here (Keras, unlike both, adds it before). `eps_root` stays 0.
    One difference below float32 tolerance: Optax computes 1 - beta2^t in float32, torch in
    float64 (tested in tests/test_jax_backend.py). `inject_hyperparams` makes the learning
    rate part of the state, so the step sets a scheduled rate without a retrace.
    """
    return optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps", "eps_root"))(
        learning_rate=0.0, b1=ADAM_BETAS[0], b2=ADAM_BETAS[1], eps=ADAM_EPS, eps_root=0.0)


def adam_moments(opt_state: Any) -> optax.ScaleByAdamState:
    """The Adam state inside `adam()`'s: inject_hyperparams around chain(scale_by_adam, scale)."""
    return opt_state.inner_state[0]


def adam_state_at(optimizer: optax.GradientTransformation, params: Any, step: int, mu: Any,
                  nu: Any, device: jax.Device) -> Any:
    """`adam()`'s state after `step` steps with moments `mu`, `nu` (device pytrees shaped as
    `params`). Both counts, Adam's (its bias correction) and inject_hyperparams' (unused
    here), get their own buffer, since the step donates each."""
    def count() -> jax.Array:
        return jax.device_put(np.int32(step), device)

    fresh = optimizer.init(params)
    moments = adam_moments(fresh)._replace(count=count(), mu=mu, nu=nu)
    return fresh._replace(count=count(), inner_state=(moments, *fresh.inner_state[1:]))


def tables(center: Any, context: Any) -> Tables:
    """Two (V, E) tables -> the parameter pytree."""
    return {"center": {"embedding": center}, "context": {"embedding": context}}


def value_and_grads(graphdef: nnx.GraphDef, params: Tables,
                    batch: Batch) -> tuple[jax.Array, Tables]:
    """The chapter step's gradient: `jax.value_and_grad` of the module's whole objective."""
    def objective(params: Tables) -> jax.Array:
        return nnx.merge(graphdef, params).objective(*batch)

    return jax.value_and_grad(objective)(params)


def objective(graphdef: nnx.GraphDef, params: Tables, batch: Batch) -> jax.Array:
    """The summed objective on `batch`, forward only: (B, 1), (B, L) ... -> a 0-d array."""
    return nnx.merge(graphdef, params).objective(*batch)


Gradients = Callable[[Tables, Batch], tuple[jax.Array, Tables]]
TrainStep = Callable[[Tables, optax.OptState, Batch, np.float32],
                     tuple[Tables, optax.OptState, jax.Array]]


def make_train_step(gradients: Gradients, optimizer: optax.GradientTransformation) -> TrainStep:
    """A compiled optimiser step: `gradients`, then `optimizer` at the given rate.

    `params` and `opt_state` are donated: the caller's arrays are consumed and must be
    replaced by the returned ones (JAX raises if a donated array is used again).
    """
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params: Tables, opt_state: optax.OptState, batch: Batch,
                   lr: jax.Array) -> tuple[Tables, optax.OptState, jax.Array]:
        loss, grads = gradients(params, batch)
        opt_state.hyperparams["learning_rate"] = lr
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def make_row_step(gradients: Gradients, kind: str) -> Callable:
    """A compiled sparse step: gather the local batch's `rows` (n,) of both tables, the
    gradient with respect to them, `optim.update_rows` on each table; params and state
    donated, as in `make_train_step`."""
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def row_step(params: Tables, state: optim.RowState, batch: Batch, rows: jax.Array,
                 touched: jax.Array, lr: jax.Array) -> tuple[Tables, optim.RowState, jax.Array]:
        local = tables(*(params[name]["embedding"][rows] for name in TABLES))
        loss, grads = gradients(local, batch)
        count = state.count + 1
        new = [optim.update_rows(kind, params[name]["embedding"], state.exp_avg[index],
                                 state.exp_avg_sq[index], rows, grads[name]["embedding"],
                                 touched[index], count, lr)
               for index, name in enumerate(TABLES)]
        return (tables(*(table for table, _, _ in new)),
                optim.RowState(count, tuple(m for _, m, _ in new), tuple(v for _, _, v in new)),
                loss)

    return row_step


class JaxBackend(Backend):
    """JAX on CPU or GPU (`--device cpu`, `gpu`, `gpu:N`), one compiled step per run."""

    name: ClassVar[str] = "jax"
    framework: ClassVar[str] = "jax"
    fixed_shapes: ClassVar[bool] = True  # jit compiles one program per input shape
    data_parallel: ClassVar[str] = "devices"  # distributed.py: a Mesh, the batch sharded
    # The sparse optimisers' state (None with adam); a class default so that subclasses with
    # their own tables (variants.py) synchronise without one.
    _row_state: Any = None

    def __init__(self, vocab_size: int, embed_size: int, *, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                         optimizer=optimizer, step=step)
        kind, index = self.check_device(device)
        # This process's devices (the same list unless `jax.distributed` joined several).
        self.jax_device: jax.Device = jax.local_devices(backend=kind)[index]
        self.sparse = optimizer != "adam"
        with jax.default_device(self.jax_device):
            module = model.SkipGramModel(vocab_size, embed_size, rngs=nnx.Rngs(seed))
        # The module is kept as (static graph, parameter pytree): the pytree is what the
        # compiled step consumes and returns, so it is the one copy of the parameters.
        graphdef, state = nnx.split(module, nnx.Param)
        self._graphdef = graphdef
        self._params: Tables = nnx.to_pure_dict(state)
        self._optimizer = adam()
        # One optimiser state: Optax's for adam, the rows' for the sparse ones (set_params).
        self._opt_state: Any = None
        self._row_state: optim.RowState | None = None
        if step == "chapter":
            gradients = functools.partial(value_and_grads, graphdef)
        else:  # chunking pays where the cache is the bottleneck; a GPU wants one large kernel
            gradients = functools.partial(fast.value_and_table_grads, graphdef,
                                          chunked=self.jax_device.platform == "cpu")
        self._gradients: Gradients = gradients  # distributed.py sums it over the replicas
        self._train_step = make_train_step(gradients, self._optimizer)
        self._row_step = make_row_step(gradients, optimizer)
        self._loss_and_grads = jax.jit(gradients)
        # Not donated: evaluation must leave the parameters usable.
        self._eval_loss = jax.jit(functools.partial(objective, graphdef))
        self.init_params(seed)

    # -- disclosure -------------------------------------------------------------------------
    def work(self) -> Work:
        if self.sparse:
            return Work(PADDED, "none", 1, f"jax.jit (XLA), value_and_grad of the gathered "
                        f"rows, {self.optimizer} scattered back")
        if self.step == "chapter":
            return Work(PADDED, "none", 1, "jax.jit (XLA), value_and_grad, optax.adam")
        return Work(PADDED, "none", 1, "jax.jit (XLA), value_and_grad by chunks, optax.adam")

    # JAX has no thread setting of its own: XLA's CPU pool is sized by the CPUs the process
    # may use when its client starts (the first array), so the base class's pinning is it.

    # -- arrays ---------------------------------------------------------------------------
    def asarray(self, x: np.ndarray) -> jax.Array:
        return jax.device_put(np.asarray(x), self.jax_device)

    def to_numpy(self, x: jax.Array) -> np.ndarray:
        return np.array(x)  # a copy: a NumPy view would pin the buffer and block donation

    def stack_losses(self, losses: list[Any]) -> np.ndarray:
        """One stack and one device -> host copy for all pending losses (one sync)."""
        return np.asarray(jax.numpy.stack(losses))

    @staticmethod
    def _host_batch(batch: Batch) -> Batch:
        """The batch in the step's dtypes: (B, 1), (B, L) int32 ids, (B, L) float32.

        Left as NumPy: the jitted step transfers NumPy arguments in its C++ dispatch, next
        to the committed parameters, faster than `jax.device_put` from Python.
        """
        return Batch(np.asarray(batch.centers, np.int32),
                     np.asarray(batch.contexts_negatives, np.int32),
                     np.asarray(batch.masks, np.float32), np.asarray(batch.labels, np.float32))

    # -- the model --------------------------------------------------------------------------
    def embed(self, table: jax.Array, ids: jax.Array) -> jax.Array:
        return model.embed(table, ids)

    def skip_gram(self, centers: jax.Array, contexts_negatives: jax.Array,
                  center_table: jax.Array, context_table: jax.Array) -> jax.Array:
        return model.skip_gram(centers, contexts_negatives, center_table, context_table)

    def masked_bce(self, logits: jax.Array, labels: jax.Array, masks: jax.Array) -> jax.Array:
        return model.masked_bce(logits, labels, masks)

    # -- parameters -------------------------------------------------------------------------

    @staticmethod
    def _to_host(pytree: Tables) -> Params:
        """The parameters, their gradients or an Adam moment -> host `Params` (copies)."""
        return Params(*(np.array(pytree[name]["embedding"], dtype=np.float32)
                        for name in TABLES))

    def _to_device(self, values: Params) -> Tables:
        """Host `Params` -> a parameter-shaped pytree on the device (copies)."""
        return tables(*(jax.device_put(np.array(table, dtype=np.float32), self.jax_device)
                        for table in values))

    def get_params(self) -> Params:
        return self._to_host(self._params)

    def set_params(self, params: Params) -> None:
        self._check_params(params)
        self._params = self._to_device(params)
        self._opt_state = None if self.sparse else self._optimizer.init(self._params)
        self._row_state = self._new_row_state() if self.sparse else None
        self.adam_steps = 0

    def _new_row_state(self, step: int = 0, exp_avg: Params | None = None,
                       exp_avg_sq: Params | None = None) -> optim.RowState:
        """The sparse optimisers' state on the device (zero moments unless given)."""
        shape = (moment_rows(self.optimizer, self.vocab_size), self.embed_size)
        zeros = Params(*(np.zeros(shape, np.float32) for _ in TABLES))

        def put(values: Params | None) -> tuple[jax.Array, jax.Array]:
            return tuple(jax.device_put(np.array(table, np.float32), self.jax_device)
                         for table in (values if values is not None else zeros))

        return optim.RowState(jax.device_put(np.int32(step), self.jax_device), put(exp_avg),
                              put(exp_avg_sq))

    # -- training ---------------------------------------------------------------------------
    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        # The gradient that `train_step` uses, so parity tests check what trains.
        if self.sparse:
            (local,), rows, _ = stack_local([batch])
            local_params = tables(*(params[rows[0]] for params in self.get_params()))
            loss, grads = self._loss_and_grads(local_params, self._host_batch(local))
            dense = np.zeros((2, self.vocab_size, self.embed_size), np.float32)
            for table, grad in zip(dense, self._to_host(grads)):
                np.add.at(table, rows[0], grad)  # repeated 0s add padding's 0s
                table[0] = 0  # the padding row: no gradient reaches it
            return float(loss), Params(*dense)
        loss, grads = self._loss_and_grads(self._params, self._host_batch(batch))
        return float(loss), self._to_host(grads)

    def eval_loss(self, batch: Batch) -> jax.Array:
        return self._eval_loss(self._params, self._host_batch(batch))

    def train_step(self, batch: Batch) -> jax.Array:
        if self.sparse:
            (local,), rows, touched = stack_local([batch])
            self._params, self._row_state, loss = self._row_step(
                self._params, self._row_state, self._host_batch(local), rows[0], touched[0],
                np.float32(self.next_lr()))
            return loss
        # A float32 scalar: traced like the batch, so a new rate each step reuses the program.
        self._params, self._opt_state, loss = self._train_step(
            self._params, self._opt_state, self._host_batch(batch), np.float32(self.next_lr()))
        return loss  # no float(): the driver syncs only when it reports

    def optimizer_state(self) -> AdamState:
        if self.sparse:
            state = self._row_state
            return AdamState(int(state.count), Params(*map(np.array, state.exp_avg)),
                             Params(*map(np.array, state.exp_avg_sq)))
        moments = adam_moments(self._opt_state)
        return AdamState(int(moments.count), self._to_host(moments.mu),
                         self._to_host(moments.nu))

    def load_optimizer_state(self, state: AdamState) -> None:
        self._check_adam_state(state)
        if self.sparse:
            self._row_state = self._new_row_state(int(state.step), state.exp_avg,
                                                  state.exp_avg_sq)
            self.adam_steps = int(state.step)
            return
        self._opt_state = adam_state_at(self._optimizer, self._params, int(state.step),
                                        self._to_device(state.exp_avg),
                                        self._to_device(state.exp_avg_sq), self.jax_device)
        self.adam_steps = int(state.step)

    def synchronize(self) -> None:
        jax.block_until_ready((self._params, self._opt_state, self._row_state))

    @classmethod
    def prepare_replicas(cls, replicas: int) -> None:
        from backends.jax.distributed import reserve_host_devices

        reserve_host_devices(replicas)

    @classmethod
    def process_index(cls) -> int:
        return jax.process_index()

    @classmethod
    def devices(cls) -> list[str]:
        return ["cpu"] + [f"gpu:{index}" for index in range(len(_gpus()))]

    @classmethod
    def gpu_unavailable(cls) -> str:
        plugins = _cuda_plugins()
        if not plugins:
            return (f"jaxlib {jax.__version__} has no CUDA plugin; install jax[cuda12]: "
                    f"make env-gpu (README: GPUs)")
        return (f"JAX's CUDA plugin ({', '.join(plugins)}) finds no GPU (no NVIDIA driver, or "
                f"CUDA_VISIBLE_DEVICES hides them): {_gpu_probe_error() or 'no error given'}")


def _gpus() -> list[jax.Device]:
    """The GPUs JAX can use; none (not an error) when jaxlib has no GPU plugin."""
    return [] if _gpu_probe_error() else jax.devices("gpu")


def _gpu_probe_error() -> str:
    """JAX's own first line on why it offers no GPU ("Unknown backend: 'gpu' requested, but
    no platforms ..."), or "" when it has one; its log notices are held back meanwhile."""
    probe_logger = logging.getLogger("jax._src.xla_bridge")
    quiet = _QuietPlatformProbe()
    probe_logger.addFilter(quiet)
    try:
        jax.devices("gpu")
        return ""
    except RuntimeError as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    finally:
        probe_logger.removeFilter(quiet)


def _cuda_plugins() -> list[str]:
    """Installed JAX CUDA plugin distributions (jax-cuda12-plugin, ...), found without import."""
    from importlib import metadata

    names = {dist.metadata["Name"].lower() for dist in metadata.distributions()}
    return sorted(name for name in names if name.startswith("jax-cuda") and "plugin" in name)


class _QuietPlatformProbe(logging.Filter):
    """Drops xla_bridge's 'a GPU may be present, but ...' notices while devices are probed:
    `devices()` reports what exists, and `--device gpu` fails with its own one-line error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR
