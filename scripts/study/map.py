"""The map of scripts/study/map.sh from its committed files: per cell (student width x acceleration) the teacher's lead
over the student and the primary contrast B - C (the SFT teacher's effect, initialisation held fixed), each the
mean over seeds with its 95 % t-interval (scripts/study/contrasts.py), as two heatmaps (PNG) and a Markdown table;
below that table, the no-KD arms' contrasts (B - N, C - N, C - L, D - L) a row per cell and KD method, and every
contrast of every cell with its interval, per-seed SD, minimum detectable effect and,
for a null, the effect its interval excludes.

    python -m scripts.study.map --map-dir docs/map --out-dir docs/map [--test-set mni152] [--kd-method at]

A cell is a folder of ``--map-dir`` holding ``{test set}/seedN/`` evaluation folders (scripts/study/study.sh's
``DOCS``). Its width is the student's as its runs recorded it (roles ``nets``), its acceleration the
evaluation's, so a folder's name cannot mislabel it. The table goes next to the PNG (``map.md``).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.masks import parse_acc
from scripts import report
from scripts.study import contrasts
from data.outputs import atomic_write, write_text
from utils import CliParser, UserError, clean_lines, old_spellings, refuse_to_overwrite, run_cli

PRIMARY_PREFIX = "B - C"


@dataclass
class Cell:
    """One cell: its folder, the student's width, the acceleration, its two mapped contrasts (None if missing)
    and every PSNR contrast of the study's table (the mapped two among them)."""

    folder: Path
    width: int
    acc: str
    gap: contrasts.Contrast | None
    primary: contrasts.Contrast | None
    every: list[contrasts.Contrast]
    recipes: dict[str, dict]


def student_width(table: dict, column: str, folder: Path) -> int:
    """The width every student run of the cell recorded (report.collect has checked that they agree)."""
    runs = table.get(("student", None), {}).get(column, {})
    widths = {run.nets["student"]["width"] for run in runs.values() if run.nets and "student" in run.nets}
    if len(widths) != 1:
        raise UserError(f"{folder}: its student runs record {'no' if not widths else 'several'} widths "
                        f"({sorted(widths)}); a map cell needs runs of this version with one student width")
    return widths.pop()


def cell_recipes(folder: Path, table: dict, column: str) -> dict[str, dict]:
    """``{row label: the recipe its runs recorded}`` (evaluate.py's ``recipe``, read by report.collect), checked to
    be the same for every seed of the cell; empty for cells whose runs recorded none."""
    found: dict[str, tuple[dict, int | None]] = {}
    for (role, method), per_column in table.items():
        run_label = role if method is None else f"{role} ({method})"
        for seed, run in sorted(per_column.get(column, {}).items(), key=lambda item: (item[0] is not None, item[0])):
            if not run.recipe:
                continue
            seen = found.setdefault(run_label, (run.recipe, seed))
            if seen[0] != run.recipe:
                raise UserError(f"{folder}: its {run_label} runs were trained in two settings (seed {seen[1]}: "
                                f"{_differences(seen[0], run.recipe)}, seed {seed}); a cell holds one setting")
    return {run_label: recipe for run_label, (recipe, _) in found.items()}


def _differences(a: dict, b: dict) -> str:
    keys = sorted(key for key in {*a, *b} if a.get(key) != b.get(key))
    return ", ".join(f"{key} {a.get(key)!r} against {b.get(key)!r}" for key in keys)


def check_one_setting(cells: list[Cell]) -> None:
    """Refuse a map whose cells trained a run of one name in different settings (the student's width and the
    acceleration excepted: they are the map's axes, and recipes do not hold them)."""
    seen: dict[str, tuple[dict, Path]] = {}
    for cell in cells:
        for run, recipe in cell.recipes.items():
            other = seen.setdefault(run, (recipe, cell.folder))
            if other[0] != recipe:
                raise UserError(f"{other[1]} and {cell.folder} trained {run} in different settings "
                                f"({_differences(other[0], recipe)}); a map compares cells of one setting: "
                                "rerun one of them with the other's STUDY_FLAGS, or map them apart (--map-dir)")


def read_cell(folder: Path, test_set: str, kd_method: str) -> Cell:
    # Arms evaluated after the rest of the cell (``<part>/{test set}/seedN``, e.g. nokd/) are read with it.
    dirs = sorted(d for pattern in (f"{test_set}/seed*", f"*/{test_set}/seed*") for d in folder.glob(pattern)
                  if (d / "summary.json").is_file())
    table, _ = report.collect(dirs)
    columns = report.table_columns(table)
    if len(columns) != 1:
        raise UserError(f"{folder}: its {test_set} evaluations have {len(columns)} accelerations ({columns}); "
                        "a map cell has one")
    column = columns[0]
    metric = "PSNR"
    found = [c for c in contrasts.all_contrasts(table, columns) if c.metric == metric]
    gap = next((c for c in found if c.label == "Teacher - Student"), None)
    primary = next((c for c in found if c.primary and c.method == kd_method and c.label.startswith(PRIMARY_PREFIX)),
                   None)
    return Cell(folder, student_width(table, column, folder), column, gap, primary, found,
                cell_recipes(folder, table, column))


def read_map(map_dir: Path, test_set: str, kd_method: str) -> list[Cell]:
    if not map_dir.is_dir():
        raise UserError(f"--map-dir {map_dir} does not exist; run bash scripts/study/map.sh first")
    cells = [read_cell(folder, test_set, kd_method) for folder in sorted(map_dir.iterdir())
             if folder.is_dir() and any((folder / test_set).glob("seed*/summary.json"))]
    if not cells:
        raise UserError(f"--map-dir {map_dir} has no cell with {test_set}/seed*/summary.json; run bash scripts/study/map.sh")
    seen: dict[tuple[int, str], Path] = {}
    for cell in cells:
        key = (cell.width, cell.acc)
        if key in seen:
            raise UserError(f"{seen[key]} and {cell.folder} are both the cell student width {cell.width}, {cell.acc}; "
                            "keep one")
        seen[key] = cell.folder
    check_one_setting(cells)
    return cells


def _interval(c: contrasts.Contrast | None) -> str:
    if c is None:
        return "–"
    low, high = c.interval()
    return f"{c.mean:+.2f} [{low:+.2f}, {high:+.2f}]" if np.isfinite(low) else f"{c.mean:+.2f}"


def _reading(c: contrasts.Contrast, compact: bool = False) -> str:
    """Where the interval lies: above or below 0, or, for a null, the effect it excludes at 95 % (``compact``:
    "null, > +0.19" for a table cell that says what the bound means once, in its caption)."""
    low, high = c.interval()
    if not np.isfinite(low):
        return "–"
    if low > 0:
        return "above 0"
    if high < 0:
        return "below 0"
    return f"null, > {high:+.2f}" if compact else f"null: > {high:+.2f} excluded"


def in_map_order(cells: list[Cell]) -> list[Cell]:
    """The cells by acceleration, then student width: the order of every table of the map."""
    return sorted(cells, key=lambda c: (parse_acc(c.acc), c.width))


def every_contrast(cells: list[Cell]) -> list[str]:
    """Markdown lines: per cell, every contrast of its study table (PSNR dB) with its power statement."""
    lines = ["", "Every contrast of every cell (PSNR dB, as each cell's `table.md`): mean [95 % t-interval]; SD: "
             "per-seed SD; MDE: minimum detectable effect of the cell's seeds (80 % power, two-sided paired t, "
             "alpha 0.05); for a null (interval containing 0), the effect above the interval's bound is excluded at "
             "95 %.", "",
             "| cell | contrast | mean [95 % CI] | SD | MDE | reading |", "|---|---|---|---|---|---|"]
    for cell in in_map_order(cells):
        for c in cell.every:
            label = f"**{c.label}** (primary)" if c.primary else c.label
            sd = f"{c.sd:.2f}" if np.isfinite(c.sd) else "–"
            mde = f"{c.mde:.2f}" if np.isfinite(c.mde) else "–"
            lines.append(f"| {cell.folder.name} | {label} | {_interval(c)} | {sd} | {mde} | {_reading(c)} |")
    return lines


def nokd_table(cells: list[Cell], test_set: str) -> list[str]:
    """Markdown lines: the no-KD arms' contrasts (family ``nokd``: B - N, C - N, C - L, D - L) of every cell and KD
    method in one row each, mean [95 % CI] (per-seed SD, MDE; reading); none when no cell has those arms.
    docs/map.md quotes these rows."""
    # (cell, KD method) -> {short name ("B - N"): contrast}, in the map's order
    rows: dict[tuple[str, str], dict[str, contrasts.Contrast]] = {}
    for cell in in_map_order(cells):
        for c in cell.every:
            if c.family == "nokd":
                rows.setdefault((cell.folder.name, c.method or "–"), {})[c.label.split(" (")[0]] = c
    if not rows:
        return []
    names = list(dict.fromkeys(name for by_name in rows.values() for name in by_name))
    lines = ["", f"The no-KD arms' contrasts (N: the SFT blocks without KD; L: the student alone for the pre-trained "
             f"arms' epochs), {test_set}, PSNR dB: mean [95 % t-interval] (per-seed SD, MDE; reading: a null's "
             "upper bound is the effect it excludes).", "",
             "| cell | test set | KD | " + " | ".join(names) + " |", "|---" * (3 + len(names)) + "|"]
    for (name, method), by_name in rows.items():
        texts = [f"{_interval(c)} (SD {c.sd:.2f}, MDE {c.mde:.2f}; {_reading(c, compact=True)})"
                 if c is not None and np.isfinite(c.sd) else _interval(c)
                 for c in (by_name.get(label) for label in names)]
        lines.append(f"| {name} | {test_set} | {method} | " + " | ".join(texts) + " |")
    return lines


def markdown(cells: list[Cell], test_set: str, kd_method: str) -> str:
    lines = [f"Map, {test_set} test set, PSNR dB: mean over seeds [95 % t-interval]; B - C with KD method "
             f"{kd_method}; SD: per-seed SD of B - C; MDE: its minimum detectable effect (80 % power, two-sided "
             "paired t, alpha 0.05).", "",
             "| cell | student width | acc | seeds | Teacher - Student | B - C | SD | MDE |",
             "|---|---|---|---|---|---|---|---|"]
    for cell in in_map_order(cells):
        p = cell.primary
        sd = f"{p.sd:.2f}" if p is not None and np.isfinite(p.sd) else "–"
        mde = f"{p.mde:.2f}" if p is not None and np.isfinite(p.mde) else "–"
        n = len(p.diffs) if p is not None else len(cell.gap.diffs) if cell.gap is not None else 0
        lines.append(f"| {cell.folder.name} | {cell.width} | {cell.acc} | {n} | {_interval(cell.gap)} | "
                     f"{_interval(p)} | {sd} | {mde} |")
    return "\n".join(lines + setting_line(cells) + nokd_table(cells, test_set) + every_contrast(cells)) + "\n"


def setting_line(cells: list[Cell]) -> list[str]:
    """Markdown lines: which cells recorded their training setting (checked alike), which did not."""
    recorded = [c.folder.name for c in cells if c.recipes]
    missing = [c.folder.name for c in cells if not c.recipes]
    if not recorded:
        return ["", "Training setting: recorded by no cell (runs of older versions), so not checked."]
    text = f"Training setting (evaluate.py's `recipe`): recorded and the same in {', '.join(recorded)}"
    if missing:
        text += f"; not recorded (runs of older versions, not checked): {', '.join(missing)}"
    return ["", text + "."]


def heatmaps(cells: list[Cell], test_set: str, kd_method: str) -> bytes:
    """PNG bytes: two heatmaps (rows student width, columns acceleration), colour the mean (diverging around 0),
    each cell's text its mean and 95 % interval."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted({c.width for c in cells})
    accs = sorted({c.acc for c in cells}, key=parse_acc)
    fig, axes = plt.subplots(1, 2, figsize=(4.0 + 2.2 * len(accs), 1.6 + 0.9 * len(widths)), squeeze=False)
    panels = (("Teacher - Student (dB)", lambda c: c.gap), (f"B - C, {kd_method} (dB)", lambda c: c.primary))
    for ax, (title, pick) in zip(axes[0], panels):
        grid = np.full((len(widths), len(accs)), np.nan)
        for cell in cells:
            c = pick(cell)
            if c is not None:
                grid[widths.index(cell.width), accs.index(cell.acc)] = c.mean
        limit = max(float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0, 0.1)
        image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for cell in cells:
            c = pick(cell)
            text = _interval(c).replace(" [", "\n[")
            ax.text(accs.index(cell.acc), widths.index(cell.width), text, ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(accs)), accs)
        ax.set_yticks(range(len(widths)), [f"width {w}" for w in widths])
        ax.set_xlabel("acceleration")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"{test_set}: mean over seeds [95 % t-interval]", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = CliParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--map-dir", type=Path, default=Path("docs/map"), help="the cells' folders")
    old_spellings(parser.add_argument("--out-dir", "--out", type=Path, required=True,
                                      help="where the heatmaps (map.png) and their table (map.md) go"), "--out")
    parser.add_argument("--test-set", default="mni152", help="which test set of each cell")
    parser.add_argument("--kd-method", default="at", help="the KD method of the B - C heatmap")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing PNG and table")
    args = parser.parse_args(argv)
    png_path, table_path = args.out_dir / "map.png", args.out_dir / "map.md"
    for path in (png_path, table_path):
        refuse_to_overwrite(path, args.overwrite, "--out-dir")
    cells = read_map(args.map_dir, args.test_set, args.kd_method)
    if all(c.primary is None for c in cells):
        raise UserError(f"no cell of {args.map_dir} has B - C for --kd-method {args.kd_method}; name a method the "
                        "cells trained")
    text = clean_lines(markdown(cells, args.test_set, args.kd_method))  # it quotes what the cells' files hold
    png = heatmaps(cells, args.test_set, args.kd_method)
    atomic_write(png_path, lambda f: f.write(png))
    write_text(table_path, text)
    print(text, end="")
    print(f"wrote {png_path} and {table_path}")


if __name__ == "__main__":
    run_cli(main)
