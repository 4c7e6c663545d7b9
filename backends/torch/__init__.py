"""The PyTorch backend; the registry loads `BACKEND`."""
import os

# 2 MiB pages for torch's CPU tensors of 2 MiB and more (torch's own switch, read once, at the
# process's first such allocation: so before the tables exist). A sparse step allocates fresh
# (rows, E) blocks every step, each page-faulted 4 KiB at a time without it: at V = 1M it
# makes sgd's step 10.2 -> 7.6 ms and sparse_adam's 18.2 -> 14.0 (benchmarks/README.md,
# "Throughput against vocabulary size"). A user's own setting wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from backends.torch.backend import TorchBackend  # noqa: E402  (after the switch above)

BACKEND = TorchBackend

__all__ = ["BACKEND", "TorchBackend"]
