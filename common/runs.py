"""The run folder: what a training leaves behind, and how `similar` finds it again.

    config.json      the TrainConfig that made it
    metrics.jsonl    the loss five times an epoch (the chapter's plot points) and per epoch
    loss.png         loss against epoch
    vectors.txt      centre vectors in word2vec text format (gensim loads it)
    vocab.tsv        token<TAB>count, in index order (<unk> = 0)
    checkpoint.npz   parameters, optimiser and its state, figures so far and position
                     (format 3, sha256): adam and sparse_adam keep the step count and both
                     tables' two moments, (V, E) each; sgd the step count (its schedule's
                     position) and (0, E) moments
    report.json      the closing figures
    evaluation.json  WordSim353, SimLex-999 and analogy scores with coverage

Every file is replaced atomically, so an interrupted run leaves the previous complete files,
and a training holds a lock on the folder (`locked`) so that no second one writes there.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from common.config import TrainConfig
from common.errors import ConfigError, DataError, RunInUseError
from common.io import atomic_path, loads, read_json, read_limited, write_json, write_jsonl

CONFIG, METRICS, PLOT, VECTORS = "config.json", "metrics.jsonl", "loss.png", "vectors.txt"
VOCAB, CHECKPOINT, REPORT = "vocab.tsv", "checkpoint.npz", "report.json"
EVALUATION = "evaluation.json"
RUN_FILES = (CONFIG, METRICS, PLOT, VECTORS, VOCAB, CHECKPOINT, REPORT, EVALUATION)
# What a training produces (as opposed to what defines it): cleared when a run is overwritten.
RESULTS = (METRICS, PLOT, VECTORS, CHECKPOINT, REPORT, EVALUATION)
# 3: batches come from the streaming pipeline, every draw keyed by position. Format 2 was
# written on the whole-epoch stream: its batches differ, so it may continue only from an epoch
# boundary (`resume_run` checks), never from the middle of an epoch.
CHECKPOINT_FORMAT = 3
EPOCH_BOUNDARY_FORMATS = (2,)
_ARRAYS = ("center", "context", "exp_avg_center", "exp_avg_context", "exp_avg_sq_center",
           "exp_avg_sq_context")
# Hierarchical softmax's third table (V-1, E) and its Adam moments: present only then.
_INNER = ("inner", "exp_avg_inner", "exp_avg_sq_inner")


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
    # The optimiser that wrote it; "" in checkpoints from before `--optimizer sgd`, which
    # hold (V, E) moments (adam or sparse_adam).
    optimizer: str = ""
    inner: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # table, exp_avg, exp_avg_sq

    @property
    def epochs_done(self) -> int:
        return len(self.training.get("epochs", []))

    @property
    def position(self) -> dict[str, Any]:
        return self.training.get("position", {"epoch": self.epochs_done, "batch": 0})

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = dict(zip(_ARRAYS, (self.center, self.context, *self.exp_avg, *self.exp_avg_sq)))
        if self.inner is not None:
            arrays.update(zip(_INNER, self.inner))
        return arrays


def prepare_output(out: str | Path, *, overwrite: bool) -> tuple[Path, bool]:
    """Create `out`, refusing a non-empty folder unless `overwrite`; (path, whether created).

    Nothing in an existing folder is touched here: an overwritten run's files are replaced
    only once the new run has written its first checkpoint (`remove_results`).
    """
    if not str(out).strip():
        raise ConfigError("--out is empty: give the run folder to write, e.g. --out runs/mine")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} exists and is not a folder: choose another path")
    try:
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise ConfigError(f"--out {path} already exists: pass --overwrite to replace its "
                              f"files, or choose another folder")
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create {path}: {error.strerror or error}") from None
    return path, created


def remove_results(run: Path) -> None:
    """Delete what a training produced (not what defines it), as a new run replaces it."""
    for name in RESULTS:
        try:
            (run / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            raise DataError(f"cannot replace {run / name}: {error.strerror or error}; the "
                            f"folder must be writable to train into it") from None


def remove_temporaries(folder: Path, names: Sequence[str] = ()) -> list[Path]:
    """Delete this project's temporary files that a killed process left in `folder`.

    Only `.NAME.<random>[.ext].tmp` for the files the project writes there (`atomic_path`'s
    pattern): anything else in the folder is the user's. Call it holding the folder's lock,
    so no live writer's temporary is taken.
    """
    removed = []
    for name in tuple(names) or RUN_FILES:
        for path in folder.glob(f".{name}.*.tmp"):
            if path.is_file() and not path.is_symlink():
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    return removed


def existing_folder(folder: str | Path, flag: str) -> Path:
    """`folder` as given to `flag`, which must name an existing folder (not a file)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a run folder: give the folder made by "
                          f"`w2v train --out`")
    if not path.is_dir():
        raise ConfigError(f"{flag} {path} does not exist: give a folder made by "
                          f"`w2v train --out`")
    return path


def open_run(run: str | Path) -> Path:
    """Check that `run` is a finished or checkpointed run folder."""
    path = existing_folder(run, "--run")
    missing = [name for name in (CONFIG, VOCAB, CHECKPOINT) if not (path / name).is_file()]
    if missing:
        raise ConfigError(f"--run {path} is not a run folder (no {', '.join(missing)}): "
                          f"give a folder made by `w2v train --out`")
    return path


def save_config(run: Path, config: TrainConfig) -> None:
    write_json(run / CONFIG, config.to_dict())


_FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "str | None": (str, type(None)),
                "Optional[str]": (str, type(None))}


def load_config(run: Path) -> TrainConfig:
    """`run`'s config.json: an object whose every field has its type and a valid value."""
    path = run / CONFIG
    advice = "train the run again (or restore the file)"
    values = read_json(path, kind=dict, advice=advice, limit=1 << 20)
    for field in dataclasses.fields(TrainConfig):
        allowed = _FIELD_TYPES.get(str(field.type))
        value = values.get(field.name)
        if field.name in values and allowed is not None and (
                isinstance(value, bool) or not isinstance(value, allowed)):
            raise DataError(f"{path}: {field.name} is {value!r}, not a {field.type}: {advice}")
    config = TrainConfig.from_dict(values)
    try:
        return config.validate()
    except ConfigError as error:
        raise DataError(f"{path}: {error}: {advice}") from None


def export_advice(run: Path) -> str:
    """What to do about a damaged file of a run's end (vectors, report, scores)."""
    return (f"delete {run / VECTORS}, then `w2v train --resume {run}` exports the run's "
            f"vectors, report and scores again")


def load_report(run: Path) -> dict[str, Any]:
    """`run`'s report.json: an object whose figures are numbers (null where undefined)."""
    path = run / REPORT
    advice = export_advice(run)
    report = read_json(path, kind=dict, advice=advice, limit=64 << 20)
    for key in ("all_epochs_mean_loss", "last_epoch_mean_loss", "centre_words", "seconds",
                "centre_words_per_second"):
        if key not in report or not _number_or_null(report[key]):
            raise DataError(f"{path}: {key} is missing or not a number: {advice}")
    return report


def load_metrics(run: Path) -> list[dict[str, Any]]:
    """`run`'s metrics.jsonl: one object per line, each with a numeric epoch and loss.

    A last line cut by a kill is dropped (the next checkpoint rewrites the file whole).
    """
    path = run / METRICS
    advice = export_advice(run)
    rows = read_jsonl(path, advice=advice, limit=256 << 20)
    for number, row in enumerate(rows, start=1):
        if not all(_number_or_null(row.get(key, "")) for key in ("epoch", "loss")):
            raise DataError(f"{path}:{number}: a row without a numeric epoch and loss: {advice}")
    return rows


def read_jsonl(path: Path, *, advice: str, limit: int) -> list[dict[str, Any]]:
    """One JSON object per line; a damaged last line (cut by a kill) is left out, any other
    damage is a one-line DataError naming the line."""
    lines = read_limited(path, limit=limit, advice=advice).split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = loads(line)
        except (ValueError, RecursionError):
            row = None
        if not isinstance(row, dict):
            if number == len(lines):  # no newline after it: cut short by a kill, left out
                continue
            raise DataError(f"{path}:{number} is not a JSON object: {advice}")
        rows.append(row)
    return rows


def load_evaluation(run: Path) -> dict[str, dict[str, Any]]:
    """`run`'s evaluation.json: each benchmark an object of numbers (null: undefined)."""
    path = run / EVALUATION
    advice = f"`w2v evaluate --run {run}` writes it again"
    scores = read_json(path, kind=dict, advice=advice, limit=1 << 20)
    for name, figures in scores.items():
        if not isinstance(figures, dict) or not all(map(_number_or_null, figures.values())):
            raise DataError(f"{path}: {name} is not an object of numbers: {advice}")
    return scores


def _number_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                             and math.isfinite(value))


def save_metrics(run: Path, rows: list[dict[str, Any]]) -> None:
    write_jsonl(run / METRICS, rows)


def _digest(arrays: dict[str, np.ndarray], meta: str) -> str:
    """sha256 over every array's name, dtype, shape and bytes, then the metadata."""
    digest = hashlib.sha256()
    for name in (*_ARRAYS, *(name for name in _INNER if name in arrays)):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    digest.update(meta.encode("utf-8"))
    return digest.hexdigest()


def save_checkpoint(run: Path, checkpoint: Checkpoint) -> None:
    """One .npz holding everything needed to resume exactly, checksummed, written atomically."""
    arrays = checkpoint.arrays()
    meta = json.dumps({"format": CHECKPOINT_FORMAT, "adam_step": int(checkpoint.adam_step),
                       "optimizer": checkpoint.optimizer,
                       "shape": list(checkpoint.center.shape), "training": checkpoint.training,
                       "vocab_digest": checkpoint.vocab_digest}, sort_keys=True)
    buffer = io.BytesIO()
    np.savez(buffer, format=np.int64(CHECKPOINT_FORMAT), meta=np.array(meta),
             sha256=np.array(_digest(arrays, meta)), **arrays)
    with atomic_path(run / CHECKPOINT, suffix=".npz") as temporary:
        temporary.write_bytes(buffer.getvalue())


def _check_members(path: Path) -> None:
    """Refuse, before reading any array, an npz whose headers promise more than it holds.

    `np.load` allocates what a member's header declares before it reads the data: a header
    edited to (10**9, 10**9) would ask for exabytes. np.savez stores members uncompressed,
    so a member's declared bytes must be exactly what follows its header.
    """
    expected = {name + ".npy" for name in (*_ARRAYS, "format", "meta", "sha256")}
    with zipfile.ZipFile(path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        expected |= {name + ".npy" for name in _INNER if name + ".npy" in infos}
        missing = sorted(expected - set(infos))
        if missing:
            raise KeyError(missing[0])
        for name in sorted(expected):
            info = infos[name]
            if info.compress_type != zipfile.ZIP_STORED or \
                    info.file_size > path.stat().st_size:
                raise ValueError(f"{name} is not stored as np.savez stores it")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = reader(member)
                declared = math.prod(shape) * dtype.itemsize
                if dtype.hasobject or declared != info.file_size - member.tell():
                    raise ValueError(f"{name}'s header does not match its data")


def load_checkpoint(run: Path, *, vocab_digest: str | None = None,
                    shape: tuple[int, int] | None = None) -> Checkpoint:
    """Read and verify `run`'s checkpoint; every way it can be wrong is a one-line DataError.

    Integrity first (the zip, each member's header against its data, the format version, the
    sha256), then meaning: two float32 (V, E) tables and four moments of the same shape
    ((0, E) for sgd, which keeps none), a known optimiser, a step >= 0, and
    training figures of the right types (`training.check_state`). `vocab_digest` and
    `shape`, when given, must match what the checkpoint was trained with.
    """
    from common.training import check_state

    path = run / CHECKPOINT
    advice = f"delete {path} and train again (or use another run folder)"
    try:
        if path.exists() and not path.is_file():
            raise DataError(f"{path} is not a regular file: {advice}")
        _check_members(path)
        with np.load(path, allow_pickle=False) as stored:
            version = int(stored["format"])
            if version > CHECKPOINT_FORMAT:
                raise DataError(f"{path} has format {version}, newer than this version of "
                                f"w2v-multi reads ({CHECKPOINT_FORMAT}): upgrade w2v-multi")
            if version < CHECKPOINT_FORMAT and version not in EPOCH_BOUNDARY_FORMATS:
                raise DataError(f"{path} has the old format {version} (this version reads "
                                f"{CHECKPOINT_FORMAT}): {advice}")
            arrays = {name: stored[name] for name in _ARRAYS}
            inner = {name: stored[name] for name in _INNER if name in stored.files}
            meta_text = str(stored["meta"])
            checksum = str(stored["sha256"])
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: the run has no checkpoint yet") from None
    except (OSError, ValueError, KeyError, EOFError, TypeError, OverflowError, MemoryError,
            NotImplementedError, zipfile.BadZipFile, zipfile.LargeZipFile) as error:
        # NotImplementedError: zipfile's word for a damaged "version needed" or method field.
        raise DataError(f"{path} is corrupt or truncated ({type(error).__name__}): "
                        f"{advice}") from None
    if _digest({**arrays, **inner}, meta_text) != checksum:
        raise DataError(f"{path} fails its checksum (changed after it was written): {advice}")
    # Past the checksum the file is as some version of w2v-multi wrote it; an older or buggy
    # one may still have written nonsense, which must not reach the training loop.
    try:
        meta = json.loads(meta_text)  # checksummed: NaN from a diverging epoch is ours
    except (ValueError, RecursionError):
        meta = None
    from common.config import OPTIMIZERS

    table_shape = arrays["center"].shape
    optimizer = meta.get("optimizer", "") if isinstance(meta, dict) else ""
    moment_shape = (0, *table_shape[1:]) if optimizer == "sgd" else table_shape
    problem = None
    if not isinstance(meta, dict):
        problem = "its metadata is not a JSON object"
    elif optimizer != "" and optimizer not in OPTIMIZERS:
        problem = f"its optimizer is {optimizer!r}, not one of {', '.join(OPTIMIZERS)}"
    elif any(array.dtype != np.float32 or
             array.shape != (table_shape if name in ("center", "context") else moment_shape)
             for name, array in arrays.items()) or len(table_shape) != 2 \
            or table_shape[0] < 2 or table_shape[1] < 1:
        problem = ("its tables are not two float32 (V, E) arrays and four moments "
                   f"{'(0, E)' if optimizer == 'sgd' else 'of the same shape'}: "
                   + ", ".join(f"{name} {array.dtype}{list(array.shape)}"
                               for name, array in arrays.items()))
    elif inner and (set(inner) != set(_INNER) or any(
            array.dtype != np.float32 or array.shape != (
                (table_shape[0] - 1, table_shape[1]) if name == "inner" or optimizer != "sgd"
                else moment_shape)
            for name, array in inner.items())):
        problem = ("its inner-node tables are not a float32 (V-1, E) table and two moments "
                   f"{'(0, E)' if optimizer == 'sgd' else 'of the same shape'}")
    elif meta.get("format") != version or meta.get("shape") != list(table_shape):
        problem = "its metadata disagrees with its tables or its format"
    elif isinstance(meta.get("adam_step"), bool) or not isinstance(meta.get("adam_step"), int) \
            or meta["adam_step"] < 0:
        problem = f"its Adam step is {meta.get('adam_step')!r}, not an integer >= 0"
    elif not isinstance(meta.get("vocab_digest", ""), str):
        problem = "its vocabulary digest is not a string"
    else:
        problem = check_state(meta.get("training"))
    if problem is not None:
        raise DataError(f"{path} is not a usable checkpoint ({problem}): {advice}")
    checkpoint = Checkpoint(arrays["center"], arrays["context"], int(meta["adam_step"]),
                            (arrays["exp_avg_center"], arrays["exp_avg_context"]),
                            (arrays["exp_avg_sq_center"], arrays["exp_avg_sq_context"]),
                            meta["training"], meta.get("vocab_digest", ""), version, optimizer,
                            tuple(inner[name] for name in _INNER) if inner else None)
    if shape is not None and tuple(table_shape) != tuple(shape):
        raise DataError(f"{path} holds {table_shape[0]} words x {table_shape[1]} dimensions, "
                        f"but {run / CONFIG} and {run / VOCAB} say {shape[0]} x {shape[1]}: "
                        f"it belongs to another run")
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

