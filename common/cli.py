"""`w2v`: the command line. The only place a backend name becomes a Backend.

Every expected failure is a `W2VError`, printed as one line (`w2v: error: ...`) with its
exit code; usage errors exit 2. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from common import config as config_module
from common.config import TrainConfig
from common.errors import ConfigError, Stopped, W2VError


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so bad flags get the same one-line errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def _add_train_flags(parser: argparse.ArgumentParser, *, lists: bool = False) -> None:
    """One flag per TrainConfig field, the chapter's value as default (exercise 1).

    Flags default to None so that `--resume` can tell which ones were given; the config's
    own defaults fill the rest (`_train_config`). With `lists` (`w2v sweep`), a flag takes
    comma-separated values, except those a sweep holds fixed (`sweep.SINGLE_VALUED`).
    """
    from common.sweep import SINGLE_VALUED

    defaults = TrainConfig()
    for field in config_module.fields():
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        kind = field.type if isinstance(field.type, type) else \
            {"int": int, "float": float, "str": str}.get(str(field.type).removesuffix(" | None"),
                                                      str)
        help_text = field.metadata.get("help", "")
        extra = {k: v for k, v in field.metadata.items() if k != "help"}
        if lists and field.name not in SINGLE_VALUED:
            kind = _comma_list(kind)
            extra.pop("choices", None)  # each value is checked by TrainConfig.validate
            help_text += "; comma-separated values to sweep"
        parser.add_argument(flag, dest=field.name, type=kind, default=None,
                            help=f"{help_text} (default: {default})", **extra)


def _comma_list(kind: type) -> Any:
    """argparse type: "0.001,0.002" -> [0.001, 0.002] of `kind`."""
    def convert(text: str) -> list[Any]:
        try:
            return [kind(part.strip()) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid {kind.__name__} in comma-separated list: {text!r}") from None

    convert.__name__ = f"{kind.__name__} list"
    return convert


# What `--resume` may change: how long to train and where; the rest is the run's own.
RESUME_OVERRIDES = ("epochs", "backend", "device", "step", "threads", "data_parallel")


def _given_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in config_module.fields()
            if getattr(args, f.name) is not None}


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The flags given, the environment's backend, then the chapter's defaults."""
    values = _given_flags(args)
    values.setdefault("backend", os.environ.get("W2V_BACKEND", TrainConfig.backend))
    return TrainConfig(**values).validate()


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
    train.add_argument("--resume", metavar="RUN", default=None,
                       help="continue an interrupted run from its checkpoint (exactly where it "
                            "stopped); may raise --epochs, change --backend/--device/--step")

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
    evaluate.add_argument("--pairs", action="append", default=[], metavar="FILE",
                          help="also score word pairs of your own (WORD<TAB>WORD<TAB>SCORE, "
                               "as wordsim353.tsv); repeatable")
    evaluate.add_argument("--analogies", action="append", default=[], metavar="FILE",
                          help="also score analogies of your own (as questions-words.txt); "
                               "repeatable")

    analogy = commands.add_parser("analogy", help="a is to b as c is to ? (b - a + c)")
    # Three positionals, not nargs=3 with a tuple metavar: argparse crashes formatting the
    # "required" error for the latter when words are missing.
    for name, role in (("a", "A"), ("b", "B"), ("c", "C")):
        analogy.add_argument(name, metavar=role)
    analogy.add_argument("-k", type=int, default=3, help="answers to show (default: 3)")
    analogy.add_argument("--run", required=True, help="a run folder made by `w2v train`")

    export = commands.add_parser("export", help="write a run's vectors: word2vec text format, "
                                 "or vectors.tsv + metadata.tsv for the Embedding Projector")
    export.add_argument("--run", required=True, help="a run folder made by `w2v train`")
    export.add_argument("--format", default="word2vec", choices=("word2vec", "projector"),
                        help="word2vec (default): one text file; projector: vectors.tsv and "
                             "metadata.tsv, as TensorBoard's and the standalone Projector load")
    export.add_argument("--out", default=None,
                        help="word2vec: the file (default RUN/vectors.txt); projector: the "
                             "folder (default RUN/projector)")
    export.add_argument("--include-unk", action="store_true",
                        help="projector: keep the <unk> row (left out by default)")

    from common.sweep import SORT_KEYS

    sweep = commands.add_parser("sweep", help="train a grid of settings in one backend and "
                                "compare them (validation loss, WordSim353, SimLex, analogies)")
    _add_train_flags(sweep, lists=True)
    sweep.add_argument("--out", default="runs/sweep", help="sweep folder (default: runs/sweep)")
    sweep.add_argument("--overwrite", action="store_true",
                       help="retrain every point (default: a re-run trains only missing ones)")
    sweep.add_argument("--sort", default="wordsim353", choices=tuple(SORT_KEYS),
                       help="order of the printed table (default: wordsim353)")

    commands.add_parser("backends", help="list backends, installed or not, with devices")
    return parser


def _check_out(args: argparse.Namespace) -> None:
    if args.out is not None and not args.out.strip():
        raise ConfigError("--out is empty: give the folder to write, e.g. --out runs/mine")


def command_train(args: argparse.Namespace) -> int:
    from common.session import resume_run, train_run

    _check_out(args)
    progress = False if args.no_progress else None
    if args.resume is None:
        config = _train_config(args)
        train_run(config, args.out if args.out is not None else f"runs/{config.backend}",
                  overwrite=args.overwrite, progress=progress, queries=args.query)
        return 0
    given = _given_flags(args)
    fixed = sorted(set(given) - set(RESUME_OVERRIDES))
    if fixed or args.out is not None or args.overwrite:
        names = [f"--{name.replace('_', '-')}" for name in fixed]
        names += ["--out"] * (args.out is not None) + ["--overwrite"] * args.overwrite
        raise ConfigError(f"{', '.join(names)} cannot be given with --resume: a resumed run "
                          f"keeps its config.json (only --epochs, --backend, --device, --step, "
                          f"--threads and --data-parallel)")
    resume_run(args.resume, progress=progress, queries=args.query,
               **{name: given.get(name) for name in RESUME_OVERRIDES})
    return 0


def command_similar(args: argparse.Namespace) -> int:
    import backends
    from common.session import resolve_backend
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
    checkpoint = runs.load_checkpoint(run, vocab_digest=vocab.digest(),
                                      shape=(len(vocab), config.embed_size))
    name = args.backend
    if name is None:  # the run's own backend when it is installed here, else the reference
        name = config.backend if not backends.missing(config.backend) else "numpy"
    backend_class = resolve_backend(backends.canonical(name), args.device)
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
    # The exported, input-side table: the context table for CBOW.
    table = checkpoint.context if config.model == "cbow" else checkpoint.center
    backend.set_params(Params(table, checkpoint.context))
    top, sims = backend.similar(lookup(words, vocab.token_to_idx), k)
    for word, row_ids, row_sims in zip(words, top, sims):
        if len(words) > 1:
            print(f"{word}:")
        for line in format_similar(vocab.idx_to_token, row_ids, row_sims):
            print(line)
    return 0


def command_export(args: argparse.Namespace) -> int:
    """The input-side table of the run's checkpoint (the context table for CBOW)."""
    from common import runs
    from common.embeddings import export_projector, export_word2vec
    from common.vocab import Vocab

    run = runs.open_run(args.run)
    config = runs.load_config(run)
    vocab = Vocab.load(run / runs.VOCAB)
    checkpoint = runs.load_checkpoint(run, vocab_digest=vocab.digest(),
                                      shape=(len(vocab), config.embed_size))
    table = checkpoint.context if config.model == "cbow" else checkpoint.center
    if args.format == "word2vec":
        if args.include_unk:
            raise ConfigError("--include-unk is for --format projector (word2vec files leave "
                              "<unk> out, as gensim reads them)")
        out = Path(args.out) if args.out else run / runs.VECTORS
        export_word2vec(out, vocab.idx_to_token, table)
        print(f"wrote {out}")
        return 0
    out = Path(args.out) if args.out else run / "projector"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a folder for --format projector")
    for path in export_projector(out, vocab.idx_to_token, table,
                                 include_unk=args.include_unk):
        print(f"wrote {path}")
    print("load them at https://projector.tensorflow.org (Load: vectors.tsv, then "
          "metadata.tsv)")
    return 0


def _run_vectors(run_arg: str) -> tuple[Any, Any, Path]:
    """A run's exported vectors (gensim KeyedVectors) and vocabulary, checked against each
    other: every vocabulary word has a vector of the configured dimension."""
    from common import runs
    from common.embeddings import load_word2vec
    from common.errors import DataError
    from common.vocab import Vocab

    run = runs.open_run(run_arg)
    config = runs.load_config(run)
    vocab = Vocab.load(run / runs.VOCAB)
    if not (run / runs.VECTORS).exists():
        raise DataError(f"{run} has no {runs.VECTORS} yet: let its training finish (or "
                        f"`w2v train --resume {run}`)")
    keyed = load_word2vec(run / runs.VECTORS, words=vocab.idx_to_token[1:],
                          dimension=config.embed_size, advice=runs.export_advice(run))
    return keyed, vocab, run


def command_evaluate(args: argparse.Namespace) -> int:
    """Print the scores first, then save them: a read-only or busy run still shows them."""
    from common import runs
    from common.errors import DataError, RunInUseError
    from common.evaluate import evaluate, format_results
    from common.io import dumps, write_json

    from common.evaluate import check_file

    for path in args.pairs:  # the user's files, before the run's
        check_file(path, "pairs")
    for path in args.analogies:
        check_file(path, "analogies")
    keyed, _, run = _run_vectors(args.run)
    results = evaluate(keyed, pairs=args.pairs, analogy_files=args.analogies)
    if args.json:
        print(dumps(results, indent=2))
    else:
        for line in format_results(results):
            print(line)
    sys.stdout.flush()
    try:
        with runs.locked(run):  # a training running there would rewrite it anyway
            write_json(run / runs.EVALUATION, results)
    except (DataError, RunInUseError) as error:
        print(f"w2v: note: the scores above are not saved in {run / runs.EVALUATION} "
              f"({error})", file=sys.stderr)
    return 0


def command_analogy(args: argparse.Namespace) -> int:
    from common.embeddings import lookup

    if args.k < 1:
        raise ConfigError(f"-k must be a positive integer, got {args.k}")
    keyed, vocab, _ = _run_vectors(args.run)
    first, second, third = args.a, args.b, args.c
    lookup([first, second, third], vocab.token_to_idx)  # unknown words: one line with near spellings
    for word, similarity in keyed.most_similar(positive=[second, third], negative=[first],
                                               topn=args.k):
        print(f"cosine sim={similarity:.3f}: {word}")
    return 0


def command_sweep(args: argparse.Namespace) -> int:
    from common.sweep import PLOT, TABLE, expand, format_table, run_sweep, summary

    _check_out(args)
    grid = {name: value if isinstance(value, list) else [value]
            for name, value in _given_flags(args).items()}
    grid.setdefault("backend", [os.environ.get("W2V_BACKEND", TrainConfig.backend)])
    points = expand(grid)  # every point validated before anything trains
    rows = run_sweep(points, args.out, overwrite=args.overwrite, sort=args.sort)
    for line in format_table(rows) + summary(rows, args.sort):
        print(line)
    print(f"table: {Path(args.out) / TABLE}, plot: {Path(args.out) / PLOT}")
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


@contextlib.contextmanager
def _stop_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the command as Ctrl-C does (one line, files complete).

    Training replaces these handlers with its own while it runs (it checkpoints first);
    everywhere else (reading the corpus, exporting, evaluating) they raise `Stopped`.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Stopped(signum)

    # A signal the caller ignores stays ignored: `nohup w2v train` must outlive its terminal.
    previous = {signum: signal.signal(signum, handler)
                for signum in (signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `w2v` console script."""
    try:
        with _stop_on_termination():
            args = build_parser().parse_args(argv)
            handler = {"train": command_train, "similar": command_similar,
                       "evaluate": command_evaluate, "analogy": command_analogy,
                       "sweep": command_sweep, "backends": command_backends,
                       "export": command_export}[args.command]
            return handler(args)
    except W2VError as error:
        from common.parallel import ReplicaLost, is_launched_replica

        # Said once: by the replica that failed, or by the launcher that saw it die.
        quiet = getattr(error, "reported", False) or \
            (isinstance(error, ReplicaLost) and is_launched_replica())
        if not quiet:
            print(f"w2v: error: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:  # `w2v evaluate --json | head`: the reader left, nothing to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as interrupt:
        signum = getattr(interrupt, "signum", signal.SIGINT)
        if signum == signal.SIGINT:
            print("w2v: interrupted; files already written are complete", file=sys.stderr)
        else:
            print(f"w2v: stopped by {signal.Signals(signum).name}; files already written are "
                  f"complete", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
