"""Seeding and the RNG state that checkpoints carry for an exact --resume."""
from __future__ import annotations

import random

import numpy as np
import torch

from cli import UserError


class SeedError(UserError):
    """A seed NumPy cannot take."""


def check_seed(seed: int) -> int:
    """``seed`` itself when it fits NumPy's 0 .. 2**32 - 1, else :class:`SeedError`."""
    if not 0 <= seed < 2 ** 32:
        raise SeedError(f"seed {seed} is out of range; use a whole number from 0 to {2 ** 32 - 1}")
    return seed


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device); ``seed`` must fit NumPy's 0..2**32-1."""
    random.seed(check_seed(seed))
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Python, NumPy and torch RNG states as plain values and tensors (loadable with weights_only)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": np_state["bit_generator"],
                         "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
                         "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
