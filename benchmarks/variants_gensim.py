"""The four word2vec combinations against gensim's four (sg x hs) on PTB: quality and time.

    python -m benchmarks.variants_gensim --data /path/to/ptb.zip --epochs 5 20 --seeds 0 \
        [--backend torch] [--workers 1] [--threads 1] [--who both|w2v|gensim] [--out FILE] \
        [--combinations MODEL-LOSS[:OPTIMIZER[:LR]] ...] [--jobs 2]
    python -m benchmarks.variants_gensim --render --epochs 5 --seeds 0 1 2 3 4 \
        --combinations cbow-negative:sgd:0.3 ...     # the table of rows already in --out

Same sentences (PTB's training split, `<unk>` removed for gensim, as `benchmarks.peer`), same
settings: window 5, 5 noise words (negative sampling) or the Huffman tree (hierarchical
softmax, gensim `hs=1, negative=0`), t = 1e-4, min_count 10, 100 dimensions, CBOW's context
mean (gensim's default `cbow_mean=1`). Ours trains with the chapter's Adam (lr 0.002, batch
512), or with `:sgd[:LR]` after a combination the framework's SGD (lr decaying to 0.4%, as
`--optimizer sgd`); gensim with its own SGD (0.025 decaying linearly, one example at a time).
Each row:
WordSim353 and SimLex-999 Spearman rho, analogy accuracy (`common.evaluate`) and the seconds
of training alone (gensim's `train()`, our epochs), as the mean over the seeds given, and the
CPU seconds of the whole task (data, training, scoring; a figure that other load does not
inflate). `--jobs N` runs the tasks in N processes, each pinned to a CPU of its own (so give
`--threads 1 --workers 1`): 5 seeds x 2 epoch counts x 4 combinations x 2 tools fit a session.
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import resource
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from benchmarks import machine, peer

COMBINATIONS = list(itertools.product(("skipgram", "cbow"), ("negative", "hsoftmax")))
JSONL = machine.RESULTS / "variants_gensim.jsonl"
METRICS = ("wordsim353", "simlex999", "analogies", "seconds", "cpu_seconds")


def _scores(evaluation: dict[str, Any]) -> dict[str, float]:
    return {"wordsim353": evaluation["wordsim353"]["spearman"],
            "simlex999": evaluation["simlex999"]["spearman"],
            "analogies": evaluation["analogies"]["accuracy"]}


def ours(model: str, loss: str, *, data: str | None, epochs: int, seed: int,
         backend: str, optimizer: str = "adam", lr: float | None = None,
         threads: int = 0) -> dict[str, Any]:
    """One `w2v train` of (`model`, `loss`) on PTB, scored as `w2v evaluate` scores."""
    from common.config import TrainConfig
    from common.session import train_run

    config = TrainConfig(backend=backend, corpus="ptb", data=data, epochs=epochs, seed=seed,
                         model=model, loss=loss, optimizer=optimizer, lr=lr,
                         threads=threads).validate()  # both steps: the same figures
    with tempfile.TemporaryDirectory(prefix="w2v-variants-") as folder:
        outcome = train_run(config, Path(folder) / "run", log=lambda line: None,
                            progress=False)
    return {"who": f"w2v {backend}", "model": model, "loss": loss, "epochs": epochs,
            "seed": seed, "optimizer": optimizer, "lr": config.learning_rate,
            "threads": threads, "seconds": outcome.result.seconds,
            "epoch_losses": [report.mean_loss for report in outcome.result.epochs],
            **_scores(outcome.evaluation)}


def gensim(model: str, loss: str, sentences: list[list[str]], *, epochs: int, seed: int,
           workers: int) -> dict[str, Any]:
    """gensim's Word2Vec with the same choice: sg = skip-gram, hs = hierarchical softmax."""
    from common.evaluate import evaluate

    hsoftmax = loss == "hsoftmax"
    result = peer.train_gensim(sentences, workers=workers, epochs=epochs, seed=seed,
                               sg=int(model == "skipgram"), hs=int(hsoftmax),
                               negative=0 if hsoftmax else 5)
    return {"who": f"gensim {result.gensim_version}", "model": model, "loss": loss,
            "epochs": epochs, "seed": seed, "seconds": result.train_seconds,
            "workers": workers, **_scores(evaluate(result.keyed))}


_SENTENCES: dict[str | None, list[list[str]]] = {}


def run_task(who: str, model: str, loss: str, optimizer: str, lr: float | None, epochs: int,
             seed: int, *, data: str | None, backend: str, threads: int,
             workers: int) -> dict[str, Any]:
    """One row: ours or gensim's, with the CPU seconds the whole task took in this process."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    if who == "w2v":
        row = ours(model, loss, data=data, epochs=epochs, seed=seed, backend=backend,
                   optimizer=optimizer, lr=lr, threads=threads)
    else:
        if data not in _SENTENCES:
            _SENTENCES[data] = peer.ptb_sentences(data)
        row = gensim(model, loss, _SENTENCES[data], epochs=epochs, seed=seed, workers=workers)
    after = resource.getrusage(resource.RUSAGE_SELF)
    row["cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return machine.stamp(row)  # here: `threads` is this process's CPUs


def _pin_to_a_cpu(cpus: Any) -> None:
    """A pool worker's initializer: one CPU of its own, so that jobs do not share a core."""
    os.sched_setaffinity(0, {cpus.get()})


def optimizer_of(row: dict[str, Any]) -> str:
    """"adam" or "sgd 0.3": what trained one of our rows (rows before the flag: adam)."""
    name = row.get("optimizer", "adam")
    return name if name == "adam" else f"{name} {row['lr']:g}"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: one line per (epochs, combination, our optimiser), ours beside gensim's,
    seed means (gensim's over its seeds of the same epochs and combination)."""
    lines = ["| epochs | model | loss | w2v optimizer | seeds | w2v WS353 | gensim WS353 | "
             "w2v SimLex | gensim SimLex | w2v analogies | gensim analogies | w2v s | "
             "gensim s | w2v CPU s | gensim CPU s |",
             "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    keys = sorted({(row["epochs"], row["model"], row["loss"], optimizer_of(row))
                   for row in rows if row["who"].startswith("w2v")},
                  key=lambda key: (key[0], COMBINATIONS.index(key[1:3]), key[3]))
    for epochs, model, loss, optimizer in keys:
        chosen = [row for row in rows if (row["epochs"], row["model"], row["loss"]) ==
                  (epochs, model, loss)]
        mine = [row for row in chosen if row["who"].startswith("w2v")
                and optimizer_of(row) == optimizer]
        theirs = [row for row in chosen if row["who"].startswith("gensim")]

        def mean(group: list[dict[str, Any]], metric: str, digits: int) -> str:
            values = [row[metric] for row in group if metric in row]  # older rows: no CPU s
            return f"{statistics.fmean(values):.{digits}f}" if values else "-"

        cells = [str(epochs), model, loss, optimizer, str(len(mine))]
        for metric, digits in (("wordsim353", 3), ("simlex999", 3), ("analogies", 3),
                               ("seconds", 1), ("cpu_seconds", 1)):
            cells += [mean(mine, metric, digits), mean(theirs, metric, digits)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def parse_combination(text: str) -> tuple[str, str, str, float | None]:
    """"cbow-negative:sgd:0.3" -> ("cbow", "negative", "sgd", 0.3); the optimiser defaults to
    adam, its rate to the optimiser's default."""
    from common.errors import ConfigError

    fields = text.split(":")
    pair, optimizer, lr = fields[0], (fields[1:2] or ["adam"])[0], (fields[2:3] or [""])[0]
    parts = pair.split("-")
    if len(fields) > 3 or tuple(parts) not in COMBINATIONS or optimizer not in ("adam", "sgd"):
        raise ConfigError(f"{text!r} is not MODEL-LOSS[:adam|sgd[:LR]], e.g. cbow-hsoftmax:sgd:0.5")
    try:
        rate = float(lr) if lr else None
    except ValueError:
        raise ConfigError(f"{text!r}: the rate {lr!r} is not a number") from None
    return parts[0], parts[1], optimizer, rate


def select(rows: list[dict[str, Any]], epochs: list[int], seeds: list[int],
           chosen: list[tuple[str, str, str, float | None]]) -> list[dict[str, Any]]:
    """The rows of these epochs, seeds and combinations: ours of the chosen optimiser and
    rate (None: any rate), gensim's of the same combination."""
    def wanted(row: dict[str, Any]) -> bool:
        if row["epochs"] not in epochs or row["seed"] not in seeds:
            return False
        for model, loss, optimizer, lr in chosen:
            if (row["model"], row["loss"]) != (model, loss):
                continue
            if row["who"].startswith("gensim"):
                return True
            if row.get("optimizer", "adam") == optimizer and (lr is None or
                                                              row.get("lr") == lr):
                return True
        return False

    return [row for row in rows if wanted(row)]


@machine.script("variants_gensim")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="ptb.zip (default: env W2V_PTB)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--workers", type=int, default=1, help="gensim's threads")
    parser.add_argument("--threads", type=int, default=0, help="our --threads (0: all)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="tasks run side by side, each process on a CPU of its own")
    parser.add_argument("--who", choices=("both", "w2v", "gensim"), default="both")
    parser.add_argument("--combinations", nargs="+", default=None,
                        help="MODEL-LOSS[:OPTIMIZER[:LR]] to run (default: all four, adam)")
    parser.add_argument("--render", action="store_true",
                        help="train nothing: the table of --out's rows for these epochs, seeds "
                             "and combinations")
    parser.add_argument("--commit", default="",
                        help="with --render: only rows measured on this commit (a prefix)")
    parser.add_argument("--out", type=Path, default=JSONL)
    args = parser.parse_args(argv)
    if not 1 <= args.jobs <= len(os.sched_getaffinity(0)):
        parser.error(f"--jobs must be 1 to {len(os.sched_getaffinity(0))} (the CPUs here)")
    chosen = [parse_combination(text) for text in args.combinations] if args.combinations \
        else [(model, loss, "adam", None) for model, loss in COMBINATIONS]
    if args.render:
        rows = [row for row in machine.read_jsonl(args.out)
                if str(row.get("commit", "")).startswith(args.commit)]
        print("\n".join(table(select(rows, args.epochs, args.seeds, chosen))))
        return 0
    tools = [who for who in ("w2v", "gensim") if args.who in (who, "both")]
    tasks = []  # gensim's once per (model, loss, epochs, seed), whatever our optimisers
    for epochs, seed, (model, loss, optimizer, lr), who in itertools.product(
            args.epochs, args.seeds, chosen, tools):
        task = (who, model, loss, optimizer, lr, epochs, seed) if who == "w2v" else \
            (who, model, loss, "sgd", None, epochs, seed)
        if task not in tasks:
            tasks.append(task)
    options = dict(data=args.data, backend=args.backend, threads=args.threads,
                   workers=args.workers)
    rows = []

    def record(row: dict[str, Any]) -> None:
        rows.append({**row, "jobs": args.jobs})
        print(json.dumps(rows[-1]), flush=True)
        machine.append_jsonl(args.out, rows[-1])

    if args.jobs == 1:
        for task in tasks:
            record(run_task(*task, **options))
    else:
        context = multiprocessing.get_context("spawn")
        cpus = context.Queue()
        for cpu in sorted(os.sched_getaffinity(0))[:args.jobs]:
            cpus.put(cpu)
        with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_pin_to_a_cpu,
                                 initargs=(cpus,)) as pool:
            # Longest first (epochs, then skip-gram's hierarchical softmax), so no job idles
            # at the end while the other trains the slowest task.
            order = sorted(tasks, key=lambda task: (-task[5], task[1:3] != ("skipgram",
                                                                           "hsoftmax")))
            for future in as_completed([pool.submit(run_task, *task, **options)
                                        for task in order]):
                record(future.result())
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
