"""What every benchmark record carries (machine, commit, date, memory) and how it is stored.

Stdlib only, so it loads in both environments without importing a framework.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

RESULTS = Path(__file__).resolve().parent / "results"
# Timed runs on a shared machine take this advisory lock (flock(1) uses the same kind), so
# two measurements never overlap. `W2V_BENCH_LOCK=` (empty) turns it off.
LOCK_ENV = "W2V_BENCH_LOCK"
DEFAULT_LOCK = "/tmp/w2v-cpu.lock"


def commit() -> str:
    """The short commit of the working tree (`+dirty` if it has uncommitted changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5, cwd=root).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, cwd=root).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if head and dirty.strip() else "")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def threads() -> int:
    """CPU threads this process may run on (its affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """This process's resident memory now."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mib()


def available_mib() -> float:
    """MemAvailable: what can still be allocated without swapping or the OOM killer."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("inf")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# Set by `benchmarks.run` for every measurement it starts: the run's id and the commit it
# checked once at its start, so that every row of one `make bench` says the same.
RUN_ENV, COMMIT_ENV = "W2V_BENCH_RUN", "W2V_BENCH_COMMIT"


def stamp(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with the machine, date, commit, run and Python version added.

    `threads` is the CPUs the process may use when stamped: after `--threads N` pinned it, N.
    """
    return {**row, "cpu": cpu_model(), "threads": threads(),
            "python": platform.python_version(), "date": now(),
            "commit": os.environ.get(COMMIT_ENV) or commit(),
            "run": os.environ.get(RUN_ENV, "")}


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one JSON line in one write (whole lines, even with several writers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")


def emit(row: dict[str, Any], line: str, out: str | os.PathLike | None) -> None:
    """A measurement's output: its readable line, its JSON line, and the JSON appended to `out`."""
    print(line)
    print(json.dumps(row, sort_keys=True), flush=True)
    if out:
        append_jsonl(out, row)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every JSON line of `path` (none if it does not exist); a torn line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _held_by_ancestor(path: str) -> bool:
    """Whether this process or one it runs under (e.g. `flock LOCK make bench`) holds `path`."""
    try:
        inode = os.stat(path).st_ino
        locks = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return False
    ancestors = _ancestors()
    for line in locks:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[4].isdigit():
            if int(fields[4]) in ancestors and fields[5].rsplit(":", 1)[-1] == str(inode):
                return True
    return False


@contextlib.contextmanager
def cpu_lock() -> Iterator[None]:
    """Hold the shared benchmark lock (`W2V_BENCH_LOCK`, default /tmp/w2v-cpu.lock).

    Taken per measurement, so a long `make bench` lets other work in between; if the whole
    command already runs under `flock` on the same file, it is not taken twice (that would wait
    forever).
    """
    path = os.environ.get(LOCK_ENV, DEFAULT_LOCK)
    if not path or _held_by_ancestor(path):
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def script(name: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a benchmark's `main`: a W2VError becomes `NAME: error: ...` and its exit code,
    as the `w2v` command does, instead of a traceback."""
    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> int:
            from common.errors import W2VError

            try:
                return main(*args, **kwargs)
            except W2VError as error:
                print(f"{name}: error: {error}", file=sys.stderr)
                return error.exit_code
        return run
    return decorate
