"""From a TrainConfig to what the training loop consumes: corpus -> vocabulary -> epochs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from common import preflight
from common.batching import Batch, EpochData
from common.config import TrainConfig
from common.corpus import load_corpus
from common.errors import ConfigError
from common.vocab import Vocab


@dataclass
class TrainingData:
    """The vocabulary and the per-epoch batches of one run."""

    corpus_name: str
    num_sentences: int
    vocab: Vocab
    epochs: EpochData

    def batches(self, epoch: int) -> Iterator[Batch]:
        return self.epochs.batches(epoch)

    def num_batches(self, epoch: int) -> int:
        return self.epochs.num_batches(epoch)

    def num_examples(self, epoch: int) -> int:
        return self.epochs.num_examples(epoch)


def prepare_training_data(config: TrainConfig, *, fixed_shapes: bool = False,
                          steps_per_call: int = 1,
                          log: Callable[[str], None] = print) -> TrainingData:
    """Load the corpus, build the vocabulary (`<unk>` = 0) and the epoch sampler.

    `fixed_shapes` pads every batch to the widest row the corpus can give (`config.max_length`
    capped by the longest sentence) and the last one to `batch_size` rows, for backends that
    compile one step per shape. The resource preflight runs before the epoch's arrays exist
    (`steps_per_call`: batches a backend stacks into one call, as `preflight` counts them).
    """
    corpus = load_corpus(config.corpus, config.data, log=log)
    vocab = Vocab(corpus.sentences, min_freq=config.min_freq)
    encoded = vocab.encode(corpus.sentences)
    longest = int(encoded.lengths.max(initial=0))
    preflight.check(config, preflight.Shape(
        vocab_size=len(vocab), tokens=len(encoded.tokens), longest_sentence=longest,
        centres=preflight.expected_centres(vocab.counts, config.subsample_t,
                                           len(encoded.tokens))), fixed_shapes=fixed_shapes,
        steps_per_call=steps_per_call)
    options = {"fixed_length": preflight.padded_width(config, longest),
               "pad_last_batch": True} if fixed_shapes else {}
    epochs = EpochData.from_config(encoded, vocab.counts, config,
                                   np.random.default_rng(config.seed), **options)
    if config.batch_size > epochs.num_examples(0):
        raise ConfigError(f"--batch-size {config.batch_size} is larger than the data "
                          f"({epochs.num_examples(0)} centre words per epoch): lower it")
    return TrainingData(corpus.name, len(corpus.sentences), vocab, epochs)
