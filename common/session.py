"""One training run in a run folder: what `w2v train`, `w2v train --resume` and `w2v sweep` share.

A session owns the run folder for as long as it trains (a lock refuses a second training),
checkpoints at every epoch end and, on SIGINT or SIGTERM, at the next batch boundary, then
stops with exit code 130/143 and says how to resume. Everything a resumed run needs is in
the checkpoint: parameters, Adam's state, the figures so far and the exact position; the
batches themselves are a pure function of (seed, epoch), so skipping the ones already
trained puts the resumed run where the interrupted one was, bit for bit.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from common import parallel, runs
from common.config import TrainConfig
from common.errors import ConfigError, DataError, Interrupted, Stopped
from common.training import EpochReport, TrainResult, train
from common.variants import CHAPTER

# A fault-injection hook for the tests (and for trying the feature by hand): after this many
# batches trained in this process, the run sends itself W2V_INTERRUPT_SIGNAL (default SIGINT),
# exactly as a Ctrl-C at that moment would.
INTERRUPT_AFTER_ENV = "W2V_INTERRUPT_AFTER_BATCHES"
INTERRUPT_SIGNAL_ENV = "W2V_INTERRUPT_SIGNAL"
# In a run of several replica processes: only the one of this RANK signals itself (default all).
INTERRUPT_RANK_ENV = "W2V_INTERRUPT_RANK"
# What stops a run politely: Ctrl-C, a batch scheduler, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class EpochContext:
    """What an `on_epoch_end` callback sees after each epoch's checkpoint."""

    epoch: int                  # 1-based
    report: EpochReport
    result: TrainResult
    backend: Any
    vocab: Any
    valid_loss: float | None


@dataclass
class TrainOutcome:
    """A finished run: its folder, figures, vectors' scores and the live backend."""

    run: Path
    config: TrainConfig
    vocab: Any
    backend: Any
    result: TrainResult
    evaluation: dict[str, Any] | None = None
    valid_losses: list[float] = field(default_factory=list)


def make_backend(backend_class: Any, config: TrainConfig, counts: np.ndarray) -> Any:
    """The backend that trains `config`, one replica or the framework's engine: the chapter's
    combination with `backend_class` itself, the others with its framework's
    `variants.VariantBackend` (both steps run that one autodiff step there, so `--step`
    gives the same figures)."""
    if (config.model, config.loss) == CHAPTER:
        return parallel.make_backend(backend_class, config, len(counts))
    return parallel.make_backend(backend_class, config, len(counts), model=config.model,
                                 loss=config.loss, max_window=config.max_window_size,
                                 num_noise=config.num_noise_words, counts=counts)


def export_table(backend: Any, model: str) -> np.ndarray:
    """The input-side table, the vectors a run exports: the context table for CBOW."""
    params = backend.get_params()
    return params.context if model == "cbow" else params.center


def resolve_backend(name: str, device: str, threads: int = 0, replicas: int = 1) -> Any:
    """Backend name -> Backend class, with the device checked before any data is read.

    `threads` (`--threads`, 0: the framework's defaults) is applied first: some frameworks size
    their pools when they start, which the device query may do. `replicas` > 1 readies the
    framework's data-parallel engine (host devices for jax and tf) before it starts.
    """
    import backends

    backend_class = backends.load(name)
    backend_class.set_threads(threads)
    if replicas > 1:
        parallel.check_engine(backend_class, replicas)
        backend_class.prepare_replicas(replicas)
    backend_class.check_device(device)
    return backend_class


class _StopRequest:
    """Set by a signal handler; the driver asks it after every group of steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.batches_seen = 0
        self._last = (-1, 0)  # (epoch, batch) when last asked
        after = os.environ.get(INTERRUPT_AFTER_ENV, "")
        self.inject_after = int(after) if after.isdigit() else None
        self.inject_signal = int(getattr(signal, os.environ.get(INTERRUPT_SIGNAL_ENV, "SIGINT"),
                                         signal.SIGINT))

    def __call__(self, position: Any) -> bool:
        epoch, batch = self._last
        self.batches_seen += position.batch - (batch if position.epoch == epoch else 0)
        self._last = (position.epoch, position.batch)
        if self.inject_after is not None and self.batches_seen >= self.inject_after \
                and os.environ.get(INTERRUPT_RANK_ENV, os.environ.get("RANK")) \
                == os.environ.get("RANK"):
            self.inject_after = None
            os.kill(os.getpid(), self.inject_signal)  # the handler below runs right here
        return self.signum is not None


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_StopRequest]:
    """SIGINT, SIGTERM or SIGHUP ask training to stop at the next batch boundary; a second
    one aborts."""
    request = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        if request.signum is not None:  # asked twice: stop waiting for the batch boundary
            raise KeyboardInterrupt if signum == signal.SIGINT else Stopped(signum)
        request.signum = signum

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN}  # nohup's SIGHUP stays off
    try:
        yield request
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _silent(line: str) -> None:
    """The log of a replica other than rank 0."""


class _Session:
    """The pieces of one run, put together by `train_run` or `resume_run`."""

    def __init__(self, config: TrainConfig, run: Path, backend_class: Any, *,
                 log: Callable[[str], None], progress: bool | None, writer: bool = True) -> None:
        from common.data import prepare_training_data

        # Only one replica of a data-parallel run (rank 0) speaks and writes the run folder.
        self.writer = writer
        if not writer:
            log, progress = _silent, False
        self.config, self.run, self.log, self.progress = config, run, log, progress
        self.backend_class = backend_class
        self.data = prepare_training_data(config, fixed_shapes=self.backend_class.fixed_shapes,
                                          steps_per_call=self.backend_class.steps_per_call,
                                          log=log)
        self.vocab = self.data.vocab
        if config.threads:
            log(f"threads: {config.threads} (the process pinned to that many CPUs and the "
                f"framework's pools sized to match)")
        log(f"corpus {self.data.corpus_name}: {self.data.num_sentences:,} sentences, "
            f"vocabulary {len(self.vocab):,}, {self.data.num_examples(0):,} centre words per "
            f"epoch ({config.sampling} sampling)")
        self.backend = make_backend(self.backend_class, config, self.vocab.counts)
        # Over all epochs as configured: `--resume --epochs N` stretches what is left of it.
        self.backend.set_lr_schedule(config.schedule,
                                     config.epochs * self.data.num_batches(0))
        from common.heldout import HeldOut

        # The validation split's loss after every epoch (None: the corpus has no such split).
        self.heldout = HeldOut.build(config, self.vocab,
                                     fixed_shapes=self.backend_class.fixed_shapes,
                                     corpus_name=self.data.corpus_name,
                                     encoded=self.data.valid, log=log)
        self.valid_losses: list[float] = []
        self.replaces_folder = False  # True for a new run until its first checkpoint

    def where(self) -> str:
        """The device, and the replicas when there are several, as the engine counts them:
        "cpu, 2 data-parallel replicas"."""
        replicas = self.backend.replicas
        return self.backend.device + (f", {replicas} data-parallel replicas" * (replicas > 1))

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, result: TrainResult) -> None:
        params = self.backend.get_params()
        state = self.backend.optimizer_state()
        inner = None
        if self.config.loss == "hsoftmax":  # the third table and its moments
            tables = self.backend.optimizer_tables()
            inner = (self.backend.get_tables()["inner"], tables.exp_avg["inner"],
                     tables.exp_avg_sq["inner"])
        runs.save_checkpoint(self.run, runs.Checkpoint(
            params.center, params.context, state.step, tuple(state.exp_avg),
            tuple(state.exp_avg_sq),
            # The step that trained it, for the record: both keep the same state, so a resume
            # may continue with either.
            dict(result.state_dict(), valid_losses=self.valid_losses, step=self.config.step),
            self.vocab.digest(), optimizer=self.config.optimizer, inner=inner))

    def restore(self, checkpoint: runs.Checkpoint) -> TrainResult:
        from backends.base import AdamState, Params

        self.backend.set_params(Params(checkpoint.center, checkpoint.context))
        self.backend.load_optimizer_state(AdamState(checkpoint.adam_step,
                                                    Params(*checkpoint.exp_avg),
                                                    Params(*checkpoint.exp_avg_sq)))
        if self.config.loss == "hsoftmax":
            from backends.variant_base import VariantState

            if checkpoint.inner is None:
                raise DataError(f"{self.run / runs.CHECKPOINT} has no inner-node table, which "
                                f"--loss hsoftmax needs: it belongs to another run")
            tables = self.backend.get_tables()
            state = self.backend.optimizer_tables()
            tables["inner"], state.exp_avg["inner"], state.exp_avg_sq["inner"] = checkpoint.inner
            self.backend.set_tables(tables)  # resets the optimiser: load its state after
            self.backend.load_optimizer_tables(VariantState(checkpoint.adam_step,
                                                            state.exp_avg, state.exp_avg_sq))
        self.valid_losses = list(checkpoint.training.get("valid_losses", []))
        return TrainResult.from_state_dict(checkpoint.training)

    def save_progress(self, result: TrainResult) -> None:
        """Checkpoint, metrics and plot: the run folder as of now.

        A new run's first call also replaces what the folder held before: the old results go
        (they must not pass for the new run's), then the new config and vocabulary come, and
        the checkpoint. Until this moment an overwritten run is untouched.
        """
        from common.plotting import plot_loss

        if not self.writer:
            return
        if self.replaces_folder:
            runs.remove_results(self.run)
            runs.save_config(self.run, self.config)
            self.vocab.save(self.run / runs.VOCAB)
            self.replaces_folder = False
        self.save_checkpoint(result)
        epochs = [dict(epoch=e.epoch, loss=e.mean_loss, centre_words=e.centre_words,
                       seconds=e.seconds, kind="epoch") for e in result.epochs]
        for row, valid_loss in zip(epochs, self.valid_losses):
            row["valid_loss"] = valid_loss
        runs.save_metrics(self.run, [dict(p, kind="point") for p in result.curve] + epochs)
        plot_loss(result.curve, self.run / runs.PLOT, epochs=self.config.epochs,
                  title=f"{self.backend_class.name}, {self.data.corpus_name}")

    # -- training ---------------------------------------------------------------------------
    def fit(self, result: TrainResult | None,
            on_epoch_end: Callable[[EpochContext], None] | None) -> TrainResult:
        from common.batching import prefetch

        def epoch_end(report: EpochReport, so_far: TrainResult) -> None:
            valid_loss = self.heldout.loss(self.backend) if self.heldout is not None else None
            if valid_loss is not None:
                self.valid_losses.append(valid_loss)
                so_far.curve[-1]["valid_loss"] = valid_loss
                self.log(f"  validation loss {valid_loss:.3f}")
            self.save_progress(so_far)
            if on_epoch_end is not None:
                on_epoch_end(EpochContext(report.epoch, report, so_far, self.backend,
                                          self.vocab, valid_loss))

        position = result.position if result is not None else None
        with _stop_on_signals() as stop:
            def should_stop(position: Any) -> bool:
                # Every replica stops at the same batch boundary: they agree on the signal.
                stop(position)
                agreed = self.backend.agree_to_stop(stop.signum or 0)
                if agreed and stop.signum is None:
                    stop.signum = agreed
                return bool(agreed)

            result = train(self.backend,
                           lambda epoch, start: prefetch(self.data.batches(epoch, start)),
                           self.data.num_batches, self.config.epochs, progress=self.progress,
                           log=self.log, on_epoch_end=epoch_end, result=result,
                           position=position, should_stop=should_stop)
        if result.stopped:
            self.save_progress(result)
            where = result.position
            interrupted = Interrupted(
                f"interrupted in epoch {where.epoch + 1}, after batch {where.batch} of "
                f"{self.data.num_batches(where.epoch)}; checkpoint saved: continue with "
                f"`w2v train --resume {self.run}`", stop.signum or signal.SIGINT)
            interrupted.reported = not self.writer  # rank 0 says it, once
            raise interrupted
        return result

    def finish(self, result: TrainResult, *, evaluate_at_end: bool,
               queries: Sequence[str]) -> TrainOutcome:
        from common.embeddings import export_word2vec, format_similar
        from common.evaluate import evaluate, format_results
        from common.io import write_json

        if not self.writer:
            return TrainOutcome(self.run, self.config, self.vocab, self.backend, result)
        keyed = export_word2vec(self.run / runs.VECTORS, self.vocab.idx_to_token,
                                export_table(self.backend, self.config.model))
        report = result.to_dict()
        report.update(backend=self.backend_class.name, step=self.config.step,
                      model=self.config.model, loss=self.config.loss,
                      corpus=self.data.corpus_name,
                      framework_version=self.backend_class.version(),
                      valid_losses=self.valid_losses)
        runs.save_report(self.run, report)
        log = self.log
        log(f"{result.summary_line()} ({self.backend_class.name}, {self.config.step} step)")
        log(f"  --model {self.config.model} --loss {self.config.loss}")
        log(f"  all-epoch mean loss {result.all_epochs_mean_loss:.3f} (the chapter's printed "
            f"figure, 0.410 on PTB); last epoch {result.last_epoch_mean_loss:.3f}")
        log(f"  {result.words_per_second:,.1f} centre words/s over {result.seconds:.1f} s; the "
            f"chapter's formula (all epochs' words / last epoch's time) would print "
            f"{result.chapter_tokens_per_second:,.1f}")
        evaluation = None
        if evaluate_at_end:
            evaluation = evaluate(keyed)
            write_json(self.run / runs.EVALUATION, evaluation)
            for line in format_results(evaluation):
                log(f"  {line}")
        known = [word for word in queries if self.vocab.token_to_idx.get(word, 0) > 0]
        if known:
            ids = np.asarray([self.vocab.token_to_idx[word] for word in known])
            top, sims = self.backend.similar(ids, 3)
            for word, row_ids, row_sims in zip(known, top, sims):
                log(f"{word}: " + "; ".join(format_similar(self.vocab.idx_to_token, row_ids,
                                                           row_sims)))
        log(f"run folder: {self.run}")
        return TrainOutcome(self.run, self.config, self.vocab, self.backend, result, evaluation,
                            list(self.valid_losses))


def train_run(config: TrainConfig, out: str | Path, *, overwrite: bool = False,
              log: Callable[[str], None] = print, progress: bool | None = None,
              queries: Sequence[str] = (), evaluate_at_end: bool = True,
              on_epoch_end: Callable[[EpochContext], None] | None = None) -> TrainOutcome:
    """Train `config` from scratch into the run folder `out`.

    With `overwrite`, an existing run in `out` stays as it was, every file readable, until the
    new run's first checkpoint: the corpus, vocabulary, sizes, memory, device and backend are
    all checked before, and a new run that fails before then (bad input, divergence in its
    first epoch, an interrupt while reading) leaves the old one byte for byte.
    """
    import backends

    config.validate()
    config.backend = backends.canonical(config.backend)
    backend_class = resolve_backend(config.backend, config.device,  # before the folder
                                    config.threads, config.data_parallel)
    rank = parallel.replica_rank(config, backend_class)
    if rank is None:  # --data-parallel N over N processes: start them here, as torchrun would
        argv = ["train", *parallel.config_argv(config), "--out", str(out),
                *["--overwrite"] * overwrite, *["--no-progress"] * (progress is False),
                "--query", *queries]
        return _launched(config, argv, Path(out), on_epoch_end)
    if rank > 0:  # not the writer: no folder, no lock, nothing written
        session = _Session(config, Path(out), backend_class, log=log, progress=progress,
                           writer=False)
        session.backend.init_params(config.seed)
        return session.finish(session.fit(None, None), evaluate_at_end=False, queries=())
    run, created = runs.prepare_output(out, overwrite=overwrite)
    try:
        with runs.locked(run):
            runs.remove_temporaries(run)
            session = _Session(config, run, backend_class, log=log, progress=progress)
            session.backend.init_params(config.seed)
            session.replaces_folder = True  # config and vocab are written with the checkpoint
            log(f"training with {session.backend_class.name} {session.backend_class.version()} "
                f"on {session.where()} ({config.step} step, {config.optimizer} at lr "
                f"{config.learning_rate:g}, {config.schedule} schedule), writing {run}")
            result = session.fit(None, on_epoch_end)
            return session.finish(result, evaluate_at_end=evaluate_at_end, queries=queries)
    except BaseException:
        if created:  # a folder this call made and never wrote to goes again
            with contextlib.suppress(OSError):
                run.rmdir()
        raise


def _launched(config: TrainConfig, argv: list[str], run: Path,
              on_epoch_end: Callable[[EpochContext], None] | None) -> TrainOutcome:
    """Train in `config.data_parallel` processes (`parallel.launch`); the outcome from the
    run folder that rank 0 wrote (no live backend: it lived in the replicas)."""
    from common.io import read_json
    from common.vocab import Vocab

    if on_epoch_end is not None:
        raise ConfigError("per-epoch callbacks need the replicas in this process: train with "
                          "--data-parallel 1, or launch the replicas with torchrun")
    parallel.launch(argv, config.data_parallel, run)
    vocab = Vocab.load(run / runs.VOCAB)
    checkpoint = runs.load_checkpoint(run, vocab_digest=vocab.digest(),
                                      shape=(len(vocab), config.embed_size))
    evaluation = read_json(run / runs.EVALUATION, advice="train again") \
        if (run / runs.EVALUATION).is_file() else None
    return TrainOutcome(run, runs.load_config(run), vocab, None,
                        TrainResult.from_state_dict(checkpoint.training), evaluation,
                        list(checkpoint.training.get("valid_losses", [])))


def _check_old_stream(run: Path, checkpoint: runs.Checkpoint, log: Callable[[str], None]) -> None:
    """A checkpoint from the whole-epoch pipeline continues only from an epoch boundary."""
    done = checkpoint.position
    if done.get("batch", 0) or done.get("pending_losses"):
        raise DataError(
            f"{run / runs.CHECKPOINT} stopped in the middle of epoch {done['epoch'] + 1} "
            f"(batch {done['batch']}) under checkpoint format {checkpoint.format}, whose batches "
            f"this version no longer makes (format {runs.CHECKPOINT_FORMAT} keys every draw by "
            f"position): finish it with the version that wrote it, or train again")
    log(f"{run / runs.CHECKPOINT} has format {checkpoint.format} (the whole-epoch pipeline): "
        f"continuing at its epoch boundary on this version's batches")


def resume_run(run_arg: str | Path, *, epochs: int | None = None, backend: str | None = None,
               device: str | None = None, step: str | None = None,
               threads: int | None = None, data_parallel: int | None = None,
               log: Callable[[str], None] = print, progress: bool | None = None,
               queries: Sequence[str] = (), evaluate_at_end: bool = True,
               on_epoch_end: Callable[[EpochContext], None] | None = None) -> TrainOutcome:
    """Continue the run in `run_arg` from its checkpoint.

    `epochs` may raise its total; `backend` and `device` may move it (the checkpoint is
    framework-neutral), though only the same backend and device continue bit for bit; `step`
    may switch between the chapter's and the tuned step (both keep the same state);
    `data_parallel` may change the number of replicas (a checkpoint holds one model).
    """
    import backends

    from common.vocab import Vocab

    run = runs.existing_folder(run_arg, "--resume")
    if not (run / runs.CONFIG).is_file() or not (run / runs.VOCAB).is_file():
        raise ConfigError(f"--resume {run} is not a run folder (no {runs.CONFIG} or "
                          f"{runs.VOCAB}): give a folder made by `w2v train --out`")
    changes = dict(epochs=epochs, backend=backend, device=device, step=step, threads=threads,
                   data_parallel=data_parallel)
    config = runs.load_config(run)
    for name, value in changes.items():
        if value is not None:
            setattr(config, name, backends.canonical(value) if name == "backend" else value)
    config.validate()
    backend_class = resolve_backend(config.backend, config.device, config.threads,
                                    config.data_parallel)
    rank = parallel.replica_rank(config, backend_class)
    if rank is None:  # start the replicas, which resume it; the lock is theirs to take
        argv = ["train", "--resume", str(run), *["--no-progress"] * (progress is False),
                "--query", *queries]
        for name in changes:
            argv += ["--" + name.replace("_", "-"), str(getattr(config, name))]
        return _launched(config, argv, run, on_epoch_end)
    if rank > 0:  # rank 0 speaks for the run
        log, progress = _silent, False
    with runs.locked(run) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            runs.remove_temporaries(run)
        saved_vocab = Vocab.load(run / runs.VOCAB)
        checkpoint = runs.load_checkpoint(run, vocab_digest=saved_vocab.digest(),
                                          shape=(len(saved_vocab), config.embed_size))
        done = checkpoint.position
        if checkpoint.optimizer not in ("", config.optimizer):
            raise DataError(f"{run / runs.CHECKPOINT} holds {checkpoint.optimizer} state, but "
                            f"{run / runs.CONFIG} says --optimizer {config.optimizer}: it "
                            f"belongs to another run; train again")
        if checkpoint.format < runs.CHECKPOINT_FORMAT:
            _check_old_stream(run, checkpoint, log)
        # All epochs trained but stopped before the vectors were exported: just finish.
        if done["epoch"] >= config.epochs and (run / runs.VECTORS).is_file():
            raise ConfigError(f"{run} has already trained {done['epoch']} of "
                              f"{config.epochs} epochs: pass --epochs N with N larger to "
                              f"train on")
        session = _Session(config, run, backend_class, log=log, progress=progress,
                           writer=rank == 0)
        if session.vocab.digest() != saved_vocab.digest():
            raise DataError(f"the corpus gives another vocabulary than {run / runs.VOCAB} "
                            f"(changed since the run began?): resume with the same --data")
        if done["epoch"] < config.epochs:
            batches = session.data.num_batches(done["epoch"])
            if done["batch"] >= batches:
                raise DataError(f"{run / runs.CHECKPOINT} says it stopped after batch "
                                f"{done['batch']} of epoch {done['epoch'] + 1}, which has "
                                f"{batches} batches: it belongs to another run or was damaged; "
                                f"train again")
        elif done["batch"]:
            raise DataError(f"{run / runs.CHECKPOINT} says it stopped inside epoch "
                            f"{done['epoch'] + 1} of {config.epochs}: train again")
        result = session.restore(checkpoint)
        if session.writer:
            runs.save_config(run, config)
        where = (f"in epoch {done['epoch'] + 1} of {config.epochs}, after batch {done['batch']}"
                 if done["epoch"] < config.epochs else
                 f"after all {config.epochs} epochs, to export its vectors")
        log(f"resuming {run} {where}, with {session.backend_class.name} "
            f"{session.backend_class.version()} on {session.where()} ({config.step} step)")
        result = session.fit(result, on_epoch_end)
        return session.finish(result, evaluate_at_end=evaluate_at_end, queries=queries)
