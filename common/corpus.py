"""Corpora: d2l's PTB and text8 (located, downloaded, verified, cached), gensim's Lee, a file.

PTB is found in this order: an explicit `data` path, then env `W2V_PTB`, then the user cache
(`$XDG_CACHE_HOME/w2v-multi/ptb.zip` or `~/.cache/w2v-multi/ptb.zip`), then a download into
that cache. A path may be the zip or a folder holding `ptb.train.txt` (an extracted copy).
Every zip is checked against PTB's sha1 (a user's zip too: a wrong file would silently train on
the wrong data; point at an extracted folder to use a modified copy). Splits are read straight
from the zip, so nothing is ever extracted. Downloads stream to a temporary file beside the
cache entry and are renamed into place only once verified, so the cache never holds half a file.

text8 (the first 10**8 bytes of English Wikipedia, cleaned: 17,005,207 lowercase tokens on one
line) is found the same way: `--data PATH` or env `W2V_TEXT8` (the file `text8` or its zip),
the cache's `text8.zip`, a download from mattmahoney.net. Its content (the zip's `text8`
member, or the file) must have text8's sha256, so the zip and an extracted copy are both
checked. It has no sentences: it is cut into sentences of 1,000 tokens, as gensim's
`Text8Corpus` does, and it has no split: its last 1,000,000 tokens are held out for the
validation loss (PTB's valid file plays that part). text8 and text files are read as streams
into the token cache (`common.token_cache`), never as Python lists of strings.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.util
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import IO, Callable, NamedTuple

from common.errors import ChecksumError, ConfigError, DataError, DownloadError

PTB_URL = "http://d2l-data.s3-accelerate.amazonaws.com/ptb.zip"
PTB_SHA1 = "319d85e578af0cdc590547f26231e4e31cdf1e42"
ENV_DATA = "W2V_PTB"
ENV_URL = "W2V_PTB_URL"
SPLITS = ("train", "valid", "test")
NAMES = ("auto", "ptb", "lee", "text8")
TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
TEXT8_SHA256 = "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"  # of `text8`
TEXT8_MEMBER = "text8"
ENV_TEXT8 = "W2V_TEXT8"
ENV_TEXT8_URL = "W2V_TEXT8_URL"
TEXT8_SENTENCE_TOKENS = 1000     # gensim's Text8Corpus cuts its one line the same way
TEXT8_HELDOUT_TOKENS = 1_000_000  # the last tokens, held out for the validation loss
_TEXT8_HINT = "give a local copy (text8 or text8.zip) with --data PATH or W2V_TEXT8"
_HINT = "give a local copy with --data PATH or W2V_PTB"
_PTB_HINT = "give d2l's ptb.zip or a folder holding ptb.train.txt"
_CHUNK = 1 << 20

Log = Callable[[str], object]


class Corpus(NamedTuple):
    """Tokenised sentences and where they came from (`source` is for messages)."""

    name: str
    sentences: list[list[str]]
    source: str


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _reason(error: BaseException) -> str:
    """The short cause of a failure: `Connection refused`, `HTTP 404 Not Found`."""
    if isinstance(error, urllib.error.HTTPError):
        return _one_line(f"HTTP {error.code} {error.reason}")
    if isinstance(error, urllib.error.URLError):
        if not isinstance(error.reason, BaseException):
            return _one_line(error.reason)
        error = error.reason
    return _one_line(getattr(error, "strerror", None) or str(error) or type(error).__name__)


def _error(kind: type[DataError], message: str, reason: str) -> DataError:
    """`kind(message)` carrying a short `reason` for the `auto` fallback's log line."""
    error = kind(message)
    error.reason = reason
    return error


def _download_error(url: str, dest: Path, reason: str, hint: str = _HINT) -> DataError:
    return _error(DownloadError, f"could not download {dest.name} from {url} ({reason}); {hint}",
                  f"could not download {url}: {reason}")


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/w2v-multi`, else `~/.cache/w2v-multi` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "w2v-multi"


def sha1_of(path: Path) -> str:
    """Hex sha1 of a file, read in chunks so memory stays flat."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha1: str | None, *, timeout: float = 30.0, log: Log = print,
             verify: Callable[[Path], None] | None = None, hint: str = _HINT) -> Path:
    """Stream `url` to `dest`; it appears only whole, with the expected sha1 (if given) and
    passing `verify(temporary)` (if given: it raises a DataError to refuse the file)."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part",
                                             dir=dest.parent)
    except OSError as error:
        raise DataError(f"cannot write to the cache folder {dest.parent} "
                        f"({_reason(error)}); {hint}") from None
    temporary_path = Path(temporary)
    log(f"downloading {url} to {dest}")
    try:
        digest, received, expected = hashlib.sha1(), 0, None
        with os.fdopen(handle, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    expected = int(length) if length and length.isdigit() else None
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
            except http.client.IncompleteRead as error:  # newer Pythons raise; 3.11 returns short
                received += len(error.partial)
            except (urllib.error.URLError, http.client.HTTPException, OSError,
                    ValueError) as error:
                raise _download_error(url, dest, _reason(error), hint) from None
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and received != expected:
            raise _download_error(url, dest, f"truncated: got {received} of {expected} bytes",
                                  hint)
        actual = digest.hexdigest()
        if sha1 is not None and actual != sha1:
            raise _error(ChecksumError, f"the download of {dest.name} from {url} has sha1 "
                         f"{actual}, expected {sha1}; removed it; {hint}",
                         f"the download from {url} has the wrong sha1 {actual}")
        if verify is not None:
            verify(temporary_path)
        os.replace(temporary_path, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary_path.unlink()
    return dest


_fetch = download  # `ptb_path`'s `download` flag shadows the function inside it


def _check_local(path: Path, sha1: str, origin: str) -> Path:
    """A user-given zip or folder, checked before any reading; returns what holds the splits."""
    if not path.exists():
        raise DataError(f"{origin} {path} does not exist; {_PTB_HINT}")
    _require_regular(path, origin)
    if path.is_dir():
        for folder in (path, path / "ptb"):  # the folder itself or the zip's extracted layout
            if (folder / "ptb.train.txt").is_file():
                return folder
        raise DataError(f"{origin} folder {path} holds no ptb.train.txt; {_PTB_HINT}")
    _zip_member(path, "train")  # a not-a-zip or a zip without PTB says so, not "bad sha1"
    actual = sha1_of(path)
    if actual != sha1:
        raise ChecksumError(f"{origin} {path} has sha1 {actual}, expected {sha1} (d2l's "
                            f"ptb.zip); to use another copy, give the folder holding its "
                            f"ptb.train.txt instead")
    return path


def ptb_path(data: str | None = None, *, download: bool = True, url: str | None = None,
             sha1: str = PTB_SHA1, log: Log = print) -> Path:
    """The PTB zip, or the folder holding `ptb.train.txt`: explicit > env > cache > download."""
    if data:
        return _check_local(Path(data).expanduser(), sha1, "--data")
    if os.environ.get(ENV_DATA):
        return _check_local(Path(os.environ[ENV_DATA]).expanduser(), sha1, ENV_DATA)
    cached = cache_dir() / "ptb.zip"
    if cached.is_file():
        actual = sha1_of(cached)
        if actual == sha1:
            return cached
        with contextlib.suppress(FileNotFoundError):
            cached.unlink()
        message = f"cached {cached} has sha1 {actual}, expected {sha1}; removed it"
        if not download:
            raise ChecksumError(f"{message}; {_HINT}")
        log(f"{message}; downloading again")
    if not download:
        raise _error(DataError, f"PTB not found (no --data, no {ENV_DATA}, no {cached}) and "
                     f"downloading is disabled; {_HINT}",
                     "not found locally and downloading is disabled")
    url = url or os.environ.get(ENV_URL) or PTB_URL
    return _fetch(url, cached, sha1, log=log)


def _zip_member(path: Path, split: str) -> str:
    """The archive member holding `ptb.<split>.txt` (normally `ptb/ptb.<split>.txt`)."""
    wanted = f"ptb.{split}.txt"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, NotImplementedError, ValueError) as error:
        raise DataError(f"{path} is not a readable zip archive ({_reason(error)}); "
                        f"{_PTB_HINT}") from None
    for name in [f"ptb/{wanted}"] + sorted(names):
        if name in names and name.rsplit("/", 1)[-1] == wanted:
            return name
    raise DataError(f"{path} holds no {wanted}; {_PTB_HINT}")


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8-sig")  # a BOM must not become part of the first token
    except UnicodeDecodeError as error:
        raise DataError(f"{source} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset "
                        f"{error.start}); re-encode it as UTF-8") from None


def _require_regular(path: Path, what: str) -> None:
    """A pipe, device or socket would block or never end: refuse it before opening it."""
    if path.exists() and not path.is_dir() and not path.is_file():
        raise DataError(f"{what} {path} is not a regular file (a pipe, device or socket); "
                        f"give a file on disk")


def _read_bytes(path: Path, source: str) -> bytes:
    _require_regular(path, "corpus")
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {source} ({_reason(error)})") from None


def _nonempty(corpus: Corpus) -> Corpus:
    if not any(corpus.sentences):
        raise DataError(f"corpus {corpus.source} holds no tokens (it is empty or whitespace "
                        f"only); give a file with one sentence per line")
    return corpus


def read_ptb(path: Path, split: str = "train") -> Corpus:
    """The chapter's `read_ptb`: every line of `ptb.<split>.txt`, split on whitespace.

    Like the chapter, lines come from `text.split('\\n')`, so the file's final newline yields
    one empty sentence: train has the chapter's 42,069 sentences, the last one empty (harmless:
    it has no centre/context pair).
    """
    path = Path(path)
    if path.is_dir():
        file = path / f"ptb.{split}.txt"
        source = str(file)
        if not file.is_file():
            raise DataError(f"folder {path} holds no ptb.{split}.txt; {_PTB_HINT}")
        raw = _read_bytes(file, source)
    else:
        member = _zip_member(path, split)
        source = f"{path}:{member}"
        try:
            with zipfile.ZipFile(path) as archive:
                raw = archive.read(member)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
            raise DataError(f"cannot read {source} ({_reason(error)}); the archive is "
                            f"damaged; {_PTB_HINT}") from None
    text = _decode(raw, source)
    return _nonempty(Corpus("ptb", [line.split() for line in text.split("\n")], source))


_WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")


def lee_path() -> Path:
    """gensim's `lee_background.cor`, found without importing gensim (it is slow to import)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.origin:
        raise DataError("the lee corpus needs gensim (pip install gensim); or give --data PATH "
                        "or W2V_PTB for PTB")
    path = Path(spec.origin).parent / "test" / "test_data" / "lee_background.cor"
    if not path.is_file():
        raise DataError(f"gensim's lee corpus is missing ({path}); reinstall gensim")
    return path


def read_lee() -> Corpus:
    """gensim's Lee corpus (300 news articles, ~60k words), one sentence per article.

    Raw news text has capitals, punctuation and digits; PTB is lowercase with punctuation
    stripped. Keeping lowercase alphabetic words (apostrophes inside kept) gives a comparable
    vocabulary, as gensim's own Lee tutorial does with `simple_preprocess`, without its
    2-15 character filter that would drop words such as "a".
    """
    path = lee_path()
    text = _decode(_read_bytes(path, str(path)), str(path)).lower()
    sentences = [words for words in map(_WORD.findall, text.splitlines()) if words]
    return _nonempty(Corpus("lee", sentences, str(path)))


def read_text(path: str | os.PathLike) -> Corpus:
    """Any UTF-8 text file, one sentence per line, whitespace tokens; blank lines skipped.

    Read whole (small files, tests); training streams files through `common.token_cache`.
    """
    file = Path(text_file_source(path).source)
    text = _decode(_read_bytes(file, str(file)), str(file))
    sentences = [words for words in map(str.split, text.splitlines()) if words]
    return _nonempty(Corpus(str(path), sentences, str(file)))


def has_split(corpus: str | Corpus, split: str) -> bool:
    """Whether `split` can exist for `corpus`: "train" always, "valid"/"test" for PTB, and
    "valid" for text8 (its held-out last tokens).

    "auto" counts as PTB; if it falls back to Lee, `load_corpus` raises for those splits.
    """
    name = corpus.name if isinstance(corpus, Corpus) else corpus
    return split == "train" or (split in SPLITS and name in ("ptb", "auto")) or \
        (split == "valid" and name == "text8")


def load_corpus(corpus: str = "auto", data: str | None = None, *, split: str = "train",
                download: bool = True, log: Log = print) -> Corpus:
    """Load "ptb", "lee", a text file, or "auto" (PTB, else Lee with one log line why).

    The names win over files of the same name: write `./lee` for a file called `lee`.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if corpus == "text8":  # 17M tokens as Python strings would take gigabytes
        raise ConfigError("text8 is streamed into the token cache, not read whole: use "
                          "common.data.load_encoded (as `w2v train --corpus text8` does)")
    if corpus in ("ptb", "auto"):
        explicit = bool(data or os.environ.get(ENV_DATA))
        try:
            # PTB_SHA1 is read now, not at definition, so tests can point it at a fake zip.
            return read_ptb(ptb_path(data, download=download, sha1=PTB_SHA1, log=log), split)
        except DataError as error:
            # A source the user named must work; only "no local copy and no network" falls back.
            if corpus == "ptb" or explicit:
                raise
            reason = getattr(error, "reason", None) or str(error)
            if split != "train":
                raise DataError(f"the {split} split exists only for PTB, which is unavailable "
                                f"({reason}); {_HINT}") from None
        log(f"PTB unavailable ({_one_line(reason)}); training on gensim's lee corpus "
            f"instead — give --data PATH or set {ENV_DATA}")
        corpus = "lee"
    if split != "train":
        raise DataError(f"corpus {corpus} has only a train split, not {split!r}; the valid and "
                        f"test splits exist only for ptb")
    return read_lee() if corpus == "lee" else read_text(corpus)


# -- text8 ------------------------------------------------------------------------------------


class TextSource(NamedTuple):
    """A text read as a stream: how to open its bytes, what to call it, its sha256 if known."""

    name: str
    open_binary: Callable[[], IO[bytes]]
    source: str
    sha256: str | None = None


def _text8_opener(path: Path) -> tuple[Callable[[], IO[bytes]], str]:
    """How to read text8's bytes from the zip (its `text8` member, streamed) or the file."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as error:
            raise DataError(f"{path} is not a readable zip archive ({_reason(error)}); "
                            f"{_TEXT8_HINT}") from None
        if TEXT8_MEMBER not in names:
            raise DataError(f"{path} holds no {TEXT8_MEMBER}; {_TEXT8_HINT}")

        def open_member() -> IO[bytes]:
            archive = zipfile.ZipFile(path)
            member = archive.open(TEXT8_MEMBER)
            member_close = member.close

            def close() -> None:  # closing the member closes the archive too
                member_close()
                archive.close()

            member.close = close  # type: ignore[method-assign]
            return member

        return open_member, f"{path}:{TEXT8_MEMBER}"
    return (lambda: open(path, "rb")), str(path)


def _verified_text8(path: Path, origin: str) -> TextSource:
    """text8 at `path` (zip or file), its content's sha256 checked; a zip's damage is a
    DataError."""
    from common.token_cache import content_sha256

    opener, source = _text8_opener(path)
    try:
        actual = content_sha256(opener, source)
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise DataError(f"cannot read {source} ({_reason(error)}); the archive is damaged; "
                        f"{_TEXT8_HINT}") from None
    if actual != TEXT8_SHA256:
        raise _error(ChecksumError, f"{origin} {source} has sha256 {actual}, expected "
                     f"{TEXT8_SHA256} (mattmahoney.net's text8); to train on another text, "
                     f"give it as --corpus FILE", f"{source} has the wrong sha256 {actual}")
    return TextSource("text8", opener, source, actual)


def text8_source(data: str | None = None, *, download: bool = True, log: Log = print) -> TextSource:
    """text8, verified: `--data` > env W2V_TEXT8 > the cache's text8.zip > a download."""
    for given, origin in ((data, "--data"), (os.environ.get(ENV_TEXT8), ENV_TEXT8)):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise DataError(f"{origin} {path} is not a file; {_TEXT8_HINT}")
            return _verified_text8(path, origin)
    cached = cache_dir() / "text8.zip"
    if cached.is_file():
        try:
            return _verified_text8(cached, "cached")
        except DataError as error:
            with contextlib.suppress(FileNotFoundError):
                cached.unlink()
            if not download:
                raise DataError(f"{_one_line(error)}; removed it; {_TEXT8_HINT}") from None
            log(f"{_one_line(error)}; removed it, downloading again")
    if not download:
        raise DataError(f"text8 not found (no --data, no {ENV_TEXT8}, no {cached}) and "
                        f"downloading is disabled; {_TEXT8_HINT}")
    url = os.environ.get(ENV_TEXT8_URL) or TEXT8_URL

    def verify(temporary: Path) -> None:
        try:
            _verified_text8(temporary, "the download of")
        except DataError as error:
            raise _error(ChecksumError, f"{_one_line(error)}; removed it; {_TEXT8_HINT}",
                         "the download is not text8") from None

    _fetch(url, cached, None, log=log, verify=verify, hint=_TEXT8_HINT)
    return _verified_text8(cached, "cached")


def text_file_source(path: str | os.PathLike) -> TextSource:
    """A UTF-8 text file, one sentence per line, to be read as a stream."""
    file = Path(path).expanduser()
    if not file.exists():
        raise DataError(f"corpus file {file} does not exist; give a UTF-8 text file, or one "
                        f"of {', '.join(NAMES)}")
    if file.is_dir():
        raise DataError(f"corpus {file} is a folder, not a text file; for a PTB folder use "
                        f"--data {file}")
    _require_regular(file, "corpus")
    return TextSource(str(path), lambda: open(file, "rb"), str(file))
