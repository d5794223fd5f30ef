"""Where a contrast's seed noise comes from, from a study's committed per-slice files: a shift that moves every
test slice of a seed alike (a better or worse trained network: only better training lowers it) or seed x slice
interaction (which averages out over more test slices).

For the contrast b - a, x[s, i] = b - a on slice i of seed s (S seeds, N slices, the same slices every seed).
The per-seed difference d_s = mean_i x[s, i] has the variance ``shift + interaction / N``, with ``interaction``
the two-way residual variance of x (seed x slice, ``(S-1)(N-1)`` degrees of freedom) and ``shift`` the rest
(floored at 0). The projected per-seed SD at N' test slices is ``sqrt(shift + interaction / N')``.

    python -m scripts.study.seed_noise --docs docs/study [--kd-method at]
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from scripts import report
from utils import CliParser, UserError, run_cli

# (label, row b, row a) with the KD method filled in.
CONTRASTS = (("Teacher - Student", ("teacher", None), ("student", None)),
             ("B - C", ("sftkd", "{m}"), ("stdkd-sftinit", "{m}")),
             ("B - A", ("sftkd", "{m}"), ("stdkd", "{m}")))


def decompose(x: np.ndarray) -> dict:
    """x: (S, N) float64 per-seed, per-slice differences. The per-seed SD of the slice means, the shift and
    interaction variances of the module's model, and the SD its N slices would have if the shift were 0."""
    s, n = x.shape
    if s < 2 or n < 2:
        raise ValueError(f"need at least 2 seeds and 2 slices, got {s} x {n}")
    residual = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
    interaction = float((residual ** 2).sum() / ((s - 1) * (n - 1)))
    seed_var = float(np.var(x.mean(axis=1), ddof=1))
    return {"seeds": s, "slices": n, "sd": math.sqrt(seed_var), "shift": max(seed_var - interaction / n, 0.0),
            "interaction": interaction, "sd_interaction_only": math.sqrt(interaction / n)}


def projected_sd(parts: dict, slices: int) -> float:
    return math.sqrt(parts["shift"] + parts["interaction"] / slices)


def matrix(table: dict, row_b: tuple, row_a: tuple, column: str, metric: str = "PSNR") -> np.ndarray:
    """(S, N) b - a per seed and slice on the slices every seed of both rows has, seeds ascending."""
    b, a = table[row_b][column], table[row_a][column]
    seeds = sorted(set(a) & set(b))
    keys = sorted(set.intersection(*(set(r.values[metric]) for r in [*a.values(), *b.values()])))
    return np.array([[b[s].values[metric][k] - a[s].values[metric][k] for k in keys] for s in seeds])


def main(argv: list[str] | None = None) -> None:
    parser = CliParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, required=True, help="a study's DOCS folder ({test set}/seedN/)")
    parser.add_argument("--kd-method", default="at")
    parser.add_argument("--project", type=int, nargs="+", default=[100, 1000], metavar="N",
                        help="test-set sizes to project the per-seed SD to")
    args = parser.parse_args(argv)
    dirs = sorted(d for d in args.docs.glob("*/seed*") if (d / "summary.json").is_file())
    if not dirs:
        raise UserError(f"--docs {args.docs} has no {{test set}}/seed*/summary.json")
    table, _ = report.collect(dirs)
    header = ["contrast", "test set", "seeds x slices", "per-seed SD", "SD if no shift", "shift SD",
              *(f"SD at {n} slices" for n in args.project)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for column in report.table_columns(table):
        for label, row_b, row_a in CONTRASTS:
            rows = [tuple(part.format(m=args.kd_method) if part else part for part in row) for row in (row_b, row_a)]
            if any(column not in table.get(row, {}) for row in rows):
                continue
            parts = decompose(matrix(table, *rows, column))
            cells = [label, column, f"{parts['seeds']} x {parts['slices']}", f"{parts['sd']:.2f}",
                     f"{parts['sd_interaction_only']:.2f}", f"{math.sqrt(parts['shift']):.2f}",
                     *(f"{projected_sd(parts, n):.2f}" for n in args.project)]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    run_cli(main)
