"""Atomic file output: every file the project writes appears whole or not at all.

Writers produce into a temporary file in the destination's folder (same filesystem), flush
and fsync it, then `os.replace` it over the destination. A failure or an interrupt leaves the
previous file intact and no temporary behind.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from common.errors import DataError


def umask() -> int:
    """The process' umask, read without changing it where Linux allows (no race with threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        try:  # mkstemp makes 0600; a run file is as readable as any file the user creates
            os.fchmod(handle, 0o666 & ~umask())
        finally:
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


def strict(value: Any) -> Any:
    """`value` with every NaN or infinity made None: JSON has no such numbers (RFC 8259).

    An undefined figure (a correlation over fewer than three pairs, a point that failed) is
    `null` in every file and in `--json`, so strict parsers read them.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """Strict JSON text (`strict`, then `allow_nan=False` as a guard)."""
    return json.dumps(strict(value), allow_nan=False, sort_keys=True, **options)


def write_json(destination: str | os.PathLike, value: Any) -> Path:
    """Atomically write `value` as indented, strict JSON."""
    return write_text(destination, dumps(value, indent=2) + "\n")


def write_jsonl(destination: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Atomically write one strict JSON object per line (the whole file each time)."""
    return write_text(destination, "".join(dumps(row) + "\n" for row in rows))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(text: str) -> Any:
    """Parse strict JSON: NaN and Infinity are refused as the RFC refuses them."""
    return json.loads(text, parse_constant=_reject_constant)


def read_json(path: str | os.PathLike, *, kind: type | None = dict, advice: str,
              limit: int = 16 << 20) -> Any:
    """Read a JSON file the project wrote; any damage is a one-line DataError naming it.

    `kind`: the type its top level must have. `limit`: larger files are refused unread (a
    config of gigabytes is not one of ours). `advice` ends the message: what to do.
    """
    path = Path(path)
    text = read_limited(path, limit=limit, advice=advice)
    try:
        value = loads(text)
    except (ValueError, RecursionError) as error:
        reason = str(error).split(":")[0] if isinstance(error, ValueError) else "nested too deep"
        raise DataError(f"{path} is not valid JSON ({reason}): {advice}") from None
    if kind is not None and not isinstance(value, kind):
        raise DataError(f"{path} holds a JSON {_json_type(value)}, not an "
                        f"{_json_type(kind())}: {advice}")
    return value


def read_limited(path: Path, *, limit: int, advice: str) -> str:
    """A regular UTF-8 text file of at most `limit` bytes, or a one-line DataError."""
    try:
        if not path.is_file():
            what = "does not exist" if not path.exists() else "is not a regular file"
            raise DataError(f"{path} {what}: {advice}")
        if path.stat().st_size > limit:
            raise DataError(f"{path} is {path.stat().st_size:,} bytes, more than such a file "
                            f"can be ({limit:,}): {advice}")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start}): {advice}") from None
    except OSError as error:
        raise DataError(f"cannot read {path} ({error.strerror or error}): {advice}") from None


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)
