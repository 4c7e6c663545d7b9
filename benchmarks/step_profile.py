"""Where one training step's time goes, per backend and step, on PTB's batches.

    python -m benchmarks.step_profile --backend torch --step chapter       # torch.profiler
    python -m benchmarks.step_profile --backend jax --step chapter         # compiled pieces
    python -m benchmarks.step_profile --backend numpy --step chapter       # cProfile
    python -m benchmarks.step_profile --backend torch --variants           # stock variants

The batches are PTB's (`--data` or W2V_PTB), cut once before timing, so the figures are the
step alone (`benchmarks.throughput` times whole epochs, data pipeline included).
- torch: `torch.profiler`'s table of operators by self CPU time over `--steps` steps;
  `--variants` times the chapter's loop with each stock Adam implementation (for-loop, foreach,
  fused) and int32/int64 ids, beside the backend's two steps.
- jax: XLA fuses the step into one program, so it is timed piece by piece, each piece
  compiled alone (gather, forward, value_and_grad, the lookup's scatter-add, Adam);
  `--trace DIR` also writes a `jax.profiler` trace (open it in Perfetto or TensorBoard).
- numpy: cProfile's table by own time.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from itertools import islice
from typing import Any, Callable

import numpy as np

from benchmarks import machine
from common.batching import Batch


def ptb_batches(backend_class: Any, count: int, data_path: str | None,
                batch_size: int) -> tuple[int, list[Batch]]:
    """(vocabulary size, `count` batches of PTB's epoch 1 shaped for `backend_class`)."""
    from benchmarks.throughput import load_data

    config, data = load_data(backend_class, "cpu", data_path=data_path, batch_size=batch_size,
                             embed_size=100, optimizer="adam")
    return len(data.vocab), list(islice(data.batches(1), count))


def ms_per_step(step: Callable[[Batch], Any], batches: list[Batch], sync: Callable[[], Any],
                repeats: int = 3) -> float:
    """Median over `repeats` passes over `batches` of milliseconds per step (after a warm-up)."""
    for batch in batches[:5]:
        step(batch)
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batches:
            step(batch)
        sync()
        times.append((time.perf_counter() - started) * 1e3 / len(batches))
    return statistics.median(times)


def profile_torch(vocab: int, batches: list[Batch], step: str, rows: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    import backends

    backend = backends.load("torch")(vocab, 100, step=step)
    for batch in batches[:5]:
        backend.train_step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for batch in batches:
            backend.train_step(batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {step} step, "
          f"{len(batches)} PTB steps")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows,
                                        max_name_column_width=44))


def torch_variants(vocab: int, batches: list[Batch]) -> None:
    """The chapter's loop with each stock Adam and id dtype, beside the backend's steps."""
    import torch

    import backends
    from backends.torch import model

    def chapter_loop(adam: dict[str, Any], ids: torch.dtype) -> Callable[[Batch], Any]:
        net = model.SkipGramModel(vocab, 100)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.002, **adam)

        def step(batch: Batch) -> torch.Tensor:
            centers, contexts_negatives = (torch.from_numpy(x).to(ids) for x in batch[:2])
            masks, labels = (torch.from_numpy(x) for x in batch[2:])
            optimizer.zero_grad(set_to_none=True)
            loss = net.objective(centers, contexts_negatives, masks, labels)
            loss.backward()
            optimizer.step()
            return loss.detach()
        return step

    contenders = {
        "chapter loop, Adam for-loop (torch's CPU default), int64":
            chapter_loop({"foreach": False}, torch.int64),
        "chapter loop, Adam foreach, int64": chapter_loop({"foreach": True}, torch.int64),
        "chapter loop, Adam fused, int32": chapter_loop({"fused": True}, torch.int32),
        "chapter loop, Adam fused, int64": chapter_loop({"fused": True}, torch.int64),
        "backend --step chapter": backends.load("torch")(vocab, 100, step="chapter").train_step,
        "backend --step fast": backends.load("torch")(vocab, 100, step="fast").train_step,
    }
    words = statistics.mean(int(batch.masks.any(axis=1).sum()) for batch in batches)
    for name, step in contenders.items():
        ms = ms_per_step(step, batches, lambda: None)
        print(f"{name:58s} {ms:6.2f} ms/step  {words / ms * 1e3:>9,.0f} centre words/s")


def profile_jax(vocab: int, batches: list[Batch], step: str, trace: str | None) -> None:
    """Each piece of the step compiled alone; the sum exceeds the fused step a little."""
    import jax
    import jax.numpy as jnp
    import optax

    import backends
    from backends.jax import backend as jax_backend
    from backends.jax import fast, model

    backend = backends.load("jax")(vocab, 100, step=step)
    host = [backend._host_batch(batch) for batch in batches]
    center, context = (jnp.asarray(table) for table in backend.get_params())

    def objective(center: jax.Array, context: jax.Array, batch: Batch) -> jax.Array:
        logits = model.skip_gram(batch.centers, batch.contexts_negatives, center, context)
        return model.per_example_objective(logits.reshape(batch.labels.shape), batch.labels,
                                           batch.masks).sum()

    def scatter(center: jax.Array, context: jax.Array, batch: Batch) -> jax.Array:
        rows = jnp.broadcast_to(batch.masks[..., None], batch.masks.shape + (100,))
        return jnp.zeros_like(context).at[batch.contexts_negatives].add(rows)

    optimizer = jax_backend.adam()
    opt_state = optimizer.init((center, context))

    def adam(center: jax.Array, context: jax.Array, batch: Batch) -> Any:
        grads = (center * 1e-3, context * 1e-3)
        updates, _ = optimizer.update(grads, opt_state, (center, context))
        return optax.apply_updates((center, context), updates)

    pieces = {
        "gather (B,1,E) and (B,L,E) rows": lambda c, x, b: (
            model.embed(c, b.centers).sum() + model.embed(x, b.contexts_negatives).sum()),
        "forward: objective": objective,
        "value_and_grad of the objective (no Adam)": jax.value_and_grad(objective, (0, 1)),
        "  of which: scatter-add (B,L,E) rows into zeros (V,E)": scatter,
        "fast: chunked value_and_grad (no Adam)": lambda c, x, b: fast.value_and_table_grads(
            backend._graphdef, jax_backend.tables(c, x), b, chunked=True),
        "dense Adam on both tables": adam,
    }
    print(f"jax {jax.__version__}, {len(batches)} PTB steps, L={host[0].masks.shape[1]}")
    for name, piece in pieces.items():
        compiled = jax.jit(piece)
        ms = ms_per_step(lambda batch: compiled(center, context, batch), host,
                         lambda: jax.block_until_ready(compiled(center, context, host[0])))
        print(f"{name:58s} {ms:6.2f} ms")
    ms = ms_per_step(backend.train_step, batches, backend.synchronize)
    print(f"{'the whole step (' + step + '), one program':58s} {ms:6.2f} ms")
    if trace:
        with jax.profiler.trace(trace):
            for batch in batches[:20]:
                backend.train_step(batch)
            backend.synchronize()
        print(f"jax.profiler trace written under {trace}")


def profile_numpy(vocab: int, batches: list[Batch], step: str, rows: int) -> None:
    import backends

    backend = backends.load("numpy")(vocab, 100, step=step)
    profiler = cProfile.Profile()
    profiler.enable()
    for batch in batches:
        backend.train_step(batch)
    profiler.disable()
    print(f"numpy {np.__version__}, {step} step, {len(batches)} PTB steps")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(rows)


@machine.script("step_profile")
def main(argv: list[str] | None = None) -> int:
    import backends

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch", choices=("torch", "jax", "numpy"))
    parser.add_argument("--step", default="chapter", choices=("chapter", "fast"))
    parser.add_argument("--steps", type=int, default=100, help="PTB batches profiled")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--data", default=None, help="ptb.zip (default: env W2V_PTB)")
    parser.add_argument("--rows", type=int, default=15, help="table rows")
    parser.add_argument("--variants", action="store_true", help="torch: time stock variants")
    parser.add_argument("--trace", default=None, help="jax: write a jax.profiler trace here")
    args = parser.parse_args(argv)
    vocab, batches = ptb_batches(backends.load(args.backend), args.steps, args.data,
                                 args.batch_size)
    if args.backend == "torch":
        if args.variants:
            torch_variants(vocab, batches)
        else:
            profile_torch(vocab, batches, args.step, args.rows)
    elif args.backend == "jax":
        profile_jax(vocab, batches, args.step, args.trace)
    else:
        profile_numpy(vocab, batches, args.step, args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
