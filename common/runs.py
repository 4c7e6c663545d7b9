"""The run folder: what a training leaves behind, and how `similar` finds it again.

    config.json      the TrainConfig that made it
    metrics.jsonl    the loss five times an epoch (the chapter's plot points) and per epoch
    loss.png         loss against epoch
    vectors.txt      centre vectors in word2vec text format (gensim loads it)
    vocab.tsv        token<TAB>count, in index order (<unk> = 0)
    checkpoint.npz   parameters, Adam state, figures so far and position (format 3, sha256)
    report.json      the closing figures
    evaluation.json  WordSim353, SimLex-999 and analogy scores with coverage

Every file is replaced atomically, so an interrupted run leaves the previous complete files,
and a training holds a lock on the folder (`locked`) so that no second one writes there.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from common.config import TrainConfig
from common.errors import ConfigError, DataError, RunInUseError
from common.io import atomic_path, write_json, write_jsonl

CONFIG, METRICS, PLOT, VECTORS = "config.json", "metrics.jsonl", "loss.png", "vectors.txt"
VOCAB, CHECKPOINT, REPORT = "vocab.tsv", "checkpoint.npz", "report.json"
EVALUATION = "evaluation.json"
# What a training produces (as opposed to what defines it): cleared when a run is overwritten.
RESULTS = (METRICS, PLOT, VECTORS, CHECKPOINT, REPORT, EVALUATION)
# 3: batches come from the streaming pipeline, every draw keyed by position. Format 2 was
# written on the whole-epoch stream: its batches differ, so it may continue only from an epoch
# boundary (`resume_run` checks), never from the middle of an epoch.
CHECKPOINT_FORMAT = 3
EPOCH_BOUNDARY_FORMATS = (2,)
_ARRAYS = ("center", "context", "exp_avg_center", "exp_avg_context", "exp_avg_sq_center",
           "exp_avg_sq_context")


class Checkpoint(NamedTuple):
    """Parameters and optimiser state as NumPy arrays, plus how far training got.

    `training` is `TrainResult.state_dict()`: the figures so far and the exact position
    (epoch, batch, partial sums), so a resumed run continues bit for bit.
    """

    center: np.ndarray
    context: np.ndarray
    adam_step: int
    exp_avg: tuple[np.ndarray, np.ndarray]
    exp_avg_sq: tuple[np.ndarray, np.ndarray]
    training: dict[str, Any]
    vocab_digest: str = ""
    format: int = CHECKPOINT_FORMAT

    @property
    def epochs_done(self) -> int:
        return len(self.training.get("epochs", []))

    @property
    def position(self) -> dict[str, Any]:
        return self.training.get("position", {"epoch": self.epochs_done, "batch": 0})

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(zip(_ARRAYS, (self.center, self.context, *self.exp_avg, *self.exp_avg_sq)))


def prepare_output(out: str | Path, *, overwrite: bool) -> Path:
    """Create `out`, refusing a non-empty folder unless `overwrite` (its files get replaced)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} exists and is not a folder: choose another path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError(f"--out {path} already exists: pass --overwrite to replace its files, "
                          f"or choose another folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create {path}: {error.strerror or error}") from None
    return path


def open_run(run: str | Path) -> Path:
    """Check that `run` is a finished or checkpointed run folder."""
    path = Path(run)
    if not path.is_dir():
        raise ConfigError(f"--run {path} does not exist: give a folder made by `w2v train --out`")
    missing = [name for name in (CONFIG, VOCAB, CHECKPOINT) if not (path / name).is_file()]
    if missing:
        raise ConfigError(f"--run {path} is not a run folder (no {', '.join(missing)}): "
                          f"give a folder made by `w2v train --out`")
    return path


def save_config(run: Path, config: TrainConfig) -> None:
    write_json(run / CONFIG, config.to_dict())


def load_config(run: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(json.loads((run / CONFIG).read_text(encoding="utf-8")))
    except (ValueError, TypeError, OSError) as error:
        raise DataError(f"{run / CONFIG} is unreadable ({error}): re-run the training") from None


def save_metrics(run: Path, rows: list[dict[str, Any]]) -> None:
    write_jsonl(run / METRICS, rows)


def _digest(arrays: dict[str, np.ndarray], meta: str) -> str:
    """sha256 over every array's name, dtype, shape and bytes, then the metadata."""
    digest = hashlib.sha256()
    for name in _ARRAYS:
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    digest.update(meta.encode("utf-8"))
    return digest.hexdigest()


def save_checkpoint(run: Path, checkpoint: Checkpoint) -> None:
    """One .npz holding everything needed to resume exactly, checksummed, written atomically."""
    arrays = checkpoint.arrays()
    meta = json.dumps({"format": CHECKPOINT_FORMAT, "adam_step": int(checkpoint.adam_step),
                       "shape": list(checkpoint.center.shape), "training": checkpoint.training,
                       "vocab_digest": checkpoint.vocab_digest}, sort_keys=True)
    buffer = io.BytesIO()
    np.savez(buffer, format=np.int64(CHECKPOINT_FORMAT), meta=np.array(meta),
             sha256=np.array(_digest(arrays, meta)), **arrays)
    with atomic_path(run / CHECKPOINT, suffix=".npz") as temporary:
        temporary.write_bytes(buffer.getvalue())


def load_checkpoint(run: Path, *, vocab_digest: str | None = None,
                    shape: tuple[int, int] | None = None) -> Checkpoint:
    """Read and verify `run`'s checkpoint; every way it can be wrong is a one-line DataError.

    `vocab_digest` and `shape`, when given, must match what the checkpoint was trained with.
    """
    path = run / CHECKPOINT
    advice = f"delete {path} and train again (or use another run folder)"
    try:
        with np.load(path, allow_pickle=False) as stored:
            version = int(stored["format"])
            if version > CHECKPOINT_FORMAT:
                raise DataError(f"{path} has format {version}, newer than this version of "
                                f"w2v-multi reads ({CHECKPOINT_FORMAT}): upgrade w2v-multi")
            if version < CHECKPOINT_FORMAT and version not in EPOCH_BOUNDARY_FORMATS:
                raise DataError(f"{path} has the old format {version} (this version reads "
                                f"{CHECKPOINT_FORMAT}): {advice}")
            arrays = {name: stored[name] for name in _ARRAYS}
            meta_text = str(stored["meta"])
            checksum = str(stored["sha256"])
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: the run has no checkpoint yet") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path} is corrupt or truncated ({type(error).__name__}): "
                        f"{advice}") from None
    if _digest(arrays, meta_text) != checksum:
        raise DataError(f"{path} fails its checksum (changed after it was written): {advice}")
    meta = json.loads(meta_text)
    checkpoint = Checkpoint(arrays["center"], arrays["context"], int(meta["adam_step"]),
                            (arrays["exp_avg_center"], arrays["exp_avg_context"]),
                            (arrays["exp_avg_sq_center"], arrays["exp_avg_sq_context"]),
                            meta["training"], meta.get("vocab_digest", ""), version)
    if shape is not None and tuple(checkpoint.center.shape) != tuple(shape):
        raise DataError(f"{path} holds {checkpoint.center.shape[0]} words x "
                        f"{checkpoint.center.shape[1]} dimensions, this run needs "
                        f"{shape[0]} x {shape[1]}: it belongs to another run")
    if vocab_digest is not None and checkpoint.vocab_digest != vocab_digest:
        raise DataError(f"{path} was trained on another vocabulary than {run / VOCAB}: "
                        f"it belongs to another run")
    return checkpoint


@contextlib.contextmanager
def locked(run: Path) -> Iterator[None]:
    """Hold `run`'s lock while a training writes there; a second one is refused at once.

    An advisory `flock` on the folder itself (no lock file to leave behind): the kernel drops
    it when the process exits or dies, so a crashed training never leaves a stale lock.
    """
    import fcntl

    try:
        descriptor = os.open(run, os.O_RDONLY)
    except OSError as error:
        raise DataError(f"cannot open {run}: {error.strerror or error}") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunInUseError(f"{run} is in use by another training: wait for it to finish, "
                                f"or choose another --out") from None
        yield
    finally:
        os.close(descriptor)  # closing the descriptor releases the lock


def save_report(run: Path, report: dict[str, Any]) -> None:
    write_json(run / REPORT, report)

