"""The torch device a user's ``--device`` names, and the threads of torch's CPU work (``--threads``)."""

from __future__ import annotations

from typing import Any


def resolve_device(device: str = "auto") -> Any:
    """A ``torch.device`` for ``auto|cpu|cuda|cuda:N|mps`` (``gpu``, ``gpu:N``: CUDA's);
    ``ValueError`` if unavailable."""
    import torch

    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "gpu" or name.startswith("gpu:"):  # the other tools' spelling of CUDA
        name = "cuda" + name[3:]
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{device}' requested but CUDA is not available on this machine")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ValueError(f"device '{device}' does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device(name)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("device 'mps' requested but Apple MPS is not available on this machine")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N (or gpu, gpu:N) or mps")


def set_cpu_threads(threads: int | None) -> None:
    """Let torch's CPU work in this process use ``threads`` threads (``torch.set_num_threads``;
    ``None`` leaves torch's own choice). A setting of the whole process, kept afterwards."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
