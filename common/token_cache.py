"""Corpora read as a stream: one vocabulary pass, then a memory-mapped token cache.

A text file (one sentence per line) or text8 (one line, cut into sentences of a fixed length)
is never held as Python strings. The vocabulary is counted in one streaming pass over the
text; the tokens are then encoded chunk by chunk into a cache file that holds the whole
corpus as one int32 array (plus sentence offsets and the vocabulary), and training reads that
array memory-mapped, so a corpus larger than memory works.

The cache file is named by a key over the corpus's content (its sha256), the vocabulary's
settings and the layout; its header repeats them with the vocabulary's digest, and a file
whose header, size or arrays do not match what this corpus needs is rebuilt, never used. It
is written to a temporary file and renamed into place only when complete, so an interrupt
(Ctrl-C included) or a full disk never leaves a file that looks complete.
"""
from __future__ import annotations

import codecs
import collections
import contextlib
import hashlib
import itertools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, NamedTuple

import numpy as np

from common.errors import DataError
from common.vocab import EncodedCorpus, Vocab

CACHE_FORMAT = 1
_MAGIC = b"W2VTOKENS\n"
_CHUNK = 1 << 22  # 4 MiB of text at a time
_ALIGN = 64

Log = Callable[[str], object]


@dataclass(frozen=True)
class TextLayout:
    """How a text becomes sentences: lines, or fixed-length pieces (text8's 1,000 tokens),
    and how many tokens at the end are held out for validation (0: none)."""

    sentence_length: int | None = None  # None: one sentence per line, blank lines skipped
    heldout_tokens: int = 0


class StreamedCorpus(NamedTuple):
    """A corpus from the token cache: vocabulary, training split, held-out split (or None)."""

    name: str
    source: str
    vocab: Vocab
    train: EncodedCorpus
    valid: EncodedCorpus | None
    cache: Path


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def content_sha256(open_binary: Callable[[], IO[bytes]], source: str) -> str:
    """sha256 of a stream's bytes, read in chunks: the corpus's identity in the cache key."""
    digest = hashlib.sha256()
    try:
        with open_binary() as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as error:
        raise DataError(f"cannot read {source} ({_one_line(error.strerror or error)})") from None
    return digest.hexdigest()


def _decoded_chunks(open_binary: Callable[[], IO[bytes]], source: str) -> Iterator[str]:
    """The stream as text, 4 MiB at a time; a non-UTF-8 byte is a one-line DataError."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    offset = 0
    try:
        with open_binary() as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                try:
                    yield decoder.decode(chunk)
                except UnicodeDecodeError as error:
                    raise DataError(f"{source} is not UTF-8 text (byte 0x{chunk[error.start]:02x}"
                                    f" at offset {offset + error.start}); re-encode it as "
                                    f"UTF-8") from None
                offset += len(chunk)
            yield decoder.decode(b"", final=True)
    except OSError as error:
        raise DataError(f"cannot read {source} ({_one_line(error.strerror or error)})") from None


def sentence_pieces(open_binary: Callable[[], IO[bytes]], source: str,
                    layout: TextLayout) -> Iterator[tuple[list[str], list[int]]]:
    """(tokens, sentence lengths) a chunk at a time; lengths are None-free only for lines.

    Lines: each non-blank line is a sentence. Fixed length: tokens only (lengths empty), the
    caller cuts them; a token cut by a chunk boundary is carried into the next chunk.
    """
    carry = ""
    for text in _decoded_chunks(open_binary, source):
        text = carry + text
        if layout.sentence_length is None:
            cut = text.rfind("\n") + 1
            text, carry = text[:cut], text[cut:]
            tokens: list[str] = []
            lengths: list[int] = []
            for line in text.split("\n"):
                words = line.split()
                if words:
                    tokens += words
                    lengths.append(len(words))
            yield tokens, lengths
        else:
            cut = len(text)
            while cut and not text[cut - 1].isspace():
                cut -= 1
            text, carry = text[:cut], text[cut:]
            yield text.split(), []
    if carry.split():
        words = carry.split()
        yield words, ([len(words)] if layout.sentence_length is None else [])


def _fixed_offsets(start: int, stop: int, length: int) -> np.ndarray:
    """Offsets of tokens [start, stop) cut into sentences of `length` (the last shorter)."""
    cuts = np.arange(start, stop, length, dtype=np.int64)
    return np.concatenate([cuts, [stop]]).astype(np.int64)


def count_tokens(open_binary: Callable[[], IO[bytes]], source: str, layout: TextLayout) -> int:
    """Tokens of the text, as the other passes split them (a pass of its own)."""
    return sum(len(tokens) for tokens, _ in sentence_pieces(open_binary, source, layout))


def count_vocab(open_binary: Callable[[], IO[bytes]], source: str, layout: TextLayout,
                train_tokens: int | None, min_freq: int) -> tuple[Vocab, int, int]:
    """The vocabulary of the first `train_tokens` tokens (None: all), in one streaming pass;
    and the tokens and sentences (lines) of the whole text."""
    counter: collections.Counter[str] = collections.Counter()
    seen = sentences = 0
    limit = train_tokens if train_tokens is not None else float("inf")
    for tokens, lengths in sentence_pieces(open_binary, source, layout):
        sentences += len(lengths)
        if seen < limit:
            counter.update(tokens[:int(limit) - seen] if seen + len(tokens) > limit
                           else tokens)
        seen += len(tokens)
    return Vocab.from_counter(counter, min_freq), seen, sentences


def cache_key(identity: str, layout: TextLayout, min_freq: int, vocab_digest: str = "") -> str:
    """What the cache file is named by: the corpus content, the layout, the vocabulary (its
    settings, or the digest of one given whole) and the format."""
    spec = json.dumps({"identity": identity, "sentence_length": layout.sentence_length,
                       "heldout_tokens": layout.heldout_tokens, "min_freq": min_freq,
                       "vocab": vocab_digest, "format": CACHE_FORMAT}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()


def _header_bytes(header: dict) -> bytes:
    text = json.dumps(header, sort_keys=True).encode("utf-8")
    prefix = len(_MAGIC) + 8
    padded = -(-(prefix + len(text)) // _ALIGN) * _ALIGN
    return _MAGIC + np.uint64(padded - prefix).tobytes() + text.ljust(padded - prefix, b" ")


def _write_cache(path: Path, header: dict, write_arrays: Callable[[IO[bytes]], None]) -> None:
    """Header, then the arrays, into a temporary file renamed to `path` once whole."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part",
                                             dir=path.parent)
    except OSError as error:
        raise DataError(f"cannot write the token cache in {path.parent} "
                        f"({_one_line(error.strerror or error)}); make it writable or point "
                        f"XDG_CACHE_HOME at a writable folder") from None
    temporary_path = Path(temporary)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(_header_bytes(header))
            write_arrays(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary_path, path)
    except OSError as error:
        raise DataError(f"cannot write the token cache {path} "
                        f"({_one_line(error.strerror or error)}); free space or point "
                        f"XDG_CACHE_HOME at another folder; nothing was left behind") from None
    finally:  # also on Ctrl-C: no half-written file survives, under any name
        with contextlib.suppress(FileNotFoundError):
            temporary_path.unlink()


def build_cache(path: Path, open_binary: Callable[[], IO[bytes]], source: str,
                layout: TextLayout, *, identity: str, min_freq: int,
                vocab: Vocab | None = None, log: Log = print) -> None:
    """Count the vocabulary (one pass), then encode every token into the cache (a second).

    With held-out tokens the split point needs the token count first (one more pass).
    """
    train_tokens = None
    if layout.heldout_tokens:
        total_tokens = count_tokens(open_binary, source, layout)
        if total_tokens <= layout.heldout_tokens:
            raise DataError(f"{source} has {total_tokens:,} tokens, not more than the "
                            f"{layout.heldout_tokens:,} held out for validation: give the "
                            f"whole corpus")
        train_tokens = total_tokens - layout.heldout_tokens
    counted, total_tokens, num_lines = count_vocab(open_binary, source, layout, train_tokens,
                                                   min_freq)
    vocab = vocab or counted
    if total_tokens == 0:
        raise DataError(f"corpus {source} holds no tokens (it is empty or whitespace only); "
                        f"give a file with one sentence per line")
    train_tokens = total_tokens if train_tokens is None else train_tokens
    if layout.sentence_length is None:
        offsets = None
    else:
        offsets = np.concatenate([
            _fixed_offsets(0, train_tokens, layout.sentence_length),
            _fixed_offsets(train_tokens, total_tokens, layout.sentence_length)[1:]
            if layout.heldout_tokens else np.zeros(0, dtype=np.int64)])
    num_sentences = num_lines if offsets is None else len(offsets) - 1
    train_sentences = num_sentences if offsets is None else \
        int(np.searchsorted(offsets, train_tokens))
    header = {"format": CACHE_FORMAT, "identity": identity, "min_freq": min_freq,
              "given_vocab": vocab is not counted,
              "sentence_length": layout.sentence_length,
              "heldout_tokens": layout.heldout_tokens, "tokens": total_tokens,
              "sentences": num_sentences, "train_sentences": train_sentences,
              "vocab_digest": vocab.digest(), "vocab_tokens": vocab.idx_to_token,
              "vocab_counts": vocab.counts.tolist()}
    lookup = vocab.token_to_idx

    def write_arrays(out: IO[bytes]) -> None:
        written, lengths = 0, []
        for tokens, line_lengths in sentence_pieces(open_binary, source, layout):
            ids = np.fromiter(map(lookup.get, tokens, itertools.repeat(0)), dtype=np.int32,
                              count=len(tokens))
            out.write(ids.tobytes())
            written += len(ids)
            lengths.append(np.asarray(line_lengths, dtype=np.int64))
        if written != total_tokens:
            raise DataError(f"{source} changed while it was read ({written:,} tokens, "
                            f"{total_tokens:,} before): read it again")
        stored = offsets
        if stored is None:
            stored = np.zeros(num_sentences + 1, dtype=np.int64)
            np.cumsum(np.concatenate(lengths), out=stored[1:])
        out.write(stored.astype("<i8").tobytes())

    log(f"building the token cache {path} ({total_tokens:,} tokens, vocabulary "
        f"{len(vocab):,})")
    _write_cache(path, header, write_arrays)


def _invalid(path: Path, reason: str) -> DataError:
    return DataError(f"{path} {reason}")


def open_cache(path: Path, *, identity: str, layout: TextLayout, min_freq: int,
               vocab_digest: str | None = None) -> tuple[dict, Vocab, np.ndarray, np.ndarray]:
    """Header, vocabulary, tokens (memory-mapped) and offsets of a valid cache file.

    Anything that does not match (header, size, vocabulary digest, offsets, token range)
    raises DataError; the caller rebuilds.
    """
    with open(path, "rb") as handle:
        if handle.read(len(_MAGIC)) != _MAGIC:
            raise _invalid(path, "is not a token cache")
        size = int(np.frombuffer(handle.read(8), dtype=np.uint64)[0])
        try:
            header = json.loads(handle.read(size))
        except ValueError:
            raise _invalid(path, "has a damaged header") from None
    expected = {"format": CACHE_FORMAT, "identity": identity, "min_freq": min_freq,
                "sentence_length": layout.sentence_length,
                "heldout_tokens": layout.heldout_tokens}
    if any(header.get(key) != value for key, value in expected.items()):
        raise _invalid(path, "was made from another corpus or with other settings")
    start = len(_MAGIC) + 8 + size
    tokens, sentences = int(header["tokens"]), int(header["sentences"])
    if path.stat().st_size != start + 4 * tokens + 8 * (sentences + 1):
        raise _invalid(path, "has the wrong size (truncated or changed)")
    vocab = Vocab.from_counts(header["vocab_tokens"], header["vocab_counts"])
    if vocab.digest() != header["vocab_digest"] or \
            (vocab_digest is not None and vocab_digest != header["vocab_digest"]):
        raise _invalid(path, "holds another vocabulary than its header says")
    ids = np.memmap(path, dtype="<i4", mode="r", offset=start, shape=(tokens,))
    offsets = np.fromfile(path, dtype="<i8", count=sentences + 1, offset=start + 4 * tokens)
    if offsets[0] != 0 or offsets[-1] != tokens or (np.diff(offsets) < 0).any():
        raise _invalid(path, "has damaged sentence offsets")
    for begin in range(0, tokens, 1 << 24):  # in chunks: the pages stay file-backed
        part = ids[begin:begin + (1 << 24)]
        if part.min() < 0 or part.max() >= len(vocab):
            raise _invalid(path, "holds word ids outside its vocabulary")
    return header, vocab, ids, offsets


def _split(ids: np.ndarray, offsets: np.ndarray, first: int, last: int) -> EncodedCorpus:
    """Sentences [first, last) as an EncodedCorpus over a view of the mapped tokens."""
    begin, end = int(offsets[first]), int(offsets[last])
    return EncodedCorpus(ids[begin:end], offsets[first:last + 1] - begin)


def load_streamed(name: str, open_binary: Callable[[], IO[bytes]], source: str,
                  layout: TextLayout, *, min_freq: int, cache_folder: Path,
                  identity: str | None = None, vocab: Vocab | None = None,
                  log: Log = print) -> StreamedCorpus:
    """The corpus from its cache, building (or rebuilding) the cache when needed.

    `vocab` imposes a vocabulary (another corpus's: the benchmarks compare corpus lengths at
    one vocabulary) instead of the one `min_freq` gives; it is part of the key.

    `identity` is the content's sha256 when the caller has it already (text8's checksum
    pass); else it is computed here in one pass.
    """
    digest = identity or content_sha256(open_binary, source)
    given = vocab.digest() if vocab is not None else None
    key = cache_key(digest, layout, min_freq, given or "")
    path = cache_folder / f"{Path(name).name}-{key[:20]}.tokens"
    opened = None
    if path.is_file():
        try:
            opened = open_cache(path, identity=digest, layout=layout, min_freq=min_freq,
                                vocab_digest=given)
        except (DataError, OSError, ValueError, KeyError, TypeError) as error:
            log(f"token cache {path} is unusable ({_one_line(error)}); rebuilding it")
    if opened is None:
        build_cache(path, open_binary, source, layout, identity=digest, min_freq=min_freq,
                    vocab=vocab, log=log)
        opened = open_cache(path, identity=digest, layout=layout, min_freq=min_freq,
                            vocab_digest=given)
    header, vocab, ids, offsets = opened
    train_sentences, sentences = int(header["train_sentences"]), int(header["sentences"])
    train = _split(ids, offsets, 0, train_sentences)
    valid = _split(ids, offsets, train_sentences, sentences) if layout.heldout_tokens else None
    return StreamedCorpus(name, source, vocab, train, valid, path)


