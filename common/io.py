"""Atomic file output: every file the project writes appears whole or not at all.

Writers produce into a temporary file in the destination's folder (same filesystem), flush
and fsync it, then `os.replace` it over the destination. A failure or an interrupt leaves the
previous file intact and no temporary behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from common.errors import DataError


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `destination`; on success it replaces `destination`.

    For writers that insist on a file name (matplotlib, gensim, numpy); `suffix` keeps the
    extension some of them look at.
    """
    destination = Path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=suffix + ".tmp",
                                             dir=destination.parent)
        os.close(handle)
    except OSError as error:
        raise DataError(f"cannot write {destination}: {error.strerror or error}") from None
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        with open(temporary_path, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary_path, destination)
    except OSError as error:
        raise DataError(f"cannot write {destination}: {error.strerror or error}; "
                        f"the previous file, if any, is unchanged") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary_path.unlink()


def write_atomic(destination: str | os.PathLike, write: Callable[[IO[Any]], None], *,
                 binary: bool = False) -> Path:
    """Call `write(handle)` on a temporary file, then move it over `destination`."""
    with atomic_path(destination) as temporary:
        mode = "wb" if binary else "w"
        with open(temporary, mode, **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
    return Path(destination)


def write_text(destination: str | os.PathLike, text: str) -> Path:
    """Atomically write `text` (UTF-8)."""
    return write_atomic(destination, lambda handle: handle.write(text))


def write_json(destination: str | os.PathLike, value: Any) -> Path:
    """Atomically write `value` as indented JSON."""
    return write_text(destination, json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_jsonl(destination: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Atomically write one JSON object per line (the whole file each time)."""
    return write_text(destination, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
