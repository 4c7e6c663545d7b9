"""The held-out loss: the training objective on PTB's validation split, with no update.

The validation examples are built once, as the chapter builds its training set (subsample,
random windows, noise words from the training counts**0.75), from a stream seeded by the
run's seed but independent of the training stream, so that every epoch (and every run with
that seed, in any backend) is scored on the very same examples and noise words. The figure
is the all-example mean of the per-example objective, comparable with an epoch's mean loss:
when the two part ways, the model has started to fit its own noise draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from common import preflight
from common.batching import iterate_batches
from common.config import TrainConfig
from common.corpus import has_split, load_corpus
from common.errors import DataError
from common.sampling import SkipGramData, build_dataset
from common.training import real_examples
from common.vocab import Vocab

SPLIT = "valid"
# Mixed into the seed so that the validation stream never coincides with a training one.
_STREAM = 0x76616C6964  # "valid"


@dataclass
class HeldOut:
    """The validation split's examples, sampled once, and how to batch them."""

    data: SkipGramData
    batch_size: int
    fixed_length: int | None = None
    pad_last_batch: bool = False

    @classmethod
    def build(cls, config: TrainConfig, vocab: Vocab, *, fixed_shapes: bool = False,
              corpus_name: str | None = None,
              log: Callable[[str], None] = lambda line: None) -> "HeldOut | None":
        """The validation split of `config.corpus`, or None when it has none (lee, a file).

        `corpus_name` is what training actually read: with `--corpus auto` that may be lee
        (PTB unavailable), which has no validation split. `fixed_shapes` pads as the
        training batches are padded, so compiled backends reuse their shapes.
        """
        if corpus_name is not None and corpus_name != "ptb":
            return None
        if not has_split(config.corpus, SPLIT):
            return None
        try:
            # Training has just found PTB (the given path, W2V_PTB or the cache): no download.
            corpus = load_corpus(config.corpus, config.data, split=SPLIT, download=False,
                                 log=log)
        except DataError:
            if config.corpus == "auto":  # auto fell back to lee for training: nothing held out
                return None
            raise
        rng = np.random.default_rng([config.seed, _STREAM])
        encoded = vocab.encode(corpus.sentences)
        longest = int(encoded.lengths.max(initial=0))
        preflight.check_arrays("validation examples", preflight.examples_bytes(
            config, preflight.expected_centres(vocab.counts, config.subsample_t,
                                               len(encoded.tokens)), longest, len(vocab)))
        data = build_dataset(encoded, vocab.counts,
                             max_window_size=config.max_window_size,
                             num_noise_words=config.num_noise_words, t=config.subsample_t,
                             rng=rng)
        options = dict(fixed_length=preflight.padded_width(config, longest),
                       pad_last_batch=True) if fixed_shapes \
            else {}
        return cls(data, config.batch_size, **options)

    @property
    def num_examples(self) -> int:
        return self.data.num_examples

    def loss(self, backend: Any) -> float:
        """Mean per-example objective over the split under `backend`'s current parameters.

        Batches come in a fixed order (the sum does not depend on it); losses stay on the
        device until one fetch at the end.
        """
        losses, examples = [], 0
        for batch in iterate_batches(self.data, self.batch_size, np.random.default_rng(0),
                                     fixed_length=self.fixed_length,
                                     pad_last_batch=self.pad_last_batch):
            losses.append(backend.eval_loss(batch))
            examples += real_examples(batch)
        return float(backend.losses_to_numpy(losses).sum()) / max(examples, 1)
