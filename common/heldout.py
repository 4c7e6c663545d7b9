"""The held-out loss: the training objective on a validation split, with no update.

The split is PTB's valid file or text8's last 1,000,000 tokens. Its examples are sampled once,
as the chapter samples its training set (subsample, random windows, noise words from the
training counts**0.75), through the same streaming pipeline, keyed by a seed derived from the
run's seed but apart from the training streams, so that every epoch (and every run with that
seed, in any backend) is scored on the very same examples and noise words. The figure
is the all-example mean of the per-example objective, comparable with an epoch's mean loss:
when the two part ways, the model has started to fit its own noise draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from common import preflight
from common.config import TrainConfig
from common.corpus import has_split, load_corpus
from common.errors import DataError
from common.stream import EpochData
from common.training import real_examples
from common.vocab import EncodedCorpus, Vocab

SPLIT = "valid"
# Mixed into the seed so that the validation stream never coincides with a training one.
_STREAM = 0x76616C6964  # "valid"


@dataclass
class HeldOut:
    """The validation split's examples, sampled once (static), batched on demand."""

    data: EpochData

    @classmethod
    def build(cls, config: TrainConfig, vocab: Vocab, *, fixed_shapes: bool = False,
              corpus_name: str | None = None, encoded: EncodedCorpus | None = None,
              log: Callable[[str], None] = lambda line: None) -> "HeldOut | None":
        """The validation split of `config.corpus`, or None when it has none (lee, a file).

        `corpus_name` is what training actually read: with `--corpus auto` that may be lee
        (PTB unavailable), which has no validation split. `encoded` is a split the training
        data already holds (text8's held-out tokens). `fixed_shapes` pads as the training
        batches are padded, so compiled backends reuse their shapes.
        """
        if encoded is not None:
            return cls._sampled(config, vocab, encoded, fixed_shapes)
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
        return cls._sampled(config, vocab, vocab.encode(corpus.sentences), fixed_shapes)

    @classmethod
    def _sampled(cls, config: TrainConfig, vocab: Vocab, encoded: EncodedCorpus,
                 fixed_shapes: bool) -> "HeldOut":
        longest = int(encoded.lengths.max(initial=0))
        preflight.check_arrays("validation examples", preflight.examples_bytes(
            config, preflight.expected_centres(vocab.counts, config.subsample_t,
                                               len(encoded.tokens)), longest, len(vocab),
            len(encoded.tokens)))
        options = dict(fixed_length=preflight.padded_width(config, longest),
                       pad_last_batch=True) if fixed_shapes \
            else {}
        seed = int(np.random.SeedSequence([config.seed, _STREAM]).generate_state(1)[0])
        return cls(EpochData(encoded, vocab.counts, max_window_size=config.max_window_size,
                             num_noise_words=config.num_noise_words, t=config.subsample_t,
                             batch_size=config.batch_size, seed=seed, mode="static",
                             **options))

    @property
    def num_examples(self) -> int:
        return self.data.num_examples(0)

    def loss(self, backend: Any) -> float:
        """Mean per-example objective over the split under `backend`'s current parameters.

        Batches come in a fixed order (the sum does not depend on it); losses stay on the
        device until one fetch at the end.
        """
        losses, examples = [], 0
        for batch in self.data.batches(0):
            losses.append(backend.eval_loss(batch))
            examples += real_examples(batch)
        return float(backend.losses_to_numpy(losses).sum()) / max(examples, 1)
