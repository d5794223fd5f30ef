"""The controlled contrasts of scripts/study/study.sh: which part of SFT-KD-Recon's gain is its teacher, which its
initialisation, with statistics a reviewer accepts.

Arms (the registry scripts/study/arms.py), per KD method M: A Std-KD (standard teacher, scratch), B SFT-KD-Recon
(SFT teacher, SFT blocks), C standard teacher + SFT blocks, D standard teacher + the standalone student's cascades.

- **Primary** B - C: the teacher's effect with the initialisation held fixed.
- Secondary C - A (SFT blocks vs scratch), C - D (SFT blocks vs ordinary pre-training), B - A (the paper's
  comparison, which mixes both), Holm-corrected together within each (method, test set, metric).
- With the no-KD arms N (SFT blocks, L1 alone) and L (the student alone for pre-training + KD epochs): B - N
  (does the SFT teacher add to its own blocks?), C - N (does the standard teacher hurt?), C - L and D - L
  (pre-training vs the same epochs spent on the student), Holm-corrected as a family of their own.

The unit of replication is the seed: each seed's difference of the two arms' means over the test slices,
then the mean over seeds with its 95 % t-interval (sample std, ``ddof=1``, ``n - 1`` degrees of freedom) and
the paired t-test p. Beside it, the power of the design: the per-seed standard deviation of the difference and the minimum detectable
effect (MDE), the smallest true mean difference the design's ``n`` seeds detect with 80 % power in that
two-sided paired t-test at alpha 0.05, given that SD (noncentral t; for 5 seeds 1.68 SD). A null result is
read beside it and beside the interval's bound: an effect beyond the interval is excluded at 95 %, one
below the MDE the design was unlikely to see. The per-slice Wilcoxon signed-rank test (each slice averaged
over seeds) is description only: slices of one brain are not independent replications, and with ``n <= 50`` slices the
exact test's smallest two-sided p is ``2 / 2**n``, reached whenever all slices agree in sign.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from scripts.study import arms
from models.evaluation.metrics import metric as registered, used_for



def contrast_list(method: str) -> list[tuple[str, tuple, tuple, bool, str]]:
    """(label, table row of arm b, of arm a, primary, Holm family) of every contrast the arm registry declares,
    for the study's KD method ``method`` (a no-KD arm's row is its own method's whatever ``method`` is)."""
    return [(label, b.key(method), a.key(method), primary, a.family)
            for label, b, a, primary in arms.contrasts(arms.ARMS)]

# Descriptive context beside the contrasts (not corrected, not primary).
BASELINES = (("Teacher - Student", "teacher", "student"), ("SFT teacher - Teacher", "sft", "teacher"))
EXACT_WILCOXON_MAX_N = 50  # scipy's exact signed-rank distribution below this many pairs (no ties)
POWER, ALPHA = 0.8, 0.05  # of the minimum detectable effect


def t_test_power(effect: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided one-sample (paired) t-test with ``n`` pairs at level ``alpha`` against a true mean
    of ``effect`` standard deviations: P(|T| > t_crit) with T noncentral t, ``n - 1`` degrees of freedom,
    noncentrality ``effect * sqrt(n)``. The lower tail is the upper tail at ``-effect`` (numerically stable)."""
    df, nc = n - 1, effect * math.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, nc) + stats.nct.sf(critical, df, -nc))


def detectable_effect(n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest true mean, in standard deviations, that the test of :func:`t_test_power` with ``n`` pairs
    detects with probability ``power`` (NaN below 2 pairs)."""
    if n < 2:
        return math.nan
    high = 1.0
    while t_test_power(high, n, alpha) < power:
        high *= 2
    return float(optimize.brentq(lambda d: t_test_power(d, n, alpha) - power, 0.0, high, xtol=1e-12))


@dataclass
class Contrast:
    """One contrast on one test set and metric. ``diffs``: (n,) float64 per-seed differences b - a."""

    label: str
    method: str | None
    column: str
    metric: str
    diffs: np.ndarray
    seeds: list
    primary: bool = False
    family: str = "map"
    slice_p: float = math.nan
    n_slices: int = 0
    holm_p: float = math.nan

    @property
    def mean(self) -> float:
        return float(np.mean(self.diffs)) if len(self.diffs) else math.nan

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """The t-interval of the mean difference over seeds (``ddof=1``); NaN with fewer than 2 seeds."""
        n = len(self.diffs)
        if n < 2:
            return math.nan, math.nan
        half = stats.t.ppf(0.5 + level / 2, n - 1) * np.std(self.diffs, ddof=1) / math.sqrt(n)
        return self.mean - half, self.mean + half

    @property
    def sd(self) -> float:
        """The sample std of the per-seed differences (``ddof=1``); NaN with fewer than 2 seeds."""
        return float(np.std(self.diffs, ddof=1)) if len(self.diffs) >= 2 else math.nan

    @property
    def mde(self) -> float:
        """The minimum detectable effect of this design: :func:`detectable_effect` of its seeds times :attr:`sd`,
        in the metric's unit."""
        return detectable_effect(len(self.diffs)) * self.sd

    @property
    def p(self) -> float:
        """Two-sided one-sample t-test of the per-seed differences (= a paired t-test over seeds)."""
        if len(self.diffs) < 2 or np.all(self.diffs == self.diffs[0]):
            return math.nan
        return float(stats.ttest_1samp(self.diffs, 0.0).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order; NaN entries stay NaN and do not count."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if np.isfinite(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def wilcoxon_floor(n: int) -> float | None:
    """Smallest two-sided p of the exact signed-rank test with ``n`` pairs, None where scipy approximates."""
    return 2.0 / 2 ** n if 0 < n <= EXACT_WILCOXON_MAX_N else None


def seed_means(seeds: dict, metric: str) -> dict:
    """Each seed's mean over its slices of ``metric``; ``seeds``: seed -> a scripts/report.py ``Run``."""
    return {seed: run.mean(metric) for seed, run in seeds.items()}


def seed_differences(a: dict, b: dict, metric: str) -> tuple[list, np.ndarray]:
    """The seeds both rows have (None first, then ascending) and the per-seed difference of means ``b - a``,
    (n,) float64."""
    ma, mb = seed_means(a, metric), seed_means(b, metric)
    common = sorted((s for s in ma if s in mb), key=lambda s: -1 if s is None else s)
    return common, np.array([mb[s] - ma[s] for s in common])


def slice_pairs(a: dict, b: dict, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice ``metric`` of two rows, each slice averaged over the row's seeds, on the (volume, slice) keys
    both have, in sorted key order: ``(x from a, y from b)``, two (N,) float64 arrays."""
    def per_slice(seeds: dict) -> dict:
        keys = set.intersection(*(set(run.values[metric]) for run in seeds.values()))
        return {k: float(np.mean([run.values[metric][k] for run in seeds.values()])) for k in keys}
    sa, sb = per_slice(a), per_slice(b)
    common = sorted(set(sa) & set(sb))
    return np.array([sa[k] for k in common]), np.array([sb[k] for k in common])


def wilcoxon_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples x, y: (N,) float; NaN when undefined."""
    if len(x) == 0 or np.all(x == y):
        return math.nan
    return float(stats.wilcoxon(y, x).pvalue)


def contrast(table: dict, label: str, key_b: tuple, key_a: tuple, column: str, metric: str,
             primary: bool = False, method: str | None = None, family: str = "map") -> Contrast | None:
    """The contrast ``b - a`` of two :func:`scripts.report.collect` rows on ``column``; None if one is missing.
    ``method``: the study's KD method it belongs to (default: row b's)."""
    b, a = table.get(key_b, {}).get(column), table.get(key_a, {}).get(column)
    if not a or not b:
        return None
    seeds, diffs = seed_differences(a, b, metric)
    result = Contrast(label, method or key_b[1], column, metric, diffs, seeds, primary, family)
    x, y = slice_pairs(a, b, metric)
    result.n_slices = len(x)
    result.slice_p = wilcoxon_p(x, y)
    return result


def all_contrasts(table: dict, columns: list[str]) -> list[Contrast]:
    """Every contrast of the arm registry (Holm over the secondary ones per method, column, metric and family) and
    :data:`BASELINES` present in ``table``."""
    methods = arms.study_methods(method for _, method in table)
    found = []
    for column in columns:
        for metric in contrast_metrics():
            for label, a, b in BASELINES:
                c = contrast(table, label, (a, None), (b, None), column, metric)
                found += [c] if c else []
            for method in methods:
                listed = [contrast(table, f"{label} ({method})", key_b, key_a, column, metric, primary, method, family)
                          for label, key_b, key_a, primary, family in contrast_list(method)]
                listed = [c for c in listed if c is not None]
                for family in dict.fromkeys(c.family for c in listed):
                    secondary = [c for c in listed if c.family == family and not c.primary]
                    for c, p in zip(secondary, holm([c.p for c in secondary])):
                        c.holm_p = p
                found += listed
    return found


def holm_scope(found: list[Contrast]) -> str:
    """What the Holm column corrects over, for the families present in ``found``."""
    text = "Holm: over the three secondary contrasts of a method, test set and metric"
    others = {c.family for c in found} - {"map"}
    if others:
        text += (" (B - A, C - A, C - D), and apart from them over the no-KD arms' contrasts (B - N, C - N, C - L, "
                 "D - L)")
    return text


def contrast_metrics() -> tuple[str, ...]:
    """The registry's metrics marked ``contrasts`` (models/evaluation/metrics.py)."""
    return tuple(m.name for m in used_for("contrasts"))


def _fmt(value: float, metric: str, sign: bool = True) -> str:
    if not np.isfinite(value):
        return "n/a"
    digits = registered(metric).digits
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _fmt_p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else f"{p:.2g}"


def markdown(found: list[Contrast]) -> list[str]:
    """Markdown lines: one table per metric, rows per contrast and test set."""
    lines = []
    for metric in contrast_metrics():
        rows = [c for c in found if c.metric == metric]
        if not rows:
            continue
        unit = registered(metric).unit or metric
        lines += ["", f"Contrasts, {metric} ({unit}; b - a per seed: each arm's mean over the test slices; 95 % "
                  f"t-interval over seeds, sample std; p: paired t-test over seeds; {holm_scope(found)}; SD: "
                  "per-seed standard deviation of b - a; MDE: the "
                  "smallest true mean difference these seeds detect with 80 % power in that t-test at alpha 0.05; "
                  "per-slice Wilcoxon: description only, slices averaged over seeds, with its smallest possible "
                  "p):", "",
                  "| contrast | test set | seeds | mean | 95 % CI | per seed | SD | MDE | p | Holm p | "
                  "per-slice p (n, floor) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in rows:
            low, high = c.interval()
            floor = wilcoxon_floor(c.n_slices)
            floor_text = f"{c.n_slices}, {floor:.1g}" if floor else f"{c.n_slices}, normal approx."
            label = f"**{c.label}** (primary)" if c.primary else c.label
            holm_text = "–" if c.primary or not np.isfinite(c.holm_p) else _fmt_p(c.holm_p)
            lines.append(f"| {label} | {c.column} | {len(c.diffs)} | {_fmt(c.mean, metric)} | "
                         f"[{_fmt(low, metric)}, {_fmt(high, metric)}] | "
                         f"{' '.join(_fmt(d, metric) for d in c.diffs)} | {_fmt(c.sd, metric, sign=False)} | "
                         f"{_fmt(c.mde, metric, sign=False)} | {_fmt_p(c.p)} | {holm_text} | "
                         f"{_fmt_p(c.slice_p)} ({floor_text}) |")
    return lines


def plot(found: list[Contrast], path, write) -> None:
    """PNG: per test set and metric, each contrast's per-seed differences (grey) and mean with its 95 %
    t-interval, against a zero line. ``write(path, bytes)`` stores it."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = list(dict.fromkeys(c.column for c in found))
    labels = list(dict.fromkeys(c.label for c in found))
    fig, axes = plt.subplots(len(columns), len(contrast_metrics()), squeeze=False,
                             figsize=(12, 1.0 + 0.42 * len(labels) * len(columns)))
    for r, column in enumerate(columns):
        for k, metric in enumerate(contrast_metrics()):
            ax = axes[r][k]
            for y, label in enumerate(labels):
                c = next((c for c in found if (c.column, c.metric, c.label) == (column, metric, label)), None)
                if c is None or not len(c.diffs):
                    continue
                low, high = c.interval()
                color = "C3" if c.primary else "C0"
                ax.plot(c.diffs, [y] * len(c.diffs), ".", color="0.6")
                if np.isfinite(low):
                    ax.errorbar(c.mean, y, xerr=[[c.mean - low], [high - c.mean]], fmt="o", color=color, capsize=3)
            ax.axvline(0.0, color="k", lw=0.8)
            ax.xaxis.set_major_locator(MaxNLocator(6))
            ax.set_yticks(range(len(labels)), labels if k == 0 else [], fontsize=7)
            ax.invert_yaxis()
            ax.grid(axis="x", alpha=0.3)
            ax.set_title(f"{metric} difference, {column}", fontsize=9)
    fig.suptitle("mean difference over seeds with 95 % t-interval (red: primary contrast; grey: each seed)",
                 fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write(path, buffer.getvalue())
