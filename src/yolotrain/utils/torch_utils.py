"""Device selection, seeding and small tensor helpers shared by the engine."""

from __future__ import annotations

import os
import random
import resource
import sys

import numpy as np
import psutil
import torch

from yolotrain.errors import ConfigError


def select_device(device: str = "") -> torch.device:
    """Turn the ``device`` setting into a :class:`torch.device`.

    Empty picks the first CUDA GPU if there is one, else MPS if available, else CPU. Under torchrun the
    local rank chooses among the listed GPUs.

    Raises:
        ConfigError: When the requested device is not available here.
    """
    d = str(device).strip().lower()
    if d == "":
        if torch.cuda.is_available():
            d = "0"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            d = "mps"
        else:
            d = "cpu"
    if d == "cpu":
        return torch.device("cpu")
    if d == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError("setting 'device'=mps is not available on this machine (try device=cpu)")
        return torch.device("mps")
    if d == "cuda":
        d = "0"
    ids = [int(x) for x in d.split(",") if x.strip()]
    if not torch.cuda.is_available():
        raise ConfigError(f"setting 'device'={device} asks for CUDA but no CUDA GPU is available (try device=cpu)")
    n = torch.cuda.device_count()
    bad = [i for i in ids if i >= n]
    if bad:
        raise ConfigError(f"setting 'device'={device} names GPU {bad[0]} but only {n} GPU(s) are visible")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", ids[local_rank % len(ids)])


def init_seeds(seed: int = 0, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (all devices); optionally prefer deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        # warn_only: a few CUDA kernels have no deterministic version; we prefer running to refusing.
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new uninitialised tensor (NaN for floats) so that a kernel that
        # reads uninitialised memory shows it; that is a debugging aid, not part of determinism, and on a GPU
        # it is one extra kernel per allocation. Results of correct kernels do not depend on it.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def configure_backend(device: torch.device, deterministic: bool) -> None:
    """Apply CUDA-only speed settings, and only on CUDA."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def memory_mb(device: torch.device) -> float:
    """Memory in use on ``device``: CUDA allocator's reserved memory, else process RSS."""
    if device.type == "cuda":
        return torch.cuda.memory_reserved(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20
