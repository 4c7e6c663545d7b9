"""`w2v`: the command line. The only place a backend name becomes a Backend.

Every expected failure is a `W2VError`, printed as one line (`w2v: error: ...`) with its
exit code; usage errors exit 2. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from common import config as config_module
from common.config import TrainConfig
from common.errors import ConfigError, W2VError


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so bad flags get the same one-line errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, the chapter's value as default (exercise 1)."""
    defaults = TrainConfig()
    for field in config_module.fields():
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if field.name == "backend":
            default = os.environ.get("W2V_BACKEND", default)
        kind = field.type if isinstance(field.type, type) else \
            {"int": int, "float": float, "str": str}.get(str(field.type), str)
        help_text = field.metadata.get("help", "")
        extra = {k: v for k, v in field.metadata.items() if k != "help"}
        parser.add_argument(flag, dest=field.name, type=kind, default=default,
                            help=f"{help_text} (default: {default})", **extra)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="w2v", description="word2vec pretraining (skip-gram, negative "
                     "sampling) in PyTorch, MXNet, JAX and TensorFlow behind one interface")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train on a corpus and write a run folder")
    _add_train_flags(train)
    train.add_argument("--out", default=None, help="run folder (default: runs/BACKEND)")
    train.add_argument("--overwrite", action="store_true", help="replace files in an existing --out")
    train.add_argument("--query", nargs="*", default=["chip", "intel", "money", "president"],
                       help="words whose neighbours the report shows (those in the vocabulary)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")

    similar = commands.add_parser("similar", help="nearest words by cosine similarity")
    similar.add_argument("words", nargs="+", help="query word(s)")
    similar.add_argument("-k", type=int, default=3, help="neighbours per word (default: 3)")
    similar.add_argument("--run", required=True, help="a run folder made by `w2v train`")
    similar.add_argument("--backend", default=None,
                         help="backend that computes the top-k (default: the run's, else numpy)")
    similar.add_argument("--device", default="cpu")
    similar.add_argument("--skip-unknown", action="store_true",
                         help="report unknown words on stderr instead of failing")

    evaluate = commands.add_parser("evaluate", help="WordSim353, SimLex-999 and analogies")
    evaluate.add_argument("--run", required=True, help="a run folder made by `w2v train`")
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON")

    analogy = commands.add_parser("analogy", help="a is to b as c is to ? (b - a + c)")
    analogy.add_argument("words", nargs=3, metavar=("A", "B", "C"))
    analogy.add_argument("-k", type=int, default=3, help="answers to show (default: 3)")
    analogy.add_argument("--run", required=True, help="a run folder made by `w2v train`")

    commands.add_parser("backends", help="list backends, installed or not, with devices")
    return parser


def _resolve_backend(name: str, device: str) -> Any:
    """Name -> Backend class, with the device checked before any data is read."""
    import backends
    from backends.base import require_device

    backend_class = backends.load(name)
    require_device(device, backend_class.devices())
    return backend_class


def command_train(args: argparse.Namespace) -> int:
    import numpy as np

    from common import runs
    from common.batching import prefetch
    from common.data import prepare_training_data
    from common.embeddings import export_word2vec, format_similar
    from common.plotting import plot_loss
    from common.training import train

    import backends

    values = {f.name: getattr(args, f.name) for f in config_module.fields()}
    config = TrainConfig(**values).validate()
    config.backend = backends.canonical(config.backend)
    backend_class = _resolve_backend(config.backend, config.device)
    run = runs.prepare_output(args.out or f"runs/{config.backend}", overwrite=args.overwrite)

    data = prepare_training_data(config, fixed_shapes=backend_class.fixed_shapes, log=print)
    vocab = data.vocab
    print(f"corpus {data.corpus_name}: {data.num_sentences:,} sentences, vocabulary "
          f"{len(vocab):,}, {data.num_examples(0):,} centre words per epoch "
          f"({config.sampling} sampling)")
    backend = backend_class(len(vocab), config.embed_size, lr=config.lr, device=config.device,
                            seed=config.seed, optimizer=config.optimizer)
    backend.init_params(config.seed)
    runs.save_config(run, config)
    vocab.save(run / runs.VOCAB)
    print(f"training with {backend_class.name} {backend_class.version()} on {backend.device}, "
          f"writing {run}")

    def on_epoch_end(report, result) -> None:  # noqa: ANN001
        params = backend.get_params()
        state = backend.optimizer_state()
        runs.save_checkpoint(run, runs.Checkpoint(
            params.center, params.context, state.step, tuple(state.exp_avg),
            tuple(state.exp_avg_sq), report.epoch))
        runs.save_metrics(run, [dict(p, kind="point") for p in result.curve] +
                          [dict(epoch=e.epoch, loss=e.mean_loss, centre_words=e.centre_words,
                                seconds=e.seconds, kind="epoch") for e in result.epochs])
        plot_loss(result.curve, run / runs.PLOT, epochs=config.epochs,
                  title=f"{backend_class.name}, {data.corpus_name}")

    result = train(backend, lambda epoch: prefetch(data.batches(epoch)), data.num_batches,
                   config.epochs, progress=False if args.no_progress else None,
                   on_epoch_end=on_epoch_end)
    params = backend.get_params()
    keyed = export_word2vec(run / runs.VECTORS, vocab.idx_to_token, params.center)
    report = result.to_dict()
    report.update(backend=backend_class.name, corpus=data.corpus_name,
                  framework_version=backend_class.version())
    runs.save_report(run, report)

    print(result.summary_line())
    print(f"  all-epoch mean loss {result.all_epochs_mean_loss:.3f} (the chapter's printed "
          f"figure, 0.410 on PTB); last epoch {result.last_epoch_mean_loss:.3f}")
    print(f"  {result.words_per_second:,.1f} centre words/s over {result.seconds:.1f} s; the "
          f"chapter's formula (all epochs' words / last epoch's time) would print "
          f"{result.chapter_tokens_per_second:,.1f}")
    from common.evaluate import evaluate, format_results
    from common.io import write_json

    evaluation = evaluate(keyed)
    write_json(run / "evaluation.json", evaluation)
    for line in format_results(evaluation):
        print(f"  {line}")
    known = [w for w in args.query if vocab.token_to_idx.get(w, 0) > 0]
    if known:
        ids = np.asarray([vocab.token_to_idx[w] for w in known])
        top, sims = backend.similar(ids, 3)
        for word, row_ids, row_sims in zip(known, top, sims):
            print(f"{word}: " + "; ".join(format_similar(vocab.idx_to_token, row_ids, row_sims)))
    print(f"run folder: {run}")
    return 0


def command_similar(args: argparse.Namespace) -> int:
    import backends
    from backends.base import Params
    from common import runs
    from common.embeddings import format_similar, lookup
    from common.errors import UnknownWordError
    from common.vocab import Vocab

    if args.k < 1:
        raise ConfigError(f"-k must be a positive integer, got {args.k}")
    run = runs.open_run(args.run)
    config = runs.load_config(run)
    vocab = Vocab.load(run / runs.VOCAB)
    checkpoint = runs.load_checkpoint(run)
    name = args.backend
    if name is None:  # the run's own backend when it is installed here, else the reference
        name = config.backend if not backends.missing(config.backend) else "numpy"
    backend_class = _resolve_backend(backends.canonical(name), args.device)
    words, failed = [], []
    for word in args.words:
        try:
            lookup([word], vocab.token_to_idx)
            words.append(word)
        except UnknownWordError as error:
            if not args.skip_unknown:
                raise
            failed.append(str(error))
    for message in failed:
        print(f"w2v: {message}", file=sys.stderr)
    if not words:  # only reachable with --skip-unknown, which asked not to fail
        return 0
    k = min(args.k, len(vocab) - 2)
    backend = backend_class(len(vocab), checkpoint.center.shape[1], device=args.device)
    backend.set_params(Params(checkpoint.center, checkpoint.context))
    top, sims = backend.similar(lookup(words, vocab.token_to_idx), k)
    for word, row_ids, row_sims in zip(words, top, sims):
        if len(words) > 1:
            print(f"{word}:")
        for line in format_similar(vocab.idx_to_token, row_ids, row_sims):
            print(line)
    return 0


def _run_vectors(run_arg: str) -> tuple[Any, Any, Path]:
    """A run's exported vectors (gensim KeyedVectors) and vocabulary."""
    from common import runs
    from common.embeddings import load_word2vec
    from common.errors import DataError
    from common.vocab import Vocab

    run = runs.open_run(run_arg)
    if not (run / runs.VECTORS).is_file():
        raise DataError(f"{run} has no {runs.VECTORS} yet: let its training finish")
    return load_word2vec(run / runs.VECTORS), Vocab.load(run / runs.VOCAB), run


def command_evaluate(args: argparse.Namespace) -> int:
    import json

    from common.evaluate import evaluate, format_results
    from common.io import write_json

    keyed, _, run = _run_vectors(args.run)
    results = evaluate(keyed)
    write_json(run / "evaluation.json", results)
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        for line in format_results(results):
            print(line)
    return 0


def command_analogy(args: argparse.Namespace) -> int:
    from common.embeddings import lookup

    if args.k < 1:
        raise ConfigError(f"-k must be a positive integer, got {args.k}")
    keyed, vocab, _ = _run_vectors(args.run)
    first, second, third = args.words
    lookup(args.words, vocab.token_to_idx)  # unknown words: one line with near spellings
    for word, similarity in keyed.most_similar(positive=[second, third], negative=[first],
                                               topn=args.k):
        print(f"cosine sim={similarity:.3f}: {word}")
    return 0


def command_backends(args: argparse.Namespace) -> int:
    import backends

    for name in backends.names():
        reason = backends.missing(name)
        if reason:
            print(f"{name:8s} not installed   ({reason})")
            continue
        try:
            backend_class = backends.load(name)
            print(f"{name:8s} installed       {backend_class.framework} "
                  f"{backend_class.version():12s} devices: {', '.join(backend_class.devices())}")
        except W2VError as error:
            print(f"{name:8s} broken          ({error})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `w2v` console script."""
    try:
        args = build_parser().parse_args(argv)
        handler = {"train": command_train, "similar": command_similar,
                   "evaluate": command_evaluate, "analogy": command_analogy,
                   "backends": command_backends}[args.command]
        return handler(args)
    except W2VError as error:
        print(f"w2v: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("w2v: interrupted; files already written are complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
