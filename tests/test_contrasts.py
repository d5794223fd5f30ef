"""scripts/contrasts.py and report.py --contrasts: the study's contrasts against independent computations."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from scripts.contrasts import detectable_effect, holm, t_test_power, wilcoxon_floor
from scripts.report import main

KEYS = [("test", s) for s in range(12)]
ROLES = {"teacher": {"model": "teacher"}, "student": {"model": "student"}, "sft": {"model": "sft"},
         "A": {"model": "kd", "teacher": "standard", "init": "scratch", "kd_method": "at"},
         "B": {"model": "kd", "teacher": "sft", "init": "sft-blocks", "kd_method": "at"},
         "C": {"model": "kd", "teacher": "standard", "init": "sft-blocks", "kd_method": "at"},
         "E": {"model": "kd", "teacher": "standard", "init": "student", "kd_method": "at"}}
LEVELS = {"teacher": 33.0, "student": 32.8, "sft": 32.9, "A": 32.9, "B": 33.3, "C": 33.2, "E": 33.0}


def write_seed(folder: Path, seed: int, test_set: str, psnr: dict) -> None:
    """An evaluate.py folder whose model names say nothing: the roles in summary.json are all report.py has."""
    folder.mkdir(parents=True)
    lines = ["model,volume,slice,PSNR,SSIM,NMSE,HFN,VIF"]
    for name, values in psnr.items():
        lines += [f"m-{name},{v},{s},{float(p)!r},{0.9 + float(p) / 1000!r},0.01,0.1,0.9" for (v, s), p in zip(KEYS, values)]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    roles = {f"m-{name}": {**ROLES[name], "seed": seed} for name in psnr}
    (folder / "summary.json").write_text(json.dumps({"acc": "4x", "split": "test", "test_set": test_set,
                                                     "roles": roles}))


@pytest.fixture
def study(tmp_path):
    rng = np.random.default_rng(5)
    psnr = {}
    dirs = []
    for test_set in ("mni152", "colin27"):
        for seed in (11, 12, 13, 14, 15):
            values = {name: level + rng.normal(0, 0.3) + rng.normal(0, 0.5, len(KEYS)) for name, level in LEVELS.items()}
            psnr[(test_set, seed)] = values
            dirs.append(tmp_path / test_set / f"seed{seed}")
            write_seed(dirs[-1], seed, test_set, values)
    return dirs, psnr


def test_contrasts_match_an_independent_computation(study, tmp_path):
    dirs, psnr = study
    out = tmp_path / "report"
    main(["--eval-dirs", *map(str, dirs), "--out-dir", str(out), "--contrasts", "--plot", str(out / "c.png")])
    md = (out / "table.md").read_text()
    assert (out / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def row(label: str, test_set: str) -> list[str]:
        line = next(line for line in md.splitlines() if label in line and f"| 4x {test_set} |" in line
                    and line.startswith("| ") and "per seed" not in line)
        return [cell.strip() for cell in line.split("|")[1:-1]]

    seeds = (11, 12, 13, 14, 15)
    for test_set in ("mni152", "colin27"):
        diff = {pair: np.array([psnr[(test_set, s)][pair[0]].mean() - psnr[(test_set, s)][pair[1]].mean()
                                for s in seeds]) for pair in (("B", "C"), ("C", "A"), ("C", "E"), ("B", "A"))}
        d = diff[("B", "C")]
        low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        label, _, n, mean, ci, per_seed, sd, mde, p, holm_p, _ = row("B - C", test_set)
        assert "(primary)" in label and n == "5" and holm_p == "–"
        assert sd == f"{d.std(ddof=1):.2f}" and mde == f"{detectable_effect(5) * d.std(ddof=1):.2f}"
        assert mean == f"{d.mean():+.2f}" and ci == f"[{low:+.2f}, {high:+.2f}]"
        assert per_seed == " ".join(f"{x:+.2f}" for x in d)
        assert p == f"{stats.ttest_rel([psnr[(test_set, s)]['B'].mean() for s in seeds], [psnr[(test_set, s)]['C'].mean() for s in seeds]).pvalue:.2g}"
        secondary = [stats.ttest_1samp(diff[pair], 0).pvalue for pair in (("C", "A"), ("C", "E"), ("B", "A"))]
        expected = holm(secondary)
        for label, value in zip(("C - A", "C - D", "B - A"), expected):
            assert row(label, test_set)[9] == f"{value:.2g}"
        # Per-slice description: slices averaged over seeds, n stated with the exact test's floor.
        b = np.mean([psnr[(test_set, s)]["B"] for s in seeds], axis=0)
        c = np.mean([psnr[(test_set, s)]["C"] for s in seeds], axis=0)
        assert row("B - C", test_set)[10] == f"{stats.wilcoxon(b, c).pvalue:.2g} (12, {2 / 2 ** 12:.1g})"


def test_holm_and_the_wilcoxon_floor():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, float("nan"), 0.01]) == pytest.approx([0.5, float("nan"), 0.02], nan_ok=True)
    assert wilcoxon_floor(28) == pytest.approx(7.45e-9, rel=1e-3)  # the smallest p at 28 slices, reached whenever all agree in sign
    assert wilcoxon_floor(136) is None


def test_the_minimum_detectable_effect_is_the_textbook_one():
    # Cohen's tables / G*Power: a one-sample t-test with 10 pairs has power 0.803 against d = 1 (alpha 0.05,
    # two-sided), so 80 % power needs slightly less than d = 1.
    assert t_test_power(1.0, 10) == pytest.approx(0.8031, abs=5e-4)
    assert t_test_power(0.0, 10) == pytest.approx(0.05)  # no effect: the test's level
    assert detectable_effect(10) == pytest.approx(0.996, abs=1e-3)
    assert t_test_power(detectable_effect(5), 5) == pytest.approx(0.8)
    # More seeds detect smaller effects, towards the normal approximation (z_0.975 + z_0.8) / sqrt(n).
    effects = [detectable_effect(n) for n in (2, 3, 5, 10, 50, 1000)]
    assert effects == sorted(effects, reverse=True)
    assert effects[-1] == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / math.sqrt(1000), rel=1e-2)
    assert math.isnan(detectable_effect(1))
