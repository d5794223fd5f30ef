"""Does a rerun of a committed cell reproduce its per-slice metrics bit for bit, and on which kind of CPU?

    python -m scripts.study.reproduced --committed docs/map/w8-4x --rerun results/cells/w8-4x/docs/w8-4x [--partial]

Both folders have study.sh's layout (``{test set}/seedN/metrics.csv`` and ``summary.json``). For every seed and
test set of ``--committed``, every model it scored (ZF included) must be in the rerun's metrics.csv with the
same rows: the same (volume, slice) keys and the same text in each of the committed file's columns. The CSVs
hold each float's shortest round-trip text, so equal text is equal bits. Models only the rerun has (new arms)
are not compared. The CPU kinds come from each summary.json's ``trained_on`` (utils.machine records, compared
on CPU model, vector ISA, torch build and threads: what decides the rounding).

Prints one line per (test set, seed) and a verdict, and exits 0 when every committed row is reproduced, 1 when
some differ or are missing (each named, with the largest PSNR difference), 2 on a bad folder.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from utils import CliParser, UserError, clean_text, describe_machine, run_cli

# The fields of a utils.machine record that decide a float result (cores do not: the map's runs use 1 thread).
KIND_FIELDS = ("cpu", "isa", "caps", "torch", "threads")


def read_rows(path: Path) -> tuple[list[str], dict[str, dict[tuple[str, str], dict[str, str]]]]:
    """The columns of an evaluate.py metrics.csv and ``{model: {(volume, slice): {column: text}}}``."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows: dict = {}
            for row in reader:
                rows.setdefault(row["model"], {})[(row["volume"], row["slice"])] = row
    except (OSError, KeyError, csv.Error) as exc:
        raise UserError(f"{path}: not an evaluate.py metrics.csv ({exc})") from exc
    return columns, rows


def kinds(summary_path: Path) -> set[tuple]:
    """The CPU kinds (:data:`KIND_FIELDS` values) of the runs a summary.json scored."""
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{summary_path}: cannot read it ({exc}); is it an evaluate.py --out-dir?") from exc
    records = summary.get("trained_on") if isinstance(summary.get("trained_on"), dict) else {}
    return {tuple(record.get(field) for field in KIND_FIELDS) for record in records.values() if isinstance(record, dict)}


def compare(committed: Path, rerun: Path, partial: bool = False) -> tuple[list[str], list[str]]:
    """(one line per compared seed folder, the problems found): see the module docstring. ``partial``: a rerun of
    some arms only; committed models it did not score are counted as not rerun, not as problems."""
    lines, problems = [], []
    seed_dirs = sorted(committed.glob("*/seed*/metrics.csv"))
    if not seed_dirs:
        raise UserError(f"--committed {committed} has no {{test set}}/seedN/metrics.csv; name a committed cell")
    for old_csv in seed_dirs:
        part = old_csv.parent.relative_to(committed)
        new_csv = rerun / part / "metrics.csv"
        if not new_csv.is_file():
            problems.append(f"{part}: the rerun has no metrics.csv")
            continue
        columns, old = read_rows(old_csv)
        _, new = read_rows(new_csv)
        differing, skipped = [], 0
        for model, old_rows in old.items():
            new_rows = new.get(model)
            if new_rows is None and partial:
                skipped += 1
                continue
            if new_rows is None:
                problems.append(f"{part}: {model} is missing from the rerun")
                continue
            if set(new_rows) != set(old_rows):
                problems.append(f"{part}: {model} scored other slices in the rerun")
                continue
            changed = [key for key in old_rows if any(old_rows[key][c] != new_rows[key].get(c) for c in columns)]
            if changed:
                worst = max(abs(float(old_rows[k]["PSNR"]) - float(new_rows[k]["PSNR"])) for k in changed)
                differing.append(model)
                problems.append(f"{part}: {model} differs on {len(changed)} of {len(old_rows)} slices "
                                f"(largest PSNR difference {worst:.3g} dB)")
        lines.append(f"{part}: {len(old) - skipped - len(differing)} of {len(old)} committed models identical"
                     + (f" ({skipped} not rerun)" if skipped else "") + f", {len(set(new) - set(old))} new")
    return lines, problems


def main(argv: list[str] | None = None) -> None:
    parser = CliParser(prog="python -m scripts.study.reproduced", description=__doc__.split("\n\n")[0])
    parser.add_argument("--committed", type=Path, required=True, help="the committed cell (e.g. docs/map/w8-4x)")
    parser.add_argument("--rerun", type=Path, required=True, help="the rerun's evaluation folder of the same cell")
    parser.add_argument("--partial", action="store_true",
                        help="the rerun trained some arms only: compare the committed models it scored, count the "
                             "others as not rerun")
    args = parser.parse_args(argv)
    for flag, folder in (("--committed", args.committed), ("--rerun", args.rerun)):
        if not folder.is_dir():
            raise UserError(f"{flag} {folder} does not exist")
    lines, problems = compare(args.committed, args.rerun, args.partial)
    old_kinds = set().union(*(kinds(p) for p in args.committed.glob("*/seed*/summary.json")))
    new_kinds = set().union(*(kinds(p) for p in args.rerun.glob("*/seed*/summary.json")))
    name = lambda kind: describe_machine(dict(zip(KIND_FIELDS, kind)))  # noqa: E731
    for line in lines:
        print(line)
    print("committed runs trained on: " + ("; ".join(sorted(map(name, old_kinds))) or "not recorded"))
    print("rerun trained on: " + ("; ".join(sorted(map(name, new_kinds))) or "not recorded"))
    same_kind = bool(old_kinds) and new_kinds == old_kinds
    if not problems:
        print("reproduced: every committed per-slice metric is identical, bit for bit")
        return
    for problem in problems:
        print(clean_text(f"not reproduced: {problem}"))
    print("the CPU kind is the same: the code or the setting changed the numbers" if same_kind
          else "the CPU kind differs: this rerun is a new cell, to be committed with its machine named")
    raise SystemExit(1)


if __name__ == "__main__":
    run_cli(main)
