"""The peer: gensim's C word2vec on the same PTB sentences, timed and scored like our backends.

    python -m benchmarks.peer --data /path/to/ptb.zip --workers 1 2 [--epochs 5 10] [--out FILE]

gensim runs the chapter's model, `Word2Vec(sg=1, negative=5, window=5, vector_size=100,
sample=1e-4, min_count=10, epochs=5)`, but trains it with its own optimiser (SGD, learning
rate 0.025 decaying linearly, one example at a time in optimised C), not Adam over minibatches.
The vocabulary is built first and apart; only `train()` is timed. Its speed is what gensim
itself counts as *effective words*: tokens left after `min_count` and subsampling, i.e. the
centre words it trained on. That is the unit our backends report (the chapter's "tokens").
Two small differences remain and are stated with the results: gensim's subsampling formula
keeps a word with probability (sqrt(f/t) + 1) t/f rather than the chapter's sqrt(t/f), and
it also trains centres of one-word sentences (they have no context, so no update).

PTB writes rare words as a literal `<unk>`. The chapter never trains on `<unk>` (it is index 0
and subsampling drops it), so by default it is removed here as well; gensim would otherwise
learn a vector for PTB's most frequent "word".
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from benchmarks import machine

# The chapter's hyperparameters, spelled as gensim names them.
CHAPTER = dict(sg=1, negative=5, window=5, vector_size=100, sample=1e-4, min_count=10)
JSONL = machine.RESULTS / "peer.jsonl"


@dataclass
class PeerResult:
    """One gensim training: the model, its vectors and honest timings."""

    model: Any                     # gensim.models.Word2Vec
    keyed: Any                     # its KeyedVectors (model.wv)
    workers: int
    epochs: int
    params: dict[str, Any]         # every Word2Vec argument used (CHAPTER + overrides)
    vocab_seconds: float           # build_vocab, not counted in the rate
    train_seconds: float           # model.train only
    effective_words: int           # centre words trained on, all epochs (after subsampling)
    raw_words: int                 # corpus words seen, all epochs (before min_count/subsampling)
    gensim_version: str
    evaluation: dict[str, Any] = field(default_factory=dict)

    @property
    def words_per_second(self) -> float:
        """Effective (post-subsampling) words per training second: our centre words/s."""
        return self.effective_words / self.train_seconds

    @property
    def raw_words_per_second(self) -> float:
        return self.raw_words / self.train_seconds

    def record(self) -> dict[str, Any]:
        """A JSON-ready summary (no model), as `benchmarks/results/peer.jsonl` stores it."""
        row = {"benchmark": "peer", "peer": "gensim", "gensim_version": self.gensim_version,
               "workers": self.workers, "epochs": self.epochs, "params": self.params,
               "vocab_size": len(self.keyed), "vocab_seconds": self.vocab_seconds,
               "train_seconds": self.train_seconds, "effective_words": self.effective_words,
               "raw_words": self.raw_words,
               "centre_words_per_second": self.words_per_second,
               "raw_words_per_second": self.raw_words_per_second,
               "peak_rss_mib": machine.peak_rss_mib()}
        if self.evaluation:
            row["evaluation"] = self.evaluation
        return machine.stamp(row)


def ptb_sentences(data: str | None = None, *, drop_unk: bool = True) -> list[list[str]]:
    """PTB's training sentences as `common.corpus.load_corpus` reads them, `<unk>` removed."""
    from common.corpus import load_corpus
    from common.vocab import UNK

    sentences = load_corpus("ptb", data, log=lambda line: None).sentences
    if drop_unk:
        sentences = [[word for word in sentence if word != UNK] for sentence in sentences]
    return sentences


def train_gensim(sentences: Sequence[Sequence[str]], *, workers: int, epochs: int = 5,
                 seed: int = 0, **overrides: Any) -> PeerResult:
    """Build gensim's vocabulary, then time `train()` alone; `overrides` change CHAPTER's values.

    `callbacks` (gensim `CallbackAny2Vec`s, e.g. one that scores every epoch) are passed to
    `train()`; their time counts in `train_seconds`, so keep them cheap or subtract it.
    """
    import gensim
    from gensim.models import Word2Vec

    callbacks = tuple(overrides.pop("callbacks", ()))
    params = {**CHAPTER, **overrides, "workers": workers, "epochs": epochs, "seed": seed}
    sentences = sentences if isinstance(sentences, list) else list(sentences)
    model = Word2Vec(**params)
    started = time.perf_counter()
    model.build_vocab(sentences)
    vocab_seconds = time.perf_counter() - started
    started = time.perf_counter()
    effective_words, raw_words = model.train(sentences, total_examples=model.corpus_count,
                                             epochs=epochs, callbacks=callbacks)
    train_seconds = time.perf_counter() - started
    return PeerResult(model, model.wv, workers, epochs, params, vocab_seconds, train_seconds,
                      int(effective_words), int(raw_words), gensim.__version__)


def summary(result: PeerResult) -> str:
    """One readable line: speed in centre words/s and, when scored, WordSim353 rho."""
    line = (f"gensim {result.gensim_version}, {result.workers} worker"
            f"{'s' if result.workers > 1 else ''}, {result.epochs} epochs: "
            f"{result.words_per_second:,.0f} centre words/s (effective words after "
            f"subsampling; {result.raw_words_per_second:,.0f} raw words/s), "
            f"train {result.train_seconds:.2f} s (vocabulary built apart: "
            f"{result.vocab_seconds:.2f} s)")
    wordsim = result.evaluation.get("wordsim353")
    if wordsim:
        line += (f"; WordSim353 rho {wordsim['spearman']:.3f} over {wordsim['covered']}/"
                 f"{wordsim['total']} pairs")
    return line


@machine.script("peer")
def main(argv: list[str] | None = None) -> int:
    from common.evaluate import evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="ptb.zip or folder (default: env W2V_PTB)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, nargs="+", default=[5],
                        help="one training per value (and per --workers value)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-unk", action="store_true", help="train on PTB's literal <unk>")
    parser.add_argument("--out", type=Path, default=JSONL, help="append the JSON lines here")
    args = parser.parse_args(argv)
    if min(args.workers) < 1 or min(args.epochs) < 1:
        parser.error("--workers and --epochs must be positive integers")
    logging.getLogger("gensim").setLevel(logging.WARNING)
    sentences = ptb_sentences(args.data, drop_unk=not args.keep_unk)
    for epochs in args.epochs:
        for workers in args.workers:
            result = train_gensim(sentences, workers=workers, epochs=epochs,
                                  seed=args.seed)
            result.evaluation = evaluate(result.keyed)
            print(summary(result), flush=True)
            machine.append_jsonl(args.out, result.record())
    return 0


if __name__ == "__main__":
    sys.exit(main())
