"""The PyTorch backend; the registry loads `BACKEND`."""
from backends.torch.backend import TorchBackend

BACKEND = TorchBackend

__all__ = ["BACKEND", "TorchBackend"]
