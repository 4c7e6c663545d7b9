"""`w2v sweep`: a grid of trainings in one backend, one table and one plot (exercise 1).

Every point is an ordinary run folder (`OUT/<point>/`, made by `session.train_run`), so
`w2v similar`, `evaluate` and `analogy` work on each. The table is rewritten, atomically,
after every point: an interrupted sweep keeps what it finished, and running the same command
again trains only the points that are missing.

    sweep.json    the grid: every point's name and config (a re-run must ask for the same)
    sweep.jsonl   one row per finished point: config, validation loss, scores, time
    sweep.tsv     the same rows as a table (one column per swept field)
    sweep.png     validation loss and WordSim353 per point
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from common.config import TrainConfig, fields
from common.errors import ConfigError, W2VError
from common.io import write_json, write_jsonl, write_text

GRID, ROWS, TABLE, PLOT, LOG = "sweep.json", "sweep.jsonl", "sweep.tsv", "sweep.png", "train.log"
# Fields a sweep holds fixed: it compares settings of one backend on one corpus.
SINGLE_VALUED = ("backend", "device", "data_parallel", "corpus", "data", "threads")
# What is not a hyperparameter: left out when asking whether a point is the chapter's (both
# steps compute the same figures).
_NOT_HYPERPARAMETERS = SINGLE_VALUED + ("seed", "step")
SORT_KEYS = {"wordsim353": True, "simlex999": True, "analogies": True,  # True: higher is better
             "valid_loss": False, "seconds": False}
METRICS = ("valid_loss", "wordsim353", "wordsim353_pairs", "simlex999", "simlex999_pairs",
           "analogies", "analogies_covered", "seconds", "words_per_second")


def flag(name: str) -> str:
    """A field's command-line spelling, for messages: `embed_size` -> `--embed-size`."""
    return "--" + name.replace("_", "-")


def expand(grid: dict[str, Sequence[Any]]) -> list[tuple[str, TrainConfig]]:
    """Every combination of the values in `grid` (field -> values), named and validated.

    Fields missing from `grid` keep the chapter's defaults. A point's name lists the fields
    that take more than one value (`lr=0.005_embed_size=50`). Raises `ConfigError` for the
    first invalid point, before anything trains.
    """
    import backends

    known = {field.name for field in fields()}
    unknown = sorted(set(grid) - known)
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r} in the sweep")
    for name in SINGLE_VALUED:
        if len(grid.get(name, ())) > 1:
            raise ConfigError(f"{flag(name)} takes one value in a sweep (it compares "
                              f"settings of one backend on one corpus)")
    if "backend" in grid:  # `pytorch` and `torch` are one backend: one name in the folders
        grid = {**grid, "backend": [backends.canonical(name) for name in grid["backend"]]}
    order = [field.name for field in fields() if field.name in grid]
    for name in order:
        if not grid[name]:
            raise ConfigError(f"{flag(name)} has no value")
        if len(set(map(repr, grid[name]))) != len(grid[name]):
            raise ConfigError(f"{flag(name)} lists a value twice")
    varying = [name for name in order if len(grid[name]) > 1]
    points = []
    for values in itertools.product(*(grid[name] for name in order)):
        chosen = dict(zip(order, values))
        config = TrainConfig(**chosen).validate()
        name = "_".join(f"{field}={chosen[field]}" for field in varying) or "point"
        points.append((name, config))
    return points


def is_chapter_default(config: TrainConfig) -> bool:
    """Whether `config` trains with the chapter's hyperparameters (backend and seed aside)."""
    defaults = TrainConfig()

    def value(of: TrainConfig, name: str) -> Any:  # lr and schedule: what they resolve to
        return {"lr": of.learning_rate, "lr_schedule": of.schedule}.get(name,
                                                                      getattr(of, name, None))

    return all(value(config, field.name) == value(defaults, field.name)
               for field in fields() if field.name not in _NOT_HYPERPARAMETERS)


def _row(name: str, config: TrainConfig, outcome: Any) -> dict[str, Any]:
    """One finished point: its config, last validation loss, scores and speed."""
    evaluation = outcome.evaluation or {}
    scores = {key: evaluation.get(key, {}) for key in ("wordsim353", "simlex999", "analogies")}
    return {
        "point": name, "chapter": is_chapter_default(config), "config": config.to_dict(),
        "valid_loss": outcome.valid_losses[-1] if outcome.valid_losses else float("nan"),
        "valid_losses": list(outcome.valid_losses),
        "wordsim353": scores["wordsim353"].get("spearman", float("nan")),
        "wordsim353_pairs": scores["wordsim353"].get("covered", 0),
        "simlex999": scores["simlex999"].get("spearman", float("nan")),
        "simlex999_pairs": scores["simlex999"].get("covered", 0),
        "analogies": scores["analogies"].get("accuracy", float("nan")),
        "analogies_covered": scores["analogies"].get("covered", 0),
        "train_loss": outcome.result.last_epoch_mean_loss,
        "seconds": outcome.result.seconds,
        "words_per_second": outcome.result.words_per_second,
    }


def _failed_row(name: str, config: TrainConfig, error: W2VError) -> dict[str, Any]:
    """A point that could not train (diverged, batch larger than the data): kept, marked."""
    row = {key: float("nan") for key in METRICS}
    row.update(point=name, chapter=is_chapter_default(config), config=config.to_dict(),
               valid_losses=[], train_loss=float("nan"), error=str(error))
    return row


def sort_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Best first by `key`; points without a figure (failed, no validation split) last."""
    higher_is_better = SORT_KEYS[key]

    def rank(row: dict[str, Any]) -> tuple[bool, float]:
        value = row.get(key, float("nan"))
        missing = not isinstance(value, (int, float)) or math.isnan(value)
        return missing, 0.0 if missing else (-value if higher_is_better else value)

    return sorted(rows, key=rank)


def _swept(points: Sequence[tuple[str, TrainConfig]]) -> list[str]:
    """The fields whose value differs between points, in the config's order."""
    return [field.name for field in fields()
            if len({repr(getattr(config, field.name)) for _, config in points}) > 1]


def _format(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def write_table(out: Path, rows: list[dict[str, Any]], swept: Sequence[str]) -> None:
    """`sweep.tsv` (in grid order) and `sweep.jsonl`, each replaced atomically."""
    columns = ["point", "chapter", *swept, *METRICS, "error"]
    lines = ["\t".join(columns)]
    for row in rows:
        cells = [str(row["config"][column]) if column in swept else
                 _format(row.get(column, "")) for column in columns]
        lines.append("\t".join(cells))
    write_text(out / TABLE, "\n".join(lines) + "\n")
    write_jsonl(out / ROWS, rows)


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    """The printed table: one line per point, the chapter's defaults marked with `*`."""
    header = (f"  {'point':<34s} {'valid':>6s} {'WS353':>6s} {'SimLex':>6s} {'analogy':>7s} "
              f"{'seconds':>7s} {'words/s':>9s}")
    lines = [header]
    for row in rows:
        mark = "*" if row["chapter"] else " "
        speed = row["words_per_second"]
        speed_text = "-" if math.isnan(speed) else f"{speed:,.0f}"
        lines.append(f"{mark} {row['point']:<34s} {_format(row['valid_loss'], 3):>6s} "
                     f"{_format(row['wordsim353'], 3):>6s} {_format(row['simlex999'], 3):>6s} "
                     f"{_format(row['analogies'], 3):>7s} {_format(row['seconds'], 1):>7s} "
                     f"{speed_text:>9s}" + (f"  ({row['error']})" if row.get("error") else ""))
    if any(row["chapter"] for row in rows):
        lines.append("* the chapter's hyperparameters")
    return lines


class _FileLog:
    """A run's log lines into `train.log` in its folder, opened once training has made it."""

    def __init__(self, path: Path) -> None:
        self.path, self.handle = path, None

    def __call__(self, line: str) -> None:
        if self.handle is None:
            self.handle = open(self.path, "w", encoding="utf-8")
        self.handle.write(line + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _finished_rows(out: Path, configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rows of `sweep.jsonl` that belong to this grid, checked.

    A last line cut by a kill is dropped, so its point trains again; any other damage is a
    one-line error. Undefined figures are stored as null and come back as NaN.
    """
    from common.errors import DataError
    from common.runs import read_jsonl

    path = out / ROWS
    advice = f"delete it (its points train again) or pass --overwrite"
    finished: dict[str, dict[str, Any]] = {}
    for number, row in enumerate(read_jsonl(path, advice=advice, limit=256 << 20), start=1):
        if not isinstance(row.get("point"), str) or not isinstance(row.get("config"), dict) \
                or not isinstance(row.get("chapter"), bool):
            raise DataError(f"{path}:{number}: a row without its point, config and chapter "
                            f"mark: {advice}")
        for key in METRICS + ("train_loss",):
            value = row.get(key)
            if value is None:
                row[key] = float("nan")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"{path}:{number}: {key} is {value!r}, not a number: {advice}")
        if not isinstance(row.get("valid_losses", []), list) or \
                not isinstance(row.get("error", ""), str):
            raise DataError(f"{path}:{number}: malformed valid_losses or error: {advice}")
        if configs.get(row["point"]) == row["config"]:
            finished[row["point"]] = row
    return finished


def _start(out: Path, points: Sequence[tuple[str, TrainConfig]],
           overwrite: bool) -> dict[str, dict[str, Any]]:
    """Prepare `out`; return the rows of points a previous run of this sweep finished."""
    from common.runs import prepare_output

    grid = [{"point": name, "config": config.to_dict()} for name, config in points]
    if (out / GRID).is_file() and not overwrite:
        try:
            stored = json.loads((out / GRID).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            stored = None
        if stored != grid:
            raise ConfigError(f"--out {out} holds another sweep: pass --overwrite to replace "
                              f"it, or choose another folder")
        configs = {entry["point"]: entry["config"] for entry in grid}
        return _finished_rows(out, configs) if (out / ROWS).is_file() else {}
    prepare_output(out, overwrite=overwrite)
    if not overwrite:
        write_json(out / GRID, grid)
    return {}


def _replace_sweep(out: Path, points: Sequence[tuple[str, TrainConfig]]) -> None:
    """An overwritten sweep's files give way to the new one's, once it has its first row.

    Until then (a missing corpus, a point that cannot start) the old sweep stays whole.
    """
    from common.errors import DataError

    write_json(out / GRID, [{"point": name, "config": config.to_dict()}
                            for name, config in points])
    try:
        (out / PLOT).unlink(missing_ok=True)  # the old points' bars; the table comes next
    except OSError as error:
        raise DataError(f"cannot replace {out / PLOT}: {error.strerror or error}") from None


def run_sweep(points: Sequence[tuple[str, TrainConfig]], out: str | Path, *,
              overwrite: bool = False, sort: str = "wordsim353",
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train every point into `out/<point>/`, one line each; write the table and the plot.

    Returns the rows sorted best first by `sort`. Points a previous, interrupted run of the
    same sweep finished are not trained again (unless `overwrite`).
    """
    from common.runs import locked, prepare_output, remove_temporaries
    from common.session import resolve_backend

    if sort not in SORT_KEYS:
        raise ConfigError(f"--sort must be one of {', '.join(SORT_KEYS)}, got {sort!r}")
    out = Path(out)
    first = points[0][1]
    resolve_backend(first.backend, first.device)  # an unusable backend fails before any folder
    prepare_output(out, overwrite=True)  # only creates it; `_start` decides about its files
    with locked(out):  # one sweep writes a folder at a time
        remove_temporaries(out, (GRID, ROWS, TABLE, PLOT))
        return _run_points(points, out, overwrite=overwrite, sort=sort, log=log)


def _run_points(points: Sequence[tuple[str, TrainConfig]], out: Path, *, overwrite: bool,
                sort: str, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from common.errors import Interrupted
    from common.plotting import plot_sweep
    from common.session import train_run

    first = points[0][1]
    finished = _start(out, points, overwrite)
    swept = _swept(points)
    rows: list[dict[str, Any]] = []
    log(f"sweep: {len(points)} points with {first.backend} into {out} "
        f"({len(finished)} already done; each point's log in {out}/<point>/{LOG})")
    for number, (name, config) in enumerate(points, 1):
        if name in finished:
            rows.append(finished[name])
            continue
        file_log = _FileLog(out / name / LOG)
        try:
            outcome = train_run(config, out / name, overwrite=True, log=file_log,
                                progress=False, evaluate_at_end=True)
            row = _row(name, config, outcome)
        except Interrupted as error:
            raise Interrupted(f"sweep interrupted in point {number} of {len(points)} ({name}); "
                              f"the {len(rows)} points before it are in {out / TABLE}: run the "
                              f"same command again to train the rest",
                              error.exit_code - 128) from None
        except W2VError as error:
            # The grid and the backend were checked before the first point, so a usage error
            # now is this point's own (a batch larger than the data, an optimiser the backend
            # lacks), as is divergence (a plain W2VError); a corpus or disk problem is not.
            if not isinstance(error, ConfigError) and type(error) is not W2VError:
                raise
            row = _failed_row(name, config, error)
        finally:
            file_log.close()
        rows.append(row)
        if overwrite and len(rows) == 1:
            _replace_sweep(out, points)
        write_table(out, rows, swept)
        log(f"[{number}/{len(points)}] {name}: " + (
            f"failed: {row['error']}" if row.get("error") else
            f"valid loss {_format(row['valid_loss'], 3)}, WordSim353 "
            f"{_format(row['wordsim353'], 3)}, SimLex {_format(row['simlex999'], 3)}, "
            f"analogies {_format(row['analogies'], 3)}, {row['seconds']:.1f} s"))
    write_table(out, rows, swept)
    ranked = sort_rows(rows, sort)
    plot_sweep(ranked, out / PLOT, title=f"{first.backend}, {first.corpus}: "
               f"{len(rows)} points, best first by {sort}")
    return ranked


def summary(rows: list[dict[str, Any]], sort: str) -> list[str]:
    """How the best point compares with the chapter's defaults, when both are in the sweep."""
    def has(row: dict[str, Any]) -> bool:
        value = row.get(sort, float("nan"))
        return isinstance(value, (int, float)) and not math.isnan(value)

    best = next((row for row in sort_rows(rows, sort) if has(row)), None)
    chapter = next((row for row in rows if row["chapter"]), None)
    if best is None:
        return [f"no point has a {sort} figure"]
    config = best["config"]
    lines = [f"best by {sort}: {best['point']} (--model {config.get('model', 'skipgram')} "
             f"--loss {config.get('loss', 'negative')})"]
    if chapter is not None and chapter is not best:
        lines.append(
            f"  against the chapter's defaults: WordSim353 {_format(best['wordsim353'], 3)} vs "
            f"{_format(chapter['wordsim353'], 3)}, SimLex {_format(best['simlex999'], 3)} vs "
            f"{_format(chapter['simlex999'], 3)}, validation loss "
            f"{_format(best['valid_loss'], 3)} vs {_format(chapter['valid_loss'], 3)}, "
            f"{best['seconds']:.1f} s vs {chapter['seconds']:.1f} s of training")
    return lines
