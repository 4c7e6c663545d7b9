"""The project's expected failures.

Every failure a user can cause (a bad flag, a missing file, an unknown word) is a
`W2VError`; the CLI prints it as one line and exits with its `exit_code`. Anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations


class W2VError(Exception):
    """Base of every expected failure; `str(error)` is the one line the user sees."""

    exit_code: int = 1


class ConfigError(W2VError):
    """An invalid hyperparameter, flag or output folder (a usage error: exit 2)."""

    exit_code = 2


class ResourceError(ConfigError):
    """Sizes whose tables, optimiser state or batches cannot fit in the memory available.

    A usage error (exit 2): the flags chose the sizes. A sweep marks such a point failed and
    trains the others.
    """


class DataError(W2VError):
    """A corpus, archive, vocabulary or run folder that cannot be used."""

    exit_code = 1


class RunInUseError(W2VError):
    """Another training holds the run folder's lock."""

    exit_code = 1


class Interrupted(W2VError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; exit 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP outside training (reading, exporting, evaluating): stop like Ctrl-C.

    A KeyboardInterrupt, so every cleanup that Ctrl-C runs runs for these too; the CLI
    prints one line and exits 128 + `signum`.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class DownloadError(DataError):
    """The corpus could not be fetched (no network, HTTP error, truncated body)."""


class ChecksumError(DataError):
    """A downloaded or given file does not have the expected sha1."""


class UnknownWordError(W2VError):
    """A query word is not in the vocabulary."""

    exit_code = 2


class UnknownBackendError(W2VError):
    """A backend name the registry does not know."""

    exit_code = 2


class BackendUnavailableError(W2VError):
    """A known backend whose framework is not installed in this environment."""

    exit_code = 2


class DeviceError(W2VError):
    """A device the machine or the framework does not offer."""

    exit_code = 2
