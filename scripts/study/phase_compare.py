"""Does the magnitude protocol flatter the method? The demo's five arms with and without ``--synthetic-phase``.

Usage::

    python -m scripts.study.phase_compare --magnitude docs/synthetic-phase/magnitude \
        --phase docs/synthetic-phase/phase --out-dir docs/synthetic-phase [--overwrite]

Each folder holds what ``scripts/study/study.sh`` (``CONTROLS=0 KD_METHODS=at DOCS=...``) commits: one evaluate.py
folder ``{test set}/seed{N}`` per seed. Writes one Markdown file with, per setting (magnitude-derived
k-space, or the same magnitudes given a smooth random phase), each arm's PSNR / SSIM as the mean over seeds
and per seed; the KD ordering (arms ranked by PSNR) per seed; the contrasts of scripts/report.py's orderings
(per-seed differences, their mean and 95 % t-interval over seeds); and per arm the change from magnitude to
phase, paired by seed (the same training seed, slices and mask in both settings).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if not __package__:  # run by path: the repository root, which holds the packages, is not importable
    print("error: run it as a module from the repository root: python -m scripts.study.phase_compare ...",
          file=sys.stderr)
    sys.exit(2)

from scripts.study import contrasts  # noqa: E402
from scripts.report import collect, data_lines, row_order, table_columns  # noqa: E402
from data.outputs import write_text  # noqa: E402
from utils import CliParser, UserError, old_spellings, refuse_to_overwrite, run_cli  # noqa: E402

SETTINGS = ("magnitude", "phase")
# (label, arm b, arm a): read as "b - a", over seeds.
ORDERINGS = (("Teacher - Student", ("teacher", None), ("student", None)),
             ("SFT teacher - Teacher", ("sft", None), ("teacher", None)),
             ("Std-KD - Student", ("stdkd", "at"), ("student", None)),
             ("SFT-KD-Recon - Student", ("sftkd", "at"), ("student", None)),
             ("SFT-KD-Recon - Std-KD", ("sftkd", "at"), ("stdkd", "at")))


def _fmt(value: float, metric: str, sign: bool = False) -> str:
    digits = 2 if metric == "PSNR" else 4
    return "n/a" if not np.isfinite(value) else (f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}")


def _interval(diffs: np.ndarray, metric: str) -> str:
    found = contrasts.Contrast("", None, "", metric, diffs, [])
    low, high = found.interval()
    return f"{_fmt(found.mean, metric, True)} [{_fmt(low, metric, True)}, {_fmt(high, metric, True)}]"


def load(folder: Path) -> tuple[dict, str, list[Path]]:
    """The scripts/report.py table of one setting's seed folders, its single column and the folders."""
    dirs = sorted(p for p in folder.glob("*/seed*") if (p / "summary.json").is_file())
    if not dirs:
        raise UserError(f"{folder} holds no {{test set}}/seed{{N}}/summary.json; run scripts/study/study.sh with "
                        f"DOCS={folder} first")
    table, _ = collect(dirs)
    columns = table_columns(table)
    if len(columns) != 1:
        raise UserError(f"{folder} holds several test sets or accelerations ({', '.join(columns)}); one each")
    return table, columns[0], dirs


def arm_rows(tables: dict, columns: dict, metric: str) -> list[str]:
    """Per arm and setting: mean over seeds and the per-seed means; then the change phase - magnitude."""
    lines = [f"| arm | {' | '.join(f'{s} mean | {s} per seed' for s in SETTINGS)} | phase - magnitude, "
             "mean [95 % CI] | per seed |", "|---|" + "---|" * (2 * len(SETTINGS) + 2)]
    for key, label in row_order(tables["magnitude"]):
        runs = {s: tables[s].get(key, {}).get(columns[s]) for s in SETTINGS}
        if not all(runs.values()):
            continue
        cells = []
        for setting in SETTINGS:
            means = contrasts.seed_means(runs[setting], metric)
            order = sorted(means, key=lambda s: -1 if s is None else s)
            cells += [_fmt(float(np.mean(list(means.values()))), metric),
                      " ".join(_fmt(means[s], metric) for s in order)]
        _, change = contrasts.seed_differences(runs["magnitude"], runs["phase"], metric)
        lines.append(f"| {label} | {' | '.join(cells)} | {_interval(change, metric)} | "
                     f"{' '.join(_fmt(d, metric, True) for d in change)} |")
    return lines


def ordering_rows(tables: dict, columns: dict, metric: str) -> list[str]:
    """Per contrast and setting: mean [95 % CI] over seeds and per seed."""
    lines = [f"| contrast | {' | '.join(f'{s} mean [95 % CI] | {s} per seed' for s in SETTINGS)} |",
             "|---|" + "---|" * (2 * len(SETTINGS))]
    for label, key_b, key_a in ORDERINGS:
        cells = []
        for setting in SETTINGS:
            b, a = (tables[setting].get(key, {}).get(columns[setting]) for key in (key_b, key_a))
            if not a or not b:
                cells += ["–", "–"]
                continue
            _, diffs = contrasts.seed_differences(a, b, metric)
            cells += [_interval(diffs, metric), " ".join(_fmt(d, metric, True) for d in diffs)]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines


def ranking_rows(tables: dict, columns: dict) -> list[str]:
    """Per setting and seed: the arms from best to worst PSNR."""
    lines = ["| setting | seed | arms by PSNR, best first |", "|---|---|---|"]
    for setting in SETTINGS:
        labels = {key: label for key, label in row_order(tables[setting]) if key != ("zf", None)}
        seeds = sorted({seed for key in labels for seed in tables[setting][key].get(columns[setting], {})},
                       key=lambda s: -1 if s is None else s)
        for seed in seeds:
            scores = {label: tables[setting][key][columns[setting]][seed].mean("PSNR")
                      for key, label in labels.items() if seed in tables[setting][key].get(columns[setting], {})}
            ranked = sorted(scores, key=scores.get, reverse=True)
            lines.append(f"| {setting} | {seed} | {' > '.join(f'{name} ({scores[name]:.2f})' for name in ranked)} |")
    return lines


def build(folders: dict[str, Path]) -> str:
    tables, columns, notes = {}, {}, []
    for setting, folder in folders.items():
        tables[setting], columns[setting], dirs = load(folder)
        notes += [f"- {setting} ({folder}): {line.removeprefix('k-space: ')}" for line in data_lines(dirs) if line]
    lines = ["# The demo setting with and without `--synthetic-phase`", "",
             "Written by `python -m scripts.study.phase_compare` from the committed evaluation folders; the data:", "",
             *notes]
    for metric in contrasts.contrast_metrics():
        lines += ["", f"## {metric}{' (dB)' if metric == 'PSNR' else ''}", "",
                  "Each arm: mean over the test slices per seed; the mean over seeds; the change phase - magnitude "
                  "paired by seed, with its 95 % t-interval over seeds (sample std).", "",
                  *arm_rows(tables, columns, metric), "",
                  "Orderings, b - a per seed, mean with 95 % t-interval over seeds:", "",
                  *ordering_rows(tables, columns, metric)]
    lines += ["", "## Ranking per seed (PSNR on the test block, dB)", "", *ranking_rows(tables, columns)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = CliParser(description=__doc__.splitlines()[0])
    parser.add_argument("--magnitude", type=Path, required=True,
                        help="the seed folders of the magnitude setting (scripts/study/study.sh DOCS)")
    parser.add_argument("--phase", type=Path, required=True, help="the same with --synthetic-phase")
    old_spellings(parser.add_argument("--out-dir", "--out", type=Path, required=True,
                                      help="the folder of the comparison (comparison.md)"), "--out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out-dir/comparison.md")
    args = parser.parse_args(argv)
    out = args.out_dir / "comparison.md"
    refuse_to_overwrite(out, args.overwrite, "--out-dir")
    text = build({"magnitude": args.magnitude, "phase": args.phase})
    write_text(out, text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
