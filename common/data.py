"""From a TrainConfig to what the training loop consumes: corpus -> vocabulary -> epochs.

PTB and Lee are small and read whole; text8 and text files are streamed into the token cache
and memory-mapped (`common.token_cache`), so their size never lands in Python objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from common import preflight
from common.batching import Batch
from common.config import TrainConfig
from common.corpus import (TEXT8_HELDOUT_TOKENS, TEXT8_SENTENCE_TOKENS, cache_dir, load_corpus,
                           text8_source, text_file_source)
from common.errors import ConfigError
from common.stream import EpochData
from common.vocab import EncodedCorpus, Vocab

IN_MEMORY = ("auto", "ptb", "lee")


@dataclass
class TrainingData:
    """The vocabulary and the per-epoch batches of one run (and its held-out split, if any)."""

    corpus_name: str
    num_sentences: int
    vocab: Vocab
    epochs: EpochData
    valid: EncodedCorpus | None = None  # text8's held-out tokens; PTB's valid is read apart
    cache: Path | None = None

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        return self.epochs.batches(epoch, start)

    def num_batches(self, epoch: int) -> int:
        return self.epochs.num_batches(epoch)

    def num_examples(self, epoch: int) -> int:
        return self.epochs.num_examples(epoch)


def load_encoded(config: TrainConfig, *, vocab: Vocab | None = None,
                 log: Callable[[str], None] = print
                 ) -> tuple[str, Vocab, EncodedCorpus, EncodedCorpus | None, Path | None]:
    """(corpus name, vocabulary, training tokens, held-out tokens or None, cache file or None).

    `vocab` imposes a vocabulary on a streamed corpus (benchmarks compare corpus lengths at
    one vocabulary); by default `config.min_freq` makes it.
    """
    if config.corpus in IN_MEMORY:
        corpus = load_corpus(config.corpus, config.data, log=log)
        vocab = Vocab(corpus.sentences, min_freq=config.min_freq)
        return corpus.name, vocab, vocab.encode(corpus.sentences), None, None
    from common.token_cache import TextLayout, load_streamed

    if config.corpus == "text8":
        source = text8_source(config.data, log=log)
        layout = TextLayout(TEXT8_SENTENCE_TOKENS, TEXT8_HELDOUT_TOKENS)
    else:
        source = text_file_source(config.corpus)
        layout = TextLayout()
    streamed = load_streamed(source.name, source.open_binary, source.source, layout,
                             min_freq=config.min_freq, cache_folder=cache_dir() / "tokens",
                             identity=source.sha256, vocab=vocab, log=log)
    return streamed.name, streamed.vocab, streamed.train, streamed.valid, streamed.cache


def prepare_training_data(config: TrainConfig, *, fixed_shapes: bool = False,
                          steps_per_call: int = 1, vocab: Vocab | None = None,
                          log: Callable[[str], None] = print) -> TrainingData:
    """Load the corpus, build the vocabulary (`<unk>` = 0) and the epoch sampler.

    `fixed_shapes` pads every batch to the widest row the corpus can give (`config.max_length`
    capped by the longest sentence) and the last one to `batch_size` rows, for backends that
    compile one step per shape. The resource preflight runs before the epoch's plan exists
    (`steps_per_call`: batches a backend stacks into one call, as `preflight` counts them).
    `vocab` imposes a vocabulary on a streamed corpus (see `load_encoded`).
    """
    name, vocab, train, valid, cache = load_encoded(config, vocab=vocab, log=log)
    longest = int(train.lengths.max(initial=0))
    preflight.check(config, preflight.Shape(
        vocab_size=len(vocab), tokens=len(train.tokens), longest_sentence=longest,
        centres=preflight.expected_centres(vocab.counts, config.subsample_t,
                                           len(train.tokens))), fixed_shapes=fixed_shapes,
        steps_per_call=steps_per_call)
    options = {"fixed_length": preflight.padded_width(config, longest),
               "pad_last_batch": True} if fixed_shapes else {}
    epochs = EpochData.from_config(train, vocab.counts, config, **options)
    if config.batch_size > epochs.num_examples(0):
        raise ConfigError(f"--batch-size {config.batch_size} is larger than the data "
                          f"({epochs.num_examples(0)} centre words per epoch): lower it")
    return TrainingData(name, len(train.offsets) - 1, vocab, epochs, valid, cache)
