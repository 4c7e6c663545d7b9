"""Quality against seconds: WordSim353 rho at every epoch end against cumulative training time.

    python -m benchmarks.quality --data /path/to/ptb.zip            # chapter, best, gensim
    python -m benchmarks.quality --data ... --only best --seeds 0 1 2
    python -m benchmarks.quality --render                           # redraw from the JSON

Three settings on PTB, each one curve per seed:
- `chapter`: `w2v train` with the chapter's hyperparameters (torch, 5 epochs);
- `best`: the setting the sweep found (`BEST`, see the README's "Sweep");
- `sgd`: `--optimizer sgd` with its defaults (benchmarks/README.md, "Optimisers whose cost
  follows the touched words");
- `gensim`: the peer (`benchmarks.peer.train_gensim`): sg=1, window 5, 5 noise words,
  100 dimensions, sample 1e-4, min_count 10, 20 epochs, 2 workers, in one `train()` call with
  gensim's own linearly decaying learning rate. A callback scores the vectors at each epoch
  end and its own time is taken out of the clock, so each point is (seconds trained, rho).
Our runs' seconds are the project's (`TrainResult.seconds`: the sum of the timed epochs; the
held-out loss, checkpoints and scoring happen outside them). Each curve holds the shared CPU
lock while it trains (`benchmarks.machine.cpu_lock`). Rows are appended to
`benchmarks/results/quality_vs_seconds.jsonl`; the plot `quality_vs_seconds.png` shows the
latest row of each (setting, seed).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import machine

JSONL = machine.RESULTS / "quality_vs_seconds.jsonl"
PLOT = machine.RESULTS / "quality_vs_seconds.png"
TARGET_RHO, BUDGET_SECONDS = 0.39, 15.0
# TrainConfig overrides per setting; the chapter's is the defaults themselves.
SETTINGS: dict[str, dict[str, Any]] = {
    "chapter": {},
    "best": dict(lr=0.005, lr_schedule="linear", sampling="resample", max_window_size=12,
                 num_noise_words=5, epochs=8),
    # word2vec's optimiser with its defaults (the swept rate, decaying to 0.4%), 5 epochs.
    "sgd": dict(optimizer="sgd"),
}
GENSIM_EPOCHS, GENSIM_WORKERS = 20, 2


def ours_curve(label: str, data: str | None, seed: int, backend: str) -> dict[str, Any]:
    """Train one setting with `w2v train`'s session; rho after every epoch."""
    from common.config import TrainConfig
    from common.embeddings import to_keyed_vectors
    from common.evaluate import WORD_PAIRS, dataset, word_pairs
    from common.session import train_run

    config = TrainConfig(**{**SETTINGS[label], "backend": backend, "corpus": "ptb",
                            "data": data, "seed": seed})
    pairs = dataset(WORD_PAIRS["wordsim353"])
    curve: list[list[float]] = []

    def score(context: Any) -> None:  # runs after the epoch's clock has stopped
        keyed = to_keyed_vectors(context.vocab.idx_to_token, context.backend.get_params().center)
        curve.append([context.epoch, context.result.seconds,
                      word_pairs(keyed, pairs)["spearman"], context.valid_loss])

    with tempfile.TemporaryDirectory(prefix="w2v-quality-") as folder, machine.cpu_lock():
        outcome = train_run(config, Path(folder) / "run", log=lambda line: None,
                            progress=False, on_epoch_end=score)
    return {"label": label, "seed": seed, "backend": outcome.config.backend,
            "config": outcome.config.to_dict(), "seconds": outcome.result.seconds,
            "centre_words_per_second": outcome.result.words_per_second,
            "curve": curve, "evaluation": outcome.evaluation}


def gensim_curve(data: str | None, seed: int) -> dict[str, Any]:
    """The peer, 20 epochs in one `train()`, scored at each epoch end off the clock."""
    from gensim.models.callbacks import CallbackAny2Vec

    from benchmarks.peer import ptb_sentences, train_gensim
    from common.evaluate import WORD_PAIRS, dataset, evaluate, word_pairs

    pairs = dataset(WORD_PAIRS["wordsim353"])

    class Score(CallbackAny2Vec):
        def __init__(self) -> None:
            self.curve: list[list[float]] = []
            self.started = self.scoring = 0.0

        def on_train_begin(self, model: Any) -> None:
            self.started, self.scoring = time.perf_counter(), 0.0

        def on_epoch_end(self, model: Any) -> None:
            begin = time.perf_counter()
            trained = begin - self.started - self.scoring
            self.curve.append([len(self.curve) + 1, trained,
                               word_pairs(model.wv, pairs)["spearman"], None])
            self.scoring += time.perf_counter() - begin

    logging.getLogger("gensim").setLevel(logging.WARNING)
    sentences = ptb_sentences(data)
    score = Score()
    with machine.cpu_lock():
        result = train_gensim(sentences, workers=GENSIM_WORKERS, epochs=GENSIM_EPOCHS,
                              seed=seed, callbacks=[score])
    return {"label": "gensim", "seed": seed, "backend": f"gensim {result.gensim_version}",
            "config": result.params, "seconds": score.curve[-1][1],
            "centre_words_per_second": result.effective_words / score.curve[-1][1],
            "curve": score.curve, "evaluation": evaluate(result.keyed)}


def first_reaching(curve: list[list[float]], target: float) -> float | None:
    """Seconds at the first epoch end whose rho is at least `target`."""
    return next((seconds for _, seconds, rho, _ in curve if rho >= target), None)


def best_within_budget(row: dict[str, Any]) -> float:
    """The highest rho at an epoch end within the budget (nan if none ended in it)."""
    return max((rho for _, seconds, rho, _ in row["curve"] if seconds <= BUDGET_SECONDS),
               default=float("nan"))


def summarise(rows: list[dict[str, Any]]) -> str:
    """One line per setting: the mean and range over seeds, and how many reached the bar."""
    import statistics

    lines = []
    for label in dict.fromkeys(row["label"] for row in rows):
        best = [best_within_budget(row) for row in rows if row["label"] == label]
        reached = sum(value >= TARGET_RHO for value in best)
        lines.append(f"{label:8s} best rho within {BUDGET_SECONDS:.0f} s over {len(best)} seeds: "
                     f"mean {statistics.fmean(best):.3f} (min {min(best):.3f}, max "
                     f"{max(best):.3f}); {reached} of {len(best)} reach {TARGET_RHO}")
    return "\n".join(lines)


def describe(row: dict[str, Any]) -> str:
    evaluation = row["evaluation"]
    reached = first_reaching(row["curve"], TARGET_RHO)
    return (f"{row['label']:8s} seed {row['seed']}: {len(row['curve'])} epochs, "
            f"{row['seconds']:.1f} s, WordSim353 {evaluation['wordsim353']['spearman']:.3f} "
            f"({evaluation['wordsim353']['covered']}/{evaluation['wordsim353']['total']} pairs), "
            f"SimLex {evaluation['simlex999']['spearman']:.3f}, analogies "
            f"{evaluation['analogies']['accuracy']:.3f}; best rho within "
            f"{BUDGET_SECONDS:.0f} s: {best_within_budget(row):.3f}; "
            + (f"reaches {TARGET_RHO} at {reached:.1f} s" if reached is not None
               else f"never reaches {TARGET_RHO}"))


def render(rows: list[dict[str, Any]]) -> Path:
    """The plot from the latest row of every (setting, seed); a line per row printed."""
    from common.plotting import plot_quality_vs_seconds

    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        latest[(row["label"], row["seed"])] = row
    curves: dict[str, list[list[tuple[float, float]]]] = {}
    for (label, seed), row in sorted(latest.items()):
        print(describe(row))
    print(summarise(list(latest.values())))
    for (label, seed), row in sorted(latest.items()):
        name = label if label != "best" else f"best: {_short(row['config'])}"
        curves.setdefault(name, []).append([(seconds, rho) for _, seconds, rho, _ in row["curve"]])
    curves = {f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})": runs
              for name, runs in curves.items()}
    return plot_quality_vs_seconds(
        curves, PLOT, target=TARGET_RHO, budget=BUDGET_SECONDS,
        title=f"PTB, 2-core CPU: WordSim353 rho at each epoch end (bar: {TARGET_RHO} "
              f"within {BUDGET_SECONDS:.0f} s)")


def _short(config: dict[str, Any]) -> str:
    """The fields of a config that differ from the chapter's, as flags."""
    from common.config import TrainConfig

    defaults = TrainConfig().to_dict()
    return " ".join(f"{key.replace('_', '-')} {value}" for key, value in config.items()
                    if key not in ("backend", "device", "corpus", "data", "seed")
                    and value != defaults.get(key))


@machine.script("quality")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="ptb.zip or folder (default: env W2V_PTB)")
    parser.add_argument("--only", nargs="+", choices=[*SETTINGS, "gensim"],
                        default=[*SETTINGS, "gensim"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--render", action="store_true", help="only redraw from the JSON")
    args = parser.parse_args(argv)
    if not args.render:
        for seed in args.seeds:
            for label in args.only:
                row = (gensim_curve(args.data, seed) if label == "gensim"
                       else ours_curve(label, args.data, seed, args.backend))
                machine.append_jsonl(JSONL, machine.stamp(row))
    print(f"plot: {render(machine.read_jsonl(JSONL))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
