"""The run folder: what a training leaves behind, and how `similar` finds it again.

    config.json      the TrainConfig that made it
    metrics.jsonl    the loss five times an epoch (the chapter's plot points) and per epoch
    loss.png         loss against epoch
    vectors.txt      centre vectors in word2vec text format (gensim loads it)
    vocab.tsv        token<TAB>count, in index order (<unk> = 0)
    checkpoint.npz   parameters + Adam state + epochs done
    report.json      the closing figures
    evaluation.json  WordSim353, SimLex-999 and analogy scores with coverage

Every file is replaced atomically, so an interrupted run leaves the previous complete files.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from common.config import TrainConfig
from common.errors import ConfigError, DataError
from common.io import atomic_path, write_json, write_jsonl

CONFIG, METRICS, PLOT, VECTORS = "config.json", "metrics.jsonl", "loss.png", "vectors.txt"
VOCAB, CHECKPOINT, REPORT = "vocab.tsv", "checkpoint.npz", "report.json"
CHECKPOINT_FORMAT = 1


class Checkpoint(NamedTuple):
    """Parameters and optimiser state as NumPy arrays, plus how far training got."""

    center: np.ndarray
    context: np.ndarray
    adam_step: int
    exp_avg: tuple[np.ndarray, np.ndarray]
    exp_avg_sq: tuple[np.ndarray, np.ndarray]
    epochs_done: int


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


def save_checkpoint(run: Path, checkpoint: Checkpoint) -> None:
    """One .npz holding everything needed to resume exactly, written atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, format=np.int64(CHECKPOINT_FORMAT), center=checkpoint.center,
             context=checkpoint.context, adam_step=np.int64(checkpoint.adam_step),
             exp_avg_center=checkpoint.exp_avg[0], exp_avg_context=checkpoint.exp_avg[1],
             exp_avg_sq_center=checkpoint.exp_avg_sq[0],
             exp_avg_sq_context=checkpoint.exp_avg_sq[1],
             epochs_done=np.int64(checkpoint.epochs_done))
    with atomic_path(run / CHECKPOINT, suffix=".npz") as temporary:
        temporary.write_bytes(buffer.getvalue())


def load_checkpoint(run: Path) -> Checkpoint:
    path = run / CHECKPOINT
    try:
        with np.load(path) as stored:
            if int(stored["format"]) > CHECKPOINT_FORMAT:
                raise DataError(f"{path} has format {int(stored['format'])}, newer than this "
                                f"version reads ({CHECKPOINT_FORMAT}): upgrade w2v-multi")
            return Checkpoint(stored["center"], stored["context"], int(stored["adam_step"]),
                              (stored["exp_avg_center"], stored["exp_avg_context"]),
                              (stored["exp_avg_sq_center"], stored["exp_avg_sq_context"]),
                              int(stored["epochs_done"]))
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise DataError(f"{path} is unreadable or truncated ({type(error).__name__}): "
                        f"re-run the training") from None


def save_report(run: Path, report: dict[str, Any]) -> None:
    write_json(run / REPORT, report)

