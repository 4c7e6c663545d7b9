"""The floor: the chapter's PyTorch pipeline in its own plain-Python form, timed on PTB.

    python -m benchmarks.chapter_baseline [--data ptb.zip] [--epochs 1] [--threads N] [--out F]

Every benchmark row is read against this figure. It rebuilds what the chapter runs, step by
step and with the same algorithms in the same form (Python lists and loops, `random`), so that
it has the chapter's structure and cost; it imports nothing from the project's pipeline:
- `subsample`: drop `<unk>`, keep word w with probability sqrt(t / f(w)) (`random.uniform`);
- `get_centers_and_contexts`: a random window in 1..5 per centre, within its sentence;
- `RandomGenerator`: draws noise words by `random.choices` over count^0.75, 10,000 at a time;
- `get_negatives`: K noise words per context word, redrawn while one is a context word;
- `batchify` as a `DataLoader`'s `collate_fn` (shuffled, batch 512): padded (B, L) rows, masks,
  labels;
- two `nn.Embedding`s, `torch.bmm`, masked BCE with logits, eager autograd, `torch.optim.Adam`
  (lr 0.002), the summed per-example loss, Xavier-uniform initialisation.
Seeded (`random`, `torch`). The data build (subsample, centres and contexts, negatives) is
timed apart from training; the rate is centre words (rows) per second of an epoch, the unit
of every other row. The DataLoader runs in this process (`--loader-workers 0`); the chapter's
four workers on a 2-core machine would compete with training for the cores.
"""
from __future__ import annotations

import argparse
import collections
import math
import random
import statistics
import sys
import time
from typing import Any, Sequence

from benchmarks import machine

UNK = "<unk>"
MIN_FREQ, SUBSAMPLE_T, MAX_WINDOW, NUM_NOISE = 10, 1e-4, 5, 5
BATCH_SIZE, EMBED_SIZE, LR = 512, 100, 0.002
CACHE = 10_000  # noise words drawn per `random.choices` call


class Vocabulary:
    """Tokens by descending frequency after `<unk>` (index 0); rarer than MIN_FREQ -> `<unk>`."""

    def __init__(self, sentences: Sequence[Sequence[str]], min_freq: int = MIN_FREQ) -> None:
        self.counts = collections.Counter(token for line in sentences for token in line)
        ordered = sorted(self.counts.items(), key=lambda item: item[1], reverse=True)
        self.idx_to_token = [UNK] + [token for token, count in ordered
                                     if count >= min_freq and token != UNK]
        self.token_to_idx = {token: index for index, token in enumerate(self.idx_to_token)}

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def indices(self, line: Sequence[str]) -> list[int]:
        return [self.token_to_idx.get(token, 0) for token in line]


def subsample(sentences: Sequence[Sequence[str]], vocab: Vocabulary,
              t: float = SUBSAMPLE_T) -> tuple[list[list[str]], collections.Counter]:
    """Drop `<unk>` and frequent words (keep w with probability sqrt(t / f(w)))."""
    lines = [[token for token in line if vocab.token_to_idx.get(token, 0) != 0]
             for line in sentences]
    counter = collections.Counter(token for line in lines for token in line)
    total = sum(counter.values())

    def keep(token: str) -> bool:
        return random.uniform(0, 1) < math.sqrt(t / counter[token] * total)

    return [[token for token in line if keep(token)] for line in lines], counter


def get_centers_and_contexts(corpus: Sequence[Sequence[int]],
                             max_window_size: int) -> tuple[list[int], list[list[int]]]:
    """Every position of every sentence of 2+ words as a centre, its window's words as context."""
    centers, contexts = [], []
    for line in corpus:
        if len(line) < 2:
            continue
        centers += line
        for i in range(len(line)):
            window = random.randint(1, max_window_size)
            positions = list(range(max(0, i - window), min(len(line), i + 1 + window)))
            positions.remove(i)
            contexts.append([line[j] for j in positions])
    return centers, contexts


class RandomGenerator:
    """Draw index i+1 with probability proportional to weights[i], CACHE draws at a time."""

    def __init__(self, weights: Sequence[float]) -> None:
        self.population = list(range(1, len(weights) + 1))
        self.weights = weights
        self.candidates: list[int] = []
        self.i = 0

    def draw(self) -> int:
        if self.i == len(self.candidates):
            self.candidates = random.choices(self.population, self.weights, k=CACHE)
            self.i = 0
        self.i += 1
        return self.candidates[self.i - 1]


def get_negatives(all_contexts: Sequence[Sequence[int]], vocab: Vocabulary,
                  counter: collections.Counter, num_noise: int) -> list[list[int]]:
    """`num_noise` noise words per context word, from count^0.75, never a context word."""
    weights = [counter[vocab.idx_to_token[i]] ** 0.75 for i in range(1, len(vocab))]
    generator = RandomGenerator(weights)
    all_negatives = []
    for contexts in all_contexts:
        negatives: list[int] = []
        while len(negatives) < len(contexts) * num_noise:
            noise = generator.draw()
            if noise not in contexts:
                negatives.append(noise)
        all_negatives.append(negatives)
    return all_negatives


def batchify(data: Sequence[tuple[int, list[int], list[int]]]) -> tuple[Any, ...]:
    """(centre, contexts, negatives) examples -> centres (B, 1), contexts_negatives, masks and
    labels (B, L), padded with 0 to the batch's widest row."""
    import torch

    max_len = max(len(c) + len(n) for _, c, n in data)
    centers, contexts_negatives, masks, labels = [], [], [], []
    for center, context, negative in data:
        cur_len = len(context) + len(negative)
        centers += [center]
        contexts_negatives += [context + negative + [0] * (max_len - cur_len)]
        masks += [[1] * cur_len + [0] * (max_len - cur_len)]
        labels += [[1] * len(context) + [0] * (max_len - len(context))]
    return (torch.tensor(centers).reshape((-1, 1)), torch.tensor(contexts_negatives),
            torch.tensor(masks), torch.tensor(labels))


class PTBDataset:
    """The (centre, contexts, negatives) triples as a map-style dataset for the DataLoader."""

    def __init__(self, centers: list[int], contexts: list[list[int]],
                 negatives: list[list[int]]) -> None:
        assert len(centers) == len(contexts) == len(negatives)
        self.centers, self.contexts, self.negatives = centers, contexts, negatives

    def __getitem__(self, index: int) -> tuple[int, list[int], list[int]]:
        return self.centers[index], self.contexts[index], self.negatives[index]

    def __len__(self) -> int:
        return len(self.centers)


def build_data(sentences: Sequence[Sequence[str]], *, seed: int = 0,
               max_window: int = MAX_WINDOW,
               num_noise: int = NUM_NOISE) -> tuple[PTBDataset, Vocabulary]:
    """The chapter's data build: vocabulary, subsampling, centres and contexts, negatives."""
    random.seed(seed)
    vocab = Vocabulary(sentences)
    subsampled, counter = subsample(sentences, vocab)
    corpus = [vocab.indices(line) for line in subsampled]
    centers, contexts = get_centers_and_contexts(corpus, max_window)
    negatives = get_negatives(contexts, vocab, counter, num_noise)
    return PTBDataset(centers, contexts, negatives), vocab


def loader(dataset: PTBDataset, *, batch_size: int = BATCH_SIZE, workers: int = 0,
           seed: int = 0) -> Any:
    import torch

    return torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, collate_fn=batchify,
                                       num_workers=workers,
                                       generator=torch.Generator().manual_seed(seed))


def train(dataset: PTBDataset, vocab_size: int, *, epochs: int, seed: int = 0,
          workers: int = 0, embed_size: int = EMBED_SIZE,
          timed_words: int | None = None) -> list[dict[str, float]]:
    """The chapter's training loop; per epoch: seconds, centre words, mean per-example loss.

    `timed_words`: stop each epoch after that many centre words (a quick benchmark).
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Embedding(vocab_size, embed_size),
                        nn.Embedding(vocab_size, embed_size))
    for module in net:
        nn.init.xavier_uniform_(module.weight)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)

    def loss(inputs: Any, target: Any, mask: Any) -> Any:
        return nn.functional.binary_cross_entropy_with_logits(
            inputs, target, weight=mask, reduction="none").mean(dim=1)

    epochs_done = []
    for _ in range(epochs):
        started, words, total = time.perf_counter(), 0, 0.0
        for center, context_negative, mask, label in loader(dataset, workers=workers, seed=seed):
            optimizer.zero_grad()
            v, u = net[0](center), net[1](context_negative)
            pred = torch.bmm(v, u.permute(0, 2, 1))
            mask = mask.float()
            l = (loss(pred.reshape(label.shape).float(), label.float(), mask)
                 / mask.sum(axis=1) * mask.shape[1])
            l.sum().backward()
            optimizer.step()
            total += float(l.sum().detach())
            words += center.shape[0]
            if timed_words and words >= timed_words:
                break
        seconds = time.perf_counter() - started
        epochs_done.append({"seconds": seconds, "words": words, "loss": total / words})
    return epochs_done


def measure(data_path: str | None, *, epochs: int = 1, seed: int = 0, threads: int = 0,
            workers: int = 0, timed_words: int | None = None) -> dict[str, Any]:
    """Build the data and train; one record with the data build and the rate per epoch."""
    import torch

    from benchmarks.peer import ptb_sentences

    if threads:
        from backends.torch import BACKEND

        BACKEND.set_threads(threads)
    sentences = ptb_sentences(data_path, drop_unk=False)
    started = time.perf_counter()
    dataset, vocab = build_data(sentences, seed=seed)
    build_seconds = time.perf_counter() - started
    done = train(dataset, len(vocab), epochs=epochs, seed=seed, workers=workers,
                 timed_words=timed_words)
    rates = [e["words"] / e["seconds"] for e in done]
    return machine.stamp({
        "benchmark": "chapter_baseline", "backend": "chapter baseline",
        "framework_version": torch.__version__, "step": "seed", "device": "cpu",
        "batch_size": BATCH_SIZE, "embed_size": EMBED_SIZE, "vocab_size": len(vocab),
        "epochs": epochs, "loader_workers": workers, "data_build_seconds": build_seconds,
        "centre_words": len(dataset), "timed_words": done[-1]["words"],
        "epoch_seconds": [e["seconds"] for e in done],
        "centre_words_per_second": statistics.median(rates),
        "centre_words_per_second_min": min(rates), "centre_words_per_second_max": max(rates),
        "loss": done[-1]["loss"], "peak_rss_mib": machine.peak_rss_mib()})


@machine.script("chapter_baseline")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="ptb.zip or folder (default: env W2V_PTB)")
    parser.add_argument("--epochs", type=int, default=1, choices=(1, 2))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: every CPU)")
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--timed-words", type=int, default=None,
                        help="stop each epoch after this many centre words (default: whole)")
    parser.add_argument("--out", default=None, help="append the JSON line here")
    args = parser.parse_args(argv)
    if args.threads < 0 or args.loader_workers < 0 or (args.timed_words or 1) < 1:
        parser.error("--threads and --loader-workers must be non-negative integers, "
                     "--timed-words positive")
    row = measure(args.data, epochs=args.epochs, seed=args.seed, threads=args.threads,
                  workers=args.loader_workers, timed_words=args.timed_words)
    machine.emit(row, f"chapter baseline (torch {row['framework_version']}): data build "
                      f"{row['data_build_seconds']:.1f} s, {row['centre_words_per_second']:,.0f} "
                      f"centre words/s over {row['timed_words']:,} centre words of an epoch, "
                      f"loss {row['loss']:.3f}, peak RSS {row['peak_rss_mib']:.0f} MiB", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
