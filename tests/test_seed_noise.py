"""scripts/study/seed_noise.py separates a seed's shift of every slice from seed x slice interaction."""
from __future__ import annotations

import numpy as np
import pytest

from scripts.study.seed_noise import decompose, projected_sd


def test_a_pure_shift_and_pure_interaction_are_told_apart():
    rng = np.random.default_rng(0)
    slice_effect = rng.normal(0, 1, 200)  # the same on every seed: cancels in the seed SD
    shift = rng.normal(0, 0.5, (40, 1)) + slice_effect
    parts = decompose(shift)
    assert parts["interaction"] == pytest.approx(0.0, abs=1e-20)
    assert parts["sd"] == pytest.approx(np.std(shift.mean(axis=1), ddof=1))
    assert projected_sd(parts, 10_000) == pytest.approx(parts["sd"])  # more slices cannot help
    noise = rng.normal(0, 2.0, (40, 200)) + slice_effect
    parts = decompose(noise)
    assert parts["interaction"] == pytest.approx(4.0, rel=0.05)
    assert parts["sd"] == pytest.approx(2.0 / np.sqrt(200), rel=0.25)
    assert parts["shift"] < 0.25 * parts["interaction"] / 200
    assert projected_sd(parts, 20_000) < 0.2 * parts["sd"]  # it averages out


def test_too_few_seeds_or_slices_are_refused():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        decompose(np.zeros((1, 5)))
