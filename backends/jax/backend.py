"""The JAX backend: Flax NNX for the model, Optax for Adam, one `jax.jit`-compiled step.

The stateful `Backend` shell holds a parameter pytree and an optimiser state; training calls a
pure, compiled `(params, opt_state, batch) -> (params, opt_state, loss)`. `fixed_shapes` makes
the data pipeline pad every batch to one shape, so the step compiles once per run. The
parameter and optimiser buffers are donated to the step, so XLA updates them in place instead
of allocating 16 MiB of fresh tables and moments every step.

The gradient is exact and dense (the chapter's dense Adam decays every row's moments), but is
not `jax.grad` of the whole objective: see `value_and_table_grads` for why and how.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from backends.base import ADAM_BETAS, ADAM_EPS, AdamState, Backend, Params
from backends.jax import model
from common.batching import Batch
from common.errors import ConfigError

# The parameter pytree: SkipGramModel's parameters as `nnx.to_pure_dict` writes them,
# {"center": {"embedding": (V, E)}, "context": {"embedding": (V, E)}}. Plain dicts flatten in
# C++ on every call; `nnx.merge` rebuilds the module from them. Adam's moments share the shape.
Tables = dict[str, dict[str, jax.Array]]
TABLES = ("center", "context")  # SkipGramModel's two nnx.Embed, in `Params` order

# Examples per chunk of the gradient: a chunk's (rows, L, E) blocks of looked-up rows and
# their gradients hold about this many floats (3 MiB: 128 examples of the chapter's L = 60,
# E = 100). On a 2-core CPU, 64 to 128 rows ran at 3.1-3.3 ms/step, 32 at 3.5, 512 at 4.5.
CHUNK_ELEMENTS = 128 * 60 * 100


def adam() -> optax.GradientTransformation:
    """torch.optim.Adam as Optax writes it, without the learning rate (the step applies it).

    Optax divides by sqrt(v / (1 - beta2^t)) + eps, which is torch's
    sqrt(v) / sqrt(1 - beta2^t) + eps: eps is added after the bias correction in both, so
    eps 1e-8 means the same here (Keras, unlike both, adds it before). `eps_root` stays 0.
    One difference below float32 tolerance: Optax computes 1 - beta2^t in float32, torch in
    float64 (6e-6 of the first step; tested in tests/test_jax_backend.py).
    `optax.adam(lr)` is this followed by a scale of -lr; the step takes lr as an argument
    instead, so that a scheduled rate changes every step without a retrace.
    """
    return optax.scale_by_adam(b1=ADAM_BETAS[0], b2=ADAM_BETAS[1], eps=ADAM_EPS, eps_root=0.0)


def tables(center: Any, context: Any) -> Tables:
    """Two (V, E) tables -> the parameter pytree."""
    return {"center": {"embedding": center}, "context": {"embedding": context}}


def chunking(batch_size: int, slots: int, embed_size: int, chunked: bool) -> tuple[int, int]:
    """(chunks, rows per chunk) for a (B, L) batch; one chunk when not `chunked` (GPUs)."""
    if not chunked:
        return 1, batch_size
    target_rows = max(1, CHUNK_ELEMENTS // (slots * embed_size))
    count = -(-batch_size // target_rows)
    return count, -(-batch_size // count)


def value_and_table_grads(graphdef: nnx.GraphDef, params: Tables, batch: Batch, *,
                          chunked: bool) -> tuple[jax.Array, Tables]:
    """The objective on `batch` and its dense gradients with respect to both tables.

    (B, 1), (B, L) ids, (B, L) masks and labels -> 0-d loss, gradients shaped like `params`.
    `jax.grad` of `SkipGramModel.objective` gives the same numbers (tested) but, on CPU,
    spends most of the step streaming (B, L, E) = 12 MiB blocks through memory: the
    looked-up rows, their gradient, and zeroed (V, E) tables for the lookup's scatter. Here
    autodiff differentiates `objective_of_rows` with respect to the looked-up rows, for a
    chunk of examples at a time, and the lookup's own gradient -- add each row's gradient to
    the table row it came from -- is one scatter-add per chunk into a running total. The
    chunk's blocks stay in cache, and `lax.scan` reuses their buffers: 1.6x faster on a
    2-core CPU. A batch that does not split evenly is padded with all-padding examples
    (mask 0), which count 0.
    """
    module = nnx.merge(graphdef, params)
    center_table, context_table = module.center.embedding[...], module.context.embedding[...]
    batch_size, slots = batch.contexts_negatives.shape
    count, rows = chunking(batch_size, slots, center_table.shape[1], chunked)

    def split(array: jax.Array) -> jax.Array:  # (B, ...) -> (count, rows, ...)
        padding = [(0, count * rows - batch_size)] + [(0, 0)] * (array.ndim - 1)
        return jnp.pad(array, padding).reshape(count, rows, *array.shape[1:])

    rows_value_and_grad = jax.value_and_grad(model.objective_of_rows, argnums=(0, 1))

    def accumulate(totals: tuple[jax.Array, jax.Array, jax.Array],
                   chunk: Batch) -> tuple[tuple[jax.Array, jax.Array, jax.Array], None]:
        loss, center_grad, context_grad = totals
        center_rows = model.embed(center_table, chunk.centers)              # (rows, 1, E)
        context_rows = model.embed(context_table, chunk.contexts_negatives)  # (rows, L, E)
        chunk_loss, (center_rows_grad, context_rows_grad) = rows_value_and_grad(
            center_rows, context_rows, chunk.masks, chunk.labels)
        # Ids repeated within and across examples: `.at[].add` sums them, as autodiff would.
        center_grad = center_grad.at[chunk.centers].add(center_rows_grad)
        context_grad = context_grad.at[chunk.contexts_negatives].add(context_rows_grad)
        return (loss + chunk_loss, center_grad, context_grad), None

    zero = jnp.zeros((), center_table.dtype)
    (loss, center_grad, context_grad), _ = jax.lax.scan(
        accumulate, (zero, jnp.zeros_like(center_table), jnp.zeros_like(context_table)),
        Batch(*(split(array) for array in batch)))
    return loss, tables(center_grad, context_grad)


def objective(graphdef: nnx.GraphDef, params: Tables, batch: Batch) -> jax.Array:
    """The summed objective on `batch`, forward only: (B, 1), (B, L) ... -> a 0-d array."""
    return nnx.merge(graphdef, params).objective(*batch)


TrainStep = Callable[[Tables, optax.OptState, Batch, np.float32],
                     tuple[Tables, optax.OptState, jax.Array]]


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *,
                    chunked: bool) -> TrainStep:
    """A compiled optimiser step for the module described by `graphdef`.

    `params` and `opt_state` are donated: the caller's arrays are consumed and must be
    replaced by the returned ones (JAX raises if a donated array is used again).
    """
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params: Tables, opt_state: optax.OptState, batch: Batch,
                   lr: jax.Array) -> tuple[Tables, optax.OptState, jax.Array]:
        loss, grads = value_and_table_grads(graphdef, params, batch, chunked=chunked)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        updates = jax.tree.map(lambda update: -lr * update, updates)  # as optax.scale(-lr)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


@functools.partial(jax.jit, static_argnames="k")
def _cosine_top_k(table: jax.Array, query_ids: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The chapter's `get_similar_tokens`, batched: (V, E), (Q,) -> (Q, k) ids, (Q, k) cosines."""
    queries = table[query_ids]                                              # (Q, E)
    norms = (table * table).sum(axis=1)[None, :] * (queries * queries).sum(axis=1)[:, None]
    cos = queries @ table.T / jnp.sqrt(norms + 1e-9)                        # (Q, V)
    # The chapter takes top k+1 and drops the first, assuming it is the query; masking the
    # query is exact even when another word ties with it.
    cos = cos.at[jnp.arange(query_ids.shape[0]), query_ids].set(-jnp.inf)
    values, top = jax.lax.top_k(cos, k)
    return top, values


class JaxBackend(Backend):
    """JAX on CPU or GPU (`--device cpu`, `gpu`, `gpu:N`), one compiled step per run."""

    name: ClassVar[str] = "jax"
    framework: ClassVar[str] = "jax"
    fixed_shapes: ClassVar[bool] = True  # jit compiles one program per input shape

    def __init__(self, vocab_size: int, embed_size: int, *, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                         optimizer=optimizer, step=step)
        kind, index = self.check_device(device)
        self.jax_device: jax.Device = jax.devices(kind)[index]
        if optimizer != "adam":
            raise ConfigError(f"the jax backend offers only --optimizer adam, got {optimizer!r}")
        with jax.default_device(self.jax_device):
            module = model.SkipGramModel(vocab_size, embed_size, rngs=nnx.Rngs(seed))
        # The module is kept as (static graph, parameter pytree): the pytree is what the
        # compiled step consumes and returns, so it is the one copy of the parameters.
        graphdef, state = nnx.split(module, nnx.Param)
        self._graphdef = graphdef
        self._params: Tables = nnx.to_pure_dict(state)
        self._optimizer = adam()
        self._opt_state = self._optimizer.init(self._params)
        # Chunking pays where the cache is the bottleneck; a GPU wants one large kernel.
        chunked = self.jax_device.platform == "cpu"
        self._train_step = make_train_step(graphdef, self._optimizer, chunked=chunked)
        self._loss_and_grads = jax.jit(functools.partial(value_and_table_grads, graphdef,
                                                         chunked=chunked))
        # Not donated: evaluation must leave the parameters usable.
        self._eval_loss = jax.jit(functools.partial(objective, graphdef))
        self.init_params(seed)

    # -- arrays ---------------------------------------------------------------------------
    def asarray(self, x: np.ndarray) -> jax.Array:
        return jax.device_put(np.asarray(x), self.jax_device)

    def to_numpy(self, x: jax.Array) -> np.ndarray:
        return np.array(x)  # a copy: a NumPy view would pin the buffer and block donation

    def losses_to_numpy(self, losses: list[Any]) -> np.ndarray:
        """One stack and one device -> host copy for all pending losses (one sync)."""
        if not losses:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(jnp.stack(losses), dtype=np.float64)

    @staticmethod
    def _host_batch(batch: Batch) -> Batch:
        """The batch in the step's dtypes: (B, 1), (B, L) int32 ids, (B, L) float32.

        Left as NumPy: the jitted step transfers NumPy arguments in its C++ dispatch, next
        to the committed parameters, faster than `jax.device_put` from Python (0.2 ms/step).
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

    def _to_device(self, values: Params, what: str) -> Tables:
        """Host `Params` -> a parameter-shaped pytree on the device (copies)."""
        for table in values:
            self._check_shape(table, what)
        return tables(*(jax.device_put(np.array(table, dtype=np.float32), self.jax_device)
                        for table in values))

    def get_params(self) -> Params:
        return self._to_host(self._params)

    def set_params(self, params: Params) -> None:
        self._params = self._to_device(params, "parameter table")
        self._opt_state = self._optimizer.init(self._params)
        self.adam_steps = 0

    # -- training ---------------------------------------------------------------------------
    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        # The gradient that `train_step` uses, so parity tests check what trains.
        loss, grads = self._loss_and_grads(self._params, self._host_batch(batch))
        return float(loss), self._to_host(grads)

    def eval_loss(self, batch: Batch) -> jax.Array:
        return self._eval_loss(self._params, self._host_batch(batch))

    def train_step(self, batch: Batch) -> jax.Array:
        # A float32 scalar: traced like the batch, so a new rate each step reuses the program.
        self._params, self._opt_state, loss = self._train_step(
            self._params, self._opt_state, self._host_batch(batch), np.float32(self.next_lr()))
        return loss  # no float(): the driver syncs only when it reports

    def optimizer_state(self) -> AdamState:
        return AdamState(int(optax.tree.get(self._opt_state, "count")),
                         self._to_host(optax.tree.get(self._opt_state, "mu")),
                         self._to_host(optax.tree.get(self._opt_state, "nu")))

    def load_optimizer_state(self, state: AdamState) -> None:
        self._opt_state = optax.tree.set(
            self._optimizer.init(self._params),
            count=jax.device_put(np.int32(state.step), self.jax_device),
            mu=self._to_device(state.exp_avg, "optimizer state"),
            nu=self._to_device(state.exp_avg_sq, "optimizer state"))
        self.adam_steps = int(state.step)

    def synchronize(self) -> None:
        jax.block_until_ready((self._params, self._opt_state))

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

    # -- use ------------------------------------------------------------------------------
    def similar(self, query_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The chapter's `get_similar_tokens` for Q queries at once: (Q,) -> (Q, k), (Q, k)."""
        ids = jax.device_put(np.asarray(query_ids, dtype=np.int32), self.jax_device)
        top, values = _cosine_top_k(self._params["center"]["embedding"], ids,
                                    min(k, self.vocab_size))
        return np.array(top), np.array(values)


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
