"""Corpus loading: PTB resolution, download, verification, every bad input, Lee and text files.

Downloads go to a local HTTP server on 127.0.0.1 serving a small fake `ptb.zip`; the cache is
a temporary folder (XDG_CACHE_HOME), so the user's real cache and the network are never touched.
The real PTB is read only through `W2V_PTB` (the `ptb_data` fixture in conftest).
"""
from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from common import corpus
from common.corpus import has_split, load_corpus, ptb_path, read_ptb, sha1_of
from common.errors import ChecksumError, ConfigError, DataError, DownloadError

SPLIT_TEXT = {
    "train": " the cat sat \n on the mat \n\n the end \n",
    "valid": " a b \n",
    "test": " c d e \n",
}


def make_zip(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return buffer.getvalue()


FAKE = make_zip({f"ptb/ptb.{split}.txt": text for split, text in SPLIT_TEXT.items()})
FAKE_SHA1 = hashlib.sha1(FAKE).hexdigest()
CORRUPT = FAKE[:-5] + bytes(b ^ 0xFF for b in FAKE[-5:])
TRAIN_SENTENCES = [line.split() for line in SPLIT_TEXT["train"].split("\n")]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.routes[path] = (status, body, declared length or None)`."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.hits.append(self.path)
        status, body, length = self.server.routes.get(self.path, (404, b"not found", None))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)  # HTTP/1.0: the connection closes, short of a lying length

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    """A local HTTP server on a free port, shut down after the module."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.routes = {
        "/ptb.zip": (200, FAKE, None),
        "/corrupt.zip": (200, CORRUPT, None),
        "/truncated.zip": (200, FAKE[:100], len(FAKE)),
    }
    httpd.hits = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def refused_url() -> str:
    """A URL on a port nothing listens on: the connection is refused, like having no network."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/ptb.zip"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache, no W2V_PTB / W2V_PTB_URL from the caller, no proxy for 127.0.0.1."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in (corpus.ENV_DATA, corpus.ENV_URL, "http_proxy", "HTTP_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    # A safety net: a test that forgets to pick a URL must not reach the real one.
    monkeypatch.setattr(corpus, "PTB_URL", "http://127.0.0.1:9/ptb.zip")
    return tmp_path / "xdg" / "w2v-multi"


@pytest.fixture
def fake_sha1(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make `load_corpus` accept the fake zip as PTB."""
    monkeypatch.setattr(corpus, "PTB_SHA1", FAKE_SHA1)
    return FAKE_SHA1


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def ptb_folder(root: Path, train: str = SPLIT_TEXT["train"]) -> Path:
    for split, text in {**SPLIT_TEXT, "train": train}.items():
        write(root / f"ptb.{split}.txt", text)
    return root


# --- cache location -------------------------------------------------------------------------

def test_cache_dir_follows_xdg_then_home(monkeypatch, tmp_path, isolated):
    assert corpus.cache_dir() == isolated
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert corpus.cache_dir() == tmp_path / "home" / ".cache" / "w2v-multi"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid per the XDG spec
    assert corpus.cache_dir() == tmp_path / "home" / ".cache" / "w2v-multi"


# --- download ---------------------------------------------------------------------------------

def test_download_streams_verifies_and_renames(server, isolated):
    lines: list[str] = []
    dest = corpus.download(f"{server.url}/ptb.zip", isolated / "ptb.zip", FAKE_SHA1,
                           log=lines.append)
    assert dest.read_bytes() == FAKE and sha1_of(dest) == FAKE_SHA1
    assert sorted(p.name for p in isolated.iterdir()) == ["ptb.zip"]  # no temporary left
    assert len(lines) == 1 and server.url in lines[0]


@pytest.mark.parametrize("route, error_type, words", [
    ("/corrupt.zip", ChecksumError, ["sha1", FAKE_SHA1, "removed"]),
    ("/truncated.zip", DownloadError, ["truncated", f"of {len(FAKE)} bytes"]),
    ("/missing.zip", DownloadError, ["HTTP 404"]),
])
def test_bad_download_leaves_nothing(server, isolated, route, error_type, words):
    with pytest.raises(error_type) as error:
        corpus.download(server.url + route, isolated / "ptb.zip", FAKE_SHA1, log=lambda _: None)
    message = one_line(error)
    assert all(word in message for word in words) and "--data" in message
    assert list(isolated.iterdir()) == []


def test_no_network_is_a_download_error(refused_url, isolated):
    with pytest.raises(DownloadError) as error:
        corpus.download(refused_url, isolated / "ptb.zip", FAKE_SHA1, log=lambda _: None)
    message = one_line(error)
    assert message.startswith(f"could not download ptb.zip from {refused_url} (")
    assert "refused" in message.lower() and "W2V_PTB" in message
    assert list(isolated.iterdir()) == []


# --- resolution order ---------------------------------------------------------------------------

def test_resolution_order_explicit_env_cache_download(server, tmp_path, isolated, monkeypatch):
    explicit, env = ptb_folder(tmp_path / "explicit"), ptb_folder(tmp_path / "env")
    monkeypatch.setenv(corpus.ENV_DATA, str(env))
    url = f"{server.url}/ptb.zip"
    quiet = {"url": url, "sha1": FAKE_SHA1, "log": lambda _: None}
    assert ptb_path(str(explicit), **quiet) == explicit
    assert ptb_path(**quiet) == env
    monkeypatch.delenv(corpus.ENV_DATA)
    hits = len(server.hits)
    downloaded = ptb_path(**quiet)  # nothing cached yet: downloads into the cache
    assert downloaded == isolated / "ptb.zip" and server.hits[hits:] == ["/ptb.zip"]
    assert ptb_path(**quiet) == downloaded and len(server.hits) == hits + 1  # cached now
    assert ptb_path(str(explicit), **quiet) == explicit  # explicit still wins over the cache


def test_url_from_environment(server, monkeypatch, isolated, fake_sha1):
    monkeypatch.setenv(corpus.ENV_URL, f"{server.url}/ptb.zip")
    assert ptb_path(sha1=fake_sha1, log=lambda _: None) == isolated / "ptb.zip"
    assert load_corpus("ptb", log=lambda _: None).sentences == TRAIN_SENTENCES


def test_corrupt_cache_is_replaced(server, isolated):
    write(isolated / "ptb.zip", CORRUPT)
    lines: list[str] = []
    assert ptb_path(url=f"{server.url}/ptb.zip", sha1=FAKE_SHA1, log=lines.append).read_bytes() \
        == FAKE
    assert "removed it" in lines[0]


def test_corrupt_cache_without_download(isolated):
    write(isolated / "ptb.zip", CORRUPT)
    with pytest.raises(ChecksumError) as error:
        ptb_path(download=False, sha1=FAKE_SHA1)
    assert str(isolated / "ptb.zip") in one_line(error)
    assert not (isolated / "ptb.zip").exists()


def test_nothing_local_and_no_download(isolated):
    with pytest.raises(DataError) as error:
        ptb_path(download=False)
    assert "downloading is disabled" in one_line(error)


# --- user-given PTB ------------------------------------------------------------------------------

def test_user_zip_with_wrong_sha1(tmp_path):
    given = write(tmp_path / "my.zip", FAKE)
    with pytest.raises(ChecksumError) as error:
        ptb_path(str(given))  # checked against the real PTB sha1
    message = one_line(error)
    assert str(given) in message and corpus.PTB_SHA1 in message and "folder" in message
    assert given.exists()  # a user's file is never deleted


def test_extracted_folder_bypasses_sha1(tmp_path):
    with zipfile.ZipFile(io.BytesIO(FAKE)) as archive:
        archive.extractall(tmp_path / "data")
    # Both the folder holding ptb.train.txt and its parent (the zip's layout) are accepted.
    assert ptb_path(str(tmp_path / "data")) == tmp_path / "data" / "ptb"
    loaded = load_corpus("ptb", str(tmp_path / "data" / "ptb"), split="test")
    assert loaded.sentences == [["c", "d", "e"], []]


@pytest.mark.parametrize("data, words", [
    (b"this is not a zip", ["not a readable zip"]),
    (make_zip({"other/readme.txt": "x"}), ["holds no ptb.train.txt"]),
])
def test_bad_archives(tmp_path, data, words):
    given = write(tmp_path / "ptb.zip", data)
    with pytest.raises(DataError) as error:
        ptb_path(str(given), sha1=hashlib.sha1(data).hexdigest())
    message = one_line(error)
    assert str(given) in message and all(word in message for word in words)


def test_damaged_member_is_a_data_error(tmp_path):
    damaged = bytearray(FAKE)
    start = damaged.index(b" the cat")  # stored uncompressed: flip a byte of the train text
    damaged[start] ^= 0x01
    given = write(tmp_path / "ptb.zip", bytes(damaged))
    with pytest.raises(DataError) as error:
        read_ptb(given)
    assert "damaged" in one_line(error)


def test_folder_without_ptb(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as error:
        ptb_path(str(tmp_path / "empty"))
    assert "holds no ptb.train.txt" in one_line(error)


@pytest.mark.parametrize("via_env", [False, True])
def test_missing_path(tmp_path, monkeypatch, via_env):
    missing = tmp_path / "nowhere" / "ptb.zip"
    if via_env:
        monkeypatch.setenv(corpus.ENV_DATA, str(missing))
    with pytest.raises(DataError) as error:
        load_corpus("auto", None if via_env else str(missing), log=lambda _: None)
    message = one_line(error)  # a named source must work: no fallback to lee
    assert str(missing) in message and "does not exist" in message
    assert ("W2V_PTB" if via_env else "--data") in message


# --- reading ----------------------------------------------------------------------------------

def test_read_ptb_follows_the_chapter(tmp_path, fake_sha1):
    zipped = load_corpus("ptb", str(write(tmp_path / "ptb.zip", FAKE)))
    assert zipped.name == "ptb" and zipped.sentences == TRAIN_SENTENCES
    assert zipped.source.endswith("ptb.zip:ptb/ptb.train.txt")
    # The chapter splits on "\n": the final newline gives a trailing empty sentence.
    assert zipped.sentences[-1] == [] and len(zipped.sentences) == SPLIT_TEXT["train"].count("\n") + 1
    assert load_corpus("ptb", str(tmp_path / "ptb.zip"), split="valid").sentences == [["a", "b"], []]
    folder = load_corpus("ptb", str(ptb_folder(tmp_path / "folder")))
    assert folder.sentences == zipped.sentences


@pytest.mark.parametrize("text", ["", "  \n\t\n \n"])
def test_empty_corpora(tmp_path, text):
    with pytest.raises(DataError) as error:
        load_corpus(str(write(tmp_path / "empty.txt", text)))
    assert "holds no tokens" in one_line(error)
    with pytest.raises(DataError) as error:
        load_corpus("ptb", str(ptb_folder(tmp_path / "ptb", train=text)))
    assert "ptb.train.txt" in one_line(error)


def test_non_utf8(tmp_path):
    bad = write(tmp_path / "latin1.txt", "caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError) as error:
        load_corpus(str(bad))
    message = one_line(error)
    assert str(bad) in message and "UTF-8" in message and "0xe9" in message


def test_text_file(tmp_path):
    text = "\ufeffHello  world\n\n   \n caf\u00e9\tau lait \r\nlast"
    loaded = load_corpus(str(write(tmp_path / "mine.txt", text)))
    assert loaded.sentences == [["Hello", "world"], ["caf\u00e9", "au", "lait"], ["last"]]
    assert loaded.name == str(tmp_path / "mine.txt") and not has_split(loaded, "valid")


def test_missing_or_folder_text_corpus(tmp_path):
    with pytest.raises(DataError) as error:
        load_corpus(str(tmp_path / "absent.txt"))
    assert "does not exist" in one_line(error)
    with pytest.raises(DataError) as error:
        load_corpus(str(tmp_path))
    assert "is a folder" in one_line(error)


def test_lee_loads():
    lee = load_corpus("lee")
    assert lee.name == "lee" and len(lee.sentences) == 300 and all(lee.sentences)
    tokens = [token for sentence in lee.sentences for token in sentence]
    assert len(tokens) > 50_000 and all(token.islower() and token.isalpha() or "'" in token
                                        for token in tokens)
    assert Path(lee.source).name == "lee_background.cor"


# --- corpus choice and splits -----------------------------------------------------------------

def test_auto_falls_back_to_lee_with_one_line(refused_url, monkeypatch, isolated):
    monkeypatch.setenv(corpus.ENV_URL, refused_url)
    lines: list[str] = []
    loaded = load_corpus("auto", log=lines.append)
    assert loaded.name == "lee"
    why = [line for line in lines if line.startswith("PTB unavailable")]
    assert len(why) == 1 and lines[-1] == why[0] and "\n" not in why[0]
    assert refused_url in why[0] and "--data PATH" in why[0] and "W2V_PTB" in why[0]
    assert lines[:-1] == [f"downloading {refused_url} to {isolated / 'ptb.zip'}"]
    assert not isolated.exists() or list(isolated.iterdir()) == []


def test_auto_without_download_falls_back_quietly(isolated):
    lines: list[str] = []
    assert load_corpus("auto", download=False, log=lines.append).name == "lee"
    assert len(lines) == 1 and "downloading is disabled" in lines[0]


def test_auto_uses_ptb_when_it_can(server, monkeypatch, fake_sha1):
    monkeypatch.setenv(corpus.ENV_URL, f"{server.url}/ptb.zip")
    assert load_corpus("auto", log=lambda _: None).name == "ptb"


def test_ptb_is_mandatory_when_named(refused_url, monkeypatch):
    monkeypatch.setenv(corpus.ENV_URL, refused_url)
    with pytest.raises(DownloadError) as error:
        load_corpus("ptb", log=lambda _: None)
    assert refused_url in one_line(error)


def test_splits(tmp_path, isolated):
    assert has_split("ptb", "valid") and has_split("auto", "test") and has_split("lee", "train")
    assert not has_split("lee", "valid") and not has_split("ptb", "dev")
    with pytest.raises(ConfigError):
        load_corpus("lee", split="dev")
    with pytest.raises(DataError) as error:
        load_corpus("lee", split="valid")
    assert "only a train split" in one_line(error)
    with pytest.raises(DataError) as error:  # auto cannot answer valid with lee's train
        load_corpus("auto", split="valid", download=False, log=lambda _: None)
    assert "exists only for PTB" in one_line(error)


@pytest.mark.parametrize("case", ["checksum", "download"])
def test_corpus_errors_reach_the_cli_as_one_line(case, tmp_path, isolated, capsys):
    """A wrong PTB zip (ChecksumError) and an unreachable download (DownloadError) end
    `w2v train` with their one line and a non-zero code, before anything is written."""
    from common.cli import main

    if case == "checksum":
        data, fragment = ["--data", str(write(tmp_path / "my.zip", FAKE))], "sha1"
    else:
        data, fragment = [], "could not download"
    code = main(["train", "--backend", "numpy", "--corpus", "ptb", *data,
                 "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("w2v: error: "), err
    assert fragment in err[0]
    assert not list((tmp_path / "run").glob("*"))  # no config or checkpoint passes for a run


# --- the real PTB (W2V_PTB) ---------------------------------------------------------------------

def test_real_ptb(ptb_data, monkeypatch):
    if ptb_data.is_file():
        assert sha1_of(ptb_data) == corpus.PTB_SHA1
    monkeypatch.setenv(corpus.ENV_DATA, str(ptb_data))
    train = load_corpus("auto", log=pytest.fail)  # found through W2V_PTB: no log, no fallback
    assert train.name == "ptb" and len(train.sentences) == 42_069
    assert sum(map(len, train.sentences)) == 887_521
    assert len(load_corpus("ptb", str(ptb_data), split="valid").sentences) == 3_371
