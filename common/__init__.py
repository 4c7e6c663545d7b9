"""Framework-neutral half of w2v-multi: data, configuration, training driver, evaluation.

Importing this package imports no deep-learning framework (tested).
"""
from common.errors import (  # noqa: F401  (re-exported for users)
    BackendUnavailableError,
    ConfigError,
    DataError,
    UnknownBackendError,
    W2VError,
)
