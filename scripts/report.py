"""Turn evaluate.py output folders into the paper's comparison table (Markdown + CSV) with Wilcoxon tests.

Usage::

    python -m scripts.report --eval-dirs results/eval_4x results/eval_5x --out-dir results/report

Each ``--eval-dirs`` folder is what ``evaluate.py`` wrote (``summary.json`` + ``metrics.csv``); folders with the
same acceleration are merged (e.g. one per seed), and each model's row comes from the roles its checkpoint
recorded, else from its name. Writes ``OUT/table.md`` (the machine that trained the runs, the split and slices
scored, every role's PSNR and SSIM, the Wilcoxon and ordering tables, the teacher-student gap) and
``OUT/table.csv``; ``--contrasts`` adds the study's contrasts, ``--plot`` a figure, ``--compression DIR`` the tables
of scripts/compression.py's report (read from DIR/compression.json). Model names, rows, columns
and statistics: scripts/README.md, "Model names, roles and the report".
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import ttest_rel

if not __package__:  # run by path: the repository root, which holds the packages, is not importable
    print("error: run it as a module from the repository root: python -m scripts.report ...", file=sys.stderr)
    sys.exit(2)

from data.masks import parse_acc  # noqa: E402
from models.evaluation.cs import CS_ROW  # noqa: E402
from models.evaluation.metrics import metric as registered, used_for  # noqa: E402
from models.distill.roles import BASE_RUNS, kd_prefix  # noqa: E402
from scripts.study import contrasts  # noqa: E402
from scripts.study import arms  # noqa: E402
from scripts.study.arms import ARM_LABELS  # noqa: E402
from data.outputs import atomic_write, staged, write_text  # noqa: E402
from utils import (CliParser, UserError, clean_lines, clean_text, csv_text, describe_machine,  # noqa: E402
                   refuse_to_overwrite, run_cli)

# sft0 / sft0kd: the SFT arm trained with --imitation-weight 0, which is what the public code's
# vanishing imitation term trains in effect (scripts/study/study.sh runs it beside the paper's formula).
# Row key (a base run's name) -> table label.
BASE_ROLES = {"zf": "ZF", "cs": CS_ROW, "teacher": "Teacher", "student": "Student", "sft": "SFT teacher",
              "sft0": "SFT teacher, imitation 0"}
# Rows that are not trained models (one per column, no seeds): the zero-filled input and the CS baseline.
BASELINE_ROLES = ("zf", "cs")
KD_ROLES = ARM_LABELS
_NAME = re.compile(r"^(?:(?P<base>zf|teacher|student|sft0|sft)|(?P<kd>stdkd|sftkd|sft0kd)-(?P<method>.+?))"
                   r"(?:-seed(?P<seed>\d+))?$")
SEED_MARK = "†"
# Joins a role and the accelerations a model scored across accelerations was trained at ("student@5x").
CROSS = "@"
# Staging folders and the list of the files a report wrote in --out-dir (data/outputs.py).
STAGE_PREFIX, MANIFEST = ".report-", "report_manifest.json"


def parse_model_name(name: str) -> tuple[str, str | None, int | None] | None:
    """``(role, kd_method, seed)`` of a model name, e.g. ``("sftkd", "at", 2)``; None if it is not one of ours.

    role is one of ``zf, teacher, student, sft, stdkd, sftkd``; kd_method is None for the first four.
    """
    if name.strip() == CS_ROW:
        return "cs", None, None
    match = _NAME.match(name.strip().lower())
    if match is None or (match["base"] == "zf" and match["seed"] is not None):
        return None
    seed = int(match["seed"]) if match["seed"] is not None else None
    if match["base"]:
        return match["base"], None, seed
    return match["kd"], match["method"], seed


@dataclass
class Run:
    """One evaluated model: per-slice PSNR and SSIM keyed by (volume, slice), and where it came from."""
    source: Path
    values: dict[str, dict[tuple[str, int], float]] = field(default_factory=dict)
    test_set: str | None = None
    key: tuple[str, str | None, int | None] | None = None
    nets: dict | None = None  # the sizes its roles record (models/distill/roles.py), None if unrecorded
    recipe: dict | None = None  # the training setting evaluate.py recorded (its ``recipe``), None if unrecorded

    def mean(self, metric: str) -> float:
        return float(np.mean(list(self.values[metric].values())))


def table_metrics() -> tuple[str, ...]:
    """The columns of the table: the registry's metrics marked ``table`` (models/evaluation/metrics.py)."""
    return tuple(m.name for m in used_for("table"))


def read_metrics() -> tuple[str, ...]:
    """The metrics read from metrics.csv: the table's and the contrasts'."""
    return tuple(dict.fromkeys(m.name for m in (*used_for("table"), *used_for("contrasts"))))


def role_key(roles: dict) -> tuple[str, str | None, int | None] | None:
    """``(role, kd_method, seed)`` from the roles evaluate.py copied out of a checkpoint (models/distill/roles.py); None
    for roles this report has no row for."""
    model, seed = roles.get("model"), roles.get("seed")
    if model in BASE_RUNS:
        return BASE_RUNS[model], None, seed
    if model == "kd" and {"teacher", "init", "kd_method"} <= set(roles):
        prefix = kd_prefix(roles["teacher"], roles["init"])
        return (prefix, clean_text(roles["kd_method"]), seed) if prefix in KD_ROLES else None
    return None


def read_eval_dir(folder: Path) -> tuple[str, dict[str, Run]]:
    """Column (acceleration, and the test set when several are read: see :func:`collect`) and per-model runs of
    one evaluate.py folder; bad folders are a :class:`UserError`. Each run's ``key`` is its (role, kd_method,
    seed), from its recorded roles, else from its name."""
    summary_path, metrics_path = folder / "summary.json", folder / "metrics.csv"
    if not folder.is_dir():
        raise UserError(f"--eval-dirs {folder} does not exist; pass folders written by evaluate.py")
    for path in (summary_path, metrics_path):
        if not path.is_file():
            volume_only = any((folder / name).is_file() for name in ("metrics_fastmri.csv", "metrics_public_volume.csv"))
            hint = (" (it holds only volume-wise metrics: rerun evaluate.py with --metrics all)"
                    if path == metrics_path and volume_only else "")
            raise UserError(f"--eval-dirs {folder} has no {path.name}; is it an evaluate.py --out-dir?{hint}")
    try:
        summary = json.loads(summary_path.read_text())
        acc = summary["acc"]
        parse_acc(acc)
    except (json.JSONDecodeError, KeyError, TypeError, UserError) as exc:
        raise UserError(f"{summary_path} has no valid \"acc\" entry ({exc}); rerun evaluate.py") from exc
    runs: dict[str, Run] = {}
    with metrics_path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"model", "volume", "slice", *read_metrics()} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{metrics_path} lacks the columns {', '.join(sorted(missing))}; rerun evaluate.py")
        try:
            for row in reader:
                # Names and the test set come from files: they are printed (utils.clean_text).
                test_set = summary.get("test_set")
                run = runs.setdefault(clean_text(row["model"]), Run(folder, {m: {} for m in read_metrics()},
                                                                    test_set=test_set and clean_text(test_set)))
                key = (row["volume"], int(row["slice"]))
                for metric in read_metrics():
                    run.values[metric][key] = float(row[metric])
        except (ValueError, TypeError) as exc:
            raise UserError(f"{metrics_path} line {reader.line_num}: not a number ({exc}); "
                            "rerun evaluate.py") from exc
    roles = summary.get("roles") if isinstance(summary.get("roles"), dict) else {}
    trained = summary.get("trained_acc") if isinstance(summary.get("trained_acc"), dict) else {}
    recipes = summary.get("recipe") if isinstance(summary.get("recipe"), dict) else {}
    for name, run in runs.items():
        recorded = roles.get(name)
        run.key = role_key(recorded) if recorded else parse_model_name(name)
        run.nets = recorded.get("nets") if recorded else None
        run.recipe = recipes.get(name) or None
        accs = trained.get(name) if isinstance(trained.get(name), list) else []
        if run.key is not None and accs and acc not in accs:
            # Scored across accelerations (evaluate.py --cross-acc): a row of its own, never the native one.
            run.key = (f"{run.key[0]}{CROSS}{'+'.join(map(str, accs))}", *run.key[1:])
    return acc, runs


def table_columns(table: dict) -> list[str]:
    """The columns of a :func:`collect` table: ``"4x"`` or ``"4x colin27"``, by acceleration, then in the order
    the folders were given."""
    seen = dict.fromkeys(column for per_column in table.values() for column in per_column)
    return sorted(seen, key=lambda column: parse_acc(column.partition(" ")[0]))


def collect(folders: list[Path]) -> tuple[dict, list[str]]:
    """``{(role, method): {acc: {seed: Run}}}`` over all folders, and the names that fit no role.

    The columns are accelerations; when the folders scored more than one test set (summary.json's
    ``test_set``, e.g. a held-out block and another brain), ``"{acc} {test_set}"``. ZF appears in every folder;
    the first one of each column is kept. Any other model seen twice with the same column and seed is a
    :class:`UserError` naming both folders.
    """
    table: dict[tuple[str, str | None], dict[str, dict[int | None, Run]]] = {}
    unknown: list[str] = []
    read = [read_eval_dir(folder) for folder in folders]
    several_sets = len({run.test_set for _, runs in read for run in runs.values()}) > 1
    for folder, (acc, runs) in zip(folders, read):
        for name, run in runs.items():
            if run.key is None:
                unknown.append(f"{name} ({folder})")
                continue
            column = f"{acc} {run.test_set}" if several_sets else acc
            role, method, seed = run.key
            seeds = table.setdefault((role, method), {}).setdefault(column, {})
            if seed in seeds:
                if role in BASELINE_ROLES:
                    continue
                raise UserError(f"model {name} at {column} is in both {seeds[seed].source} and {folder}; "
                                "keep one, or rename one with a -seed{N} suffix (evaluate.py --names)")
            seeds[seed] = run
    for per_column in table.values():
        check_one_size([(seed, run) for seeds in per_column.values() for seed, run in seeds.items()])
    return table, unknown


def check_one_size(runs: list[tuple[int | None, Run]]) -> None:
    """A :class:`UserError` when the runs of one row recorded networks of different sizes (e.g. a width-8 and a
    width-32 student): their mean would describe neither. Runs that record no sizes pass."""
    sized = [(seed, run) for seed, run in runs if run.nets is not None]
    for seed, run in sized[1:]:
        if run.nets != sized[0][1].nets:
            first_seed, first = sized[0]
            raise UserError(f"the {run.key[0]} runs of {first.source} (seed {first_seed}) and {run.source} (seed "
                            f"{seed}) have networks of different sizes ({json.dumps(first.nets, sort_keys=True)} vs "
                            f"{json.dumps(run.nets, sort_keys=True)}); report each size on its own (separate "
                            "--eval-dirs)")


def row_order(table: dict) -> list[tuple[tuple[str, str | None], str]]:
    """Table rows as ``((role, method), label)``: base roles first, then each KD method's pair, then the no-KD
    arms (N, L: their own label) and any other run of their method."""
    rows = [((role, None), label) for role, label in BASE_ROLES.items() if (role, None) in table]
    methods = {method for role, method in table if method is not None}
    for method in arms.study_methods(methods):
        rows += [((role, method), f"{label} ({method})") for role, label in KD_ROLES.items()
                 if (role, method) in table]
    own = {arm.key(""): arm.label for arm in arms.own_method_arms()}
    rows += [(key, label) for key, label in own.items() if key in table]
    for method in sorted(methods & arms.OWN_METHODS):
        rows += [((role, method), f"{label} ({method})") for role, label in KD_ROLES.items()
                 if (role, method) in table and (role, method) not in own]
    for role, method in sorted((key for key in table if CROSS in key[0]), key=lambda k: (k[0], k[1] or "")):
        base, _, trained = role.partition(CROSS)
        label = BASE_ROLES[base] if method is None else f"{KD_ROLES[base]} ({method})"
        rows.append(((role, method), f"{label}, trained at {trained.replace('+', ' ')}"))
    return rows


def central(seeds: dict[int | None, Run], metric: str) -> tuple[float, float, int]:
    """(mean, std, number of seeds): over slices for one run (population std), over per-seed means for several
    (sample std, ``ddof=1``: the seeds are a sample of the runs one could have made)."""
    if len(seeds) == 1:
        values = list(next(iter(seeds.values())).values[metric].values())
        return float(np.mean(values)), float(np.std(values)), 1
    values = [run.mean(metric) for run in seeds.values()]
    return float(np.mean(values)), float(np.std(values, ddof=1)), len(seeds)


def format_cell(mean: float, std: float, metric: str) -> str:
    """``39.76 ± 0.85`` for PSNR, ``0.9769 ± 0.0040`` for SSIM."""
    digits = registered(metric).digits
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_p(p: float) -> str:
    """A p-value as printed in the table: three significant digits, ``n/a`` when undefined."""
    return "n/a" if not np.isfinite(p) else f"{p:.3g}"


def build_report(table: dict, notes: list[str] = ()) -> tuple[str, list[dict]]:
    """The Markdown text (table, ``notes`` lines under it, Wilcoxon table, gap lines) and the CSV rows of a
    :func:`collect` table."""
    accs = table_columns(table)
    rows = row_order(table)
    header = ["Method", *(f"{metric} {acc}" for acc in accs for metric in table_metrics())]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv_rows, any_seeds = [], False
    for key, label in rows:
        cells, csv_row = [label], {"method": label}
        for acc in accs:
            seeds = table[key].get(acc)
            for metric in table_metrics():
                if not seeds:
                    cells.append("–")
                    continue
                mean, std, n_seeds = central(seeds, metric)
                any_seeds |= n_seeds > 1
                cells.append(format_cell(mean, std, metric) + (f" {SEED_MARK}" if n_seeds > 1 else ""))
                csv_row.update({f"{metric}_{acc}_mean": mean, f"{metric}_{acc}_std": std})
            csv_row[f"seeds_{acc}"] = len(seeds) if seeds else ""
            if key[0] == "sftkd" and seeds and table.get(("stdkd", key[1]), {}).get(acc):
                csv_row[f"wilcoxon_p_{acc}"] = contrasts.wilcoxon_p(*contrasts.slice_pairs(table[("stdkd", key[1])][acc], seeds, "PSNR"))
        md.append("| " + " | ".join(cells) + " |")
        csv_rows.append(csv_row)
    md.append("")
    md.append("Cells: mean ± std over slices (population std)." + (
        f" {SEED_MARK} several seeds: mean ± sample std (ddof 1) over seeds of each seed's mean over slices."
        if any_seeds else ""))
    md += notes
    md += wilcoxon_table(table, accs)
    md += comparison_table(table, accs)
    md += per_seed_table(table, accs)
    gaps = gap_lines(table, accs)
    if gaps:
        md += ["", "Teacher-student gap (student minus teacher PSNR):", "", *(f"- {line}" for line in gaps)]
    return "\n".join(md) + "\n", csv_rows


def wilcoxon_table(table: dict, accs: list[str]) -> list[str]:
    """Markdown lines: per KD method and acceleration, mean PSNR of both students, difference and p-value."""
    lines = ["", "Paired Wilcoxon signed-rank test of per-slice PSNR, SFT-KD-Recon vs Std-KD "
             "(two-sided, slices matched by volume and slice):", "",
             "| KD method | acc | Std-KD PSNR | SFT-KD-Recon PSNR | difference (dB) | p | slices |",
             "|---|---|---|---|---|---|---|"]
    count = 0
    for method in arms.study_methods(method for _, method in table):
        for acc in accs:
            std_kd = table.get(("stdkd", method), {}).get(acc)
            sft_kd = table.get(("sftkd", method), {}).get(acc)
            if not std_kd or not sft_kd:
                continue
            x, y = contrasts.slice_pairs(std_kd, sft_kd, "PSNR")
            diff = float(np.mean(y - x)) if len(x) else float("nan")
            lines.append(f"| {method} | {acc} | {np.mean(x):.2f} | {np.mean(y):.2f} | {diff:+.2f} | "
                         f"{format_p(contrasts.wilcoxon_p(x, y))} | {len(x)} |")
            count += 1
    return lines if count else []


def gap_lines(table: dict, accs: list[str]) -> list[str]:
    """Per acceleration: student minus teacher PSNR, and the best SFT-KD-Recon student minus teacher."""
    lines = []
    for acc in accs:
        teacher = table.get(("teacher", None), {}).get(acc)
        if not teacher:
            continue
        teacher_psnr = central(teacher, "PSNR")[0]
        parts = []
        student = table.get(("student", None), {}).get(acc)
        if student:
            parts.append(f"student {central(student, 'PSNR')[0] - teacher_psnr:+.2f} dB")
        sft_kd = {method: central(per_acc[acc], "PSNR")[0] for (role, method), per_acc in table.items()
                  if role == "sftkd" and per_acc.get(acc)}
        if sft_kd:
            best = max(sft_kd, key=sft_kd.get)
            parts.append(f"best SFT-KD-Recon student ({best}) {sft_kd[best] - teacher_psnr:+.2f} dB")
        if parts:
            lines.append(f"{acc}: " + ", ".join(parts))
    return lines


def paired_over_seeds(a: dict[int | None, Run], b: dict[int | None, Run]) -> tuple[np.ndarray, float]:
    """Per-seed PSNR difference ``b - a`` on the seeds both have ((n,) float) and its paired t-test p.

    A t-test rather than a rank test: with 3 seeds the smallest two-sided Wilcoxon p is 0.25, so a rank
    test could never speak. p is NaN with fewer than 2 common seeds or identical differences.
    """
    common, diffs = contrasts.seed_differences(a, b, "PSNR")
    if len(diffs) < 2 or np.all(diffs == diffs[0]):
        return diffs, float("nan")
    ma, mb = contrasts.seed_means(a, "PSNR"), contrasts.seed_means(b, "PSNR")
    return diffs, float(ttest_rel([mb[s] for s in common], [ma[s] for s in common]).pvalue)


def comparisons(table: dict) -> list[tuple[str, tuple, tuple]]:
    """The paper's orderings as ``(label, key_a, key_b)`` pairs, read as "b minus a", present in ``table``."""
    pairs = [("Teacher - Student", ("student", None), ("teacher", None)),
             ("SFT teacher - Teacher", ("teacher", None), ("sft", None)),
             ("SFT teacher, imitation 0 - Teacher", ("teacher", None), ("sft0", None))]
    for method in arms.study_methods(method for _, method in table):
        pairs += [(f"Std-KD ({method}) - Student", ("student", None), ("stdkd", method)),
                  (f"SFT-KD-Recon ({method}) - Student", ("student", None), ("sftkd", method)),
                  (f"SFT-KD-Recon ({method}) - Std-KD ({method})", ("stdkd", method), ("sftkd", method)),
                  (f"SFT-KD-Recon, imitation 0 ({method}) - Std-KD ({method})", ("stdkd", method),
                   ("sft0kd", method))]
    return [(label, a, b) for label, a, b in pairs if a in table and b in table]


def comparison_table(table: dict, accs: list[str]) -> list[str]:
    """Markdown lines: each ordering's PSNR difference with a per-slice and an over-seeds paired test."""
    lines = ["", "Orderings (PSNR difference in dB, b - a for the pair \"b - a\"; per-slice p: Wilcoxon "
             "signed-rank over slices, each slice averaged over seeds; over seeds: the difference per seed "
             "and a paired t-test over seeds):", "",
             "| comparison | acc | difference (dB) | per-slice p | per seed (dB) | over-seeds p |",
             "|---|---|---|---|---|---|"]
    count = 0
    for label, key_a, key_b in comparisons(table):
        for acc in accs:
            a, b = table[key_a].get(acc), table[key_b].get(acc)
            if not a or not b:
                continue
            x, y = contrasts.slice_pairs(a, b, "PSNR")
            diffs, p_seeds = paired_over_seeds(a, b)
            per_seed = " ".join(f"{d:+.2f}" for d in diffs) if len(diffs) > 1 else "–"
            lines.append(f"| {label} | {acc} | {float(np.mean(y - x)):+.2f} | {format_p(contrasts.wilcoxon_p(x, y))} | "
                         f"{per_seed} | {format_p(p_seeds)} |")
            count += 1
    return lines if count else []


def per_seed_table(table: dict, accs: list[str]) -> list[str]:
    """Markdown lines: every model's mean PSNR / SSIM per seed (only when some model has several seeds)."""
    all_seeds = sorted({seed for per_acc in table.values() for seeds in per_acc.values() for seed in seeds
                        if seed is not None})
    if len(all_seeds) < 2:
        return []
    lines = ["", "Per seed (mean over slices, PSNR dB / SSIM):", "",
             "| Method | acc | " + " | ".join(f"seed {s}" for s in all_seeds) + " |",
             "|---|---|" + "---|" * len(all_seeds)]
    for key, label in row_order(table):
        for acc in accs:
            seeds = table[key].get(acc)
            if not seeds or key[0] in BASELINE_ROLES:
                continue
            cells = [f"{seeds[s].mean('PSNR'):.2f} / {seeds[s].mean('SSIM'):.4f}" if s in seeds else "–"
                     for s in all_seeds]
            lines.append(f"| {label} | {acc} | " + " | ".join(cells) + " |")
    return lines


def role_label(name: str) -> str | None:
    """The table's label of a model name (``SFT-KD-Recon (at), seed 2``), None for names that fit no role."""
    parsed = parse_model_name(name)
    if parsed is None:
        return None
    role, method, seed = parsed
    own = {arm.key(""): arm.label for arm in arms.own_method_arms()}
    label = BASE_ROLES[role] if method is None else own.get((role, method)) or f"{KD_ROLES[role]} ({method})"
    return label if seed is None else f"{label}, seed {seed}"


# summary.json entry -> (title, (metric, digits) columns) of the volume-wise tables appended to table.md.
VOLUME_TABLES = {
    "fastmri": ("fastMRI's volume-wise metrics (evaluate.py --metrics fastmri or all",
                (("NMSE", 4), ("PSNR", 2), ("SSIM", 4))),
    "public_volume": ("The public SFT-KD-Recon evaluate.py's volume-wise metrics (evaluate.py --metrics "
                      "public-volume or all; HFN: 3 x 3 Laplacian, prediction clipped to [0, 1]",
                      (("NMSE", 4), ("PSNR", 2), ("SSIM", 4), ("HFN", 4))),
}


def machine_line(folders: list[Path], fallback: dict | None = None) -> str:
    """Markdown: the machines that trained the models of a table (summary.json's ``trained_on``, which
    evaluate.py copies from each checkpoint), each with the number of its runs; ``fallback`` (a utils.machine
    record, ``--machine``) stands for runs whose checkpoints recorded none, such as the committed study's. A
    single seed's numbers, and which arm comes first, depend on the CPU kind: a kernel's ISA and blocking change
    the rounding, and training amplifies it."""
    runs: dict[str, set[str]] = {}  # machine -> checkpoints (a run scored on two test sets counts once)
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        recorded = summary.get("trained_on") if isinstance(summary.get("trained_on"), dict) else {}
        for name, path in summary.get("checkpoints", {}).items():
            record = recorded.get(name) if isinstance(recorded.get(name), dict) else fallback
            runs.setdefault(describe_machine(record) if record else "not recorded", set()).add(path)
    if not runs:  # a summary.json without a "checkpoints" entry
        return f"Trained on: {describe_machine(fallback) if fallback else 'not recorded'}."
    if len(runs) == 1:
        return f"Trained on: {next(iter(runs))}."
    return "Trained on: " + "; ".join(f"{text} ({len(paths)} run{'s' if len(paths) > 1 else ''})"
                                       for text, paths in runs.items()) + "."


def volume_table(folders: list[Path], key: str) -> list[str]:
    """Markdown lines: the ``key`` entry (see :data:`VOLUME_TABLES`) of each folder's summary.json, one row per
    folder and model with a known role, in the folder's order; empty when no folder has one."""
    title, columns = VOLUME_TABLES[key]
    lines = ["", f"{title}; mean ± std over volumes, population std):", "",
             f"| folder | acc | Method | {' | '.join(m for m, _ in columns)} | volumes |",
             "|---|---|---|" + "---|" * len(columns) + "---|"]
    count = 0
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        for name, stats in summary.get(key, {}).items():
            label = role_label(name)
            if label is None:
                continue
            cells = [f"{stats[m]['mean']:.{d}f} ± {stats[m]['std']:.{d}f}" for m, d in columns]
            lines.append(f"| {folder.name} | {summary['acc']} | {label} | {' | '.join(cells)} | "
                         f"{stats['PSNR']['n']} |")
            count += 1
    return lines if count else []


def plot(table: dict, path: Path, write) -> None:
    """PNG: PSNR and SSIM per model and acceleration, mean with error bars (std over seeds, else over
    slices) and each seed's mean as a dot, handed to ``write(path, png_bytes)``. ZF is left out: its level would
    flatten every other difference."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accs = table_columns(table)
    rows = [(key, label) for key, label in row_order(table) if key[0] not in BASELINE_ROLES]
    fig, axes = plt.subplots(len(accs), 2, figsize=(11, 1.2 + 0.45 * len(rows) * len(accs)), squeeze=False)
    for r, acc in enumerate(accs):
        for c, metric in enumerate(table_metrics()):
            ax = axes[r][c]
            for y, (key, label) in enumerate(rows):
                seeds = table[key].get(acc)
                if not seeds:
                    continue
                mean, std, n_seeds = central(seeds, metric)
                ax.errorbar(mean, y, xerr=std, fmt="o", color="C1" if key[0] in ("sftkd", "sft0kd") else "C0",
                            capsize=3)
                if n_seeds > 1:
                    ax.plot(list(contrasts.seed_means(seeds, metric).values()), [y] * n_seeds, ".", color="0.5")
            ax.set_yticks(range(len(rows)), [label for _, label in rows] if c == 0 else [])
            ax.invert_yaxis()
            ax.grid(axis="x", alpha=0.3)
            ax.set_title(f"{metric} {acc}")
    fig.suptitle("mean ± std over seeds (grey: each seed) or over slices (one seed)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write(path, buffer.getvalue())


def read_machine(path: Path) -> dict:
    """The utils.machine record in ``path`` (``--machine``), or a :class:`UserError`."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--machine {path}: cannot read a JSON machine record ({exc})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("cpu"), str):
        raise UserError(f"--machine {path}: not a machine record (a JSON object with \"cpu\", \"isa\", "
                        "\"torch\", \"threads\")")
    return record


def data_lines(folders: list[Path]) -> list[str]:
    """What the scored data were, from each summary.json's ``image`` and ``kspace`` (evaluate.py; multi-coil data
    also ``coils``, ``coil_source`` and ``maps``): one line per kind, naming the folders when they differ, and the
    CS row's lambdas. Folders written before these entries add nothing (all data were
    magnitude-derived then), so the committed study tables rebuild as they were."""
    kinds: dict[str, list[str]] = {}
    lambdas: list[str] = []
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        if "kspace" in summary:
            kind = f"k-space: {summary['kspace']} ({summary.get('image')} images)"
            if "coils" in summary:
                source = clean_text(str(summary.get("coil_source") or "")).split(" (")[0]
                kind = (f"multi-coil, {summary['coils']} coils{f' ({source})' if source else ''}, maps: "
                        f"{clean_text(str(summary.get('maps')))}; {kind}")
            kinds.setdefault(kind, []).append(str(folder))
        cs = summary.get("cs")
        if isinstance(cs, dict) and isinstance(cs.get("lambda"), (int, float)):
            lambdas.append(f"{cs['lambda']:g} ({clean_text(str(cs.get('chosen_on')))}, {folder.name})")
    lines = list(kinds) if len(kinds) == 1 else [f"{kind}: {', '.join(names)}" for kind, names in kinds.items()]
    if lambdas:
        lines.append(f"{CS_ROW}: sigpy's L1WaveletRecon, lambda {'; '.join(lambdas)}")
    return ["", *lines] if lines else []


def scored_line(table: dict) -> str:
    """Markdown: which split each column scored and on how many slices of how many volumes, e.g. "Scored on the
    test split, 28 slices of 1 volume." (one column) or "Scored on the test split: 4x mni152 28 slices of 1
    volume; 4x colin27 136 slices of 1 volume." The split is each folder's summary.json ``split``; the slices are
    the (volume, slice) pairs its metrics.csv scored, over every model of the column."""
    splits: dict[Path, str] = {}

    def split_of(folder: Path) -> str:
        if folder not in splits:
            summary = json.loads((folder / "summary.json").read_text())
            splits[folder] = clean_text(str(summary.get("split") or "unrecorded"))
        return splits[folder]

    parts = []
    for column in table_columns(table):
        runs = [run for per_column in table.values() for run in per_column.get(column, {}).values()]
        keys = {key for run in runs for key in run.values["PSNR"]}
        names = sorted({split_of(run.source) for run in runs})
        volumes = len({volume for volume, _ in keys})
        slices = f"{len(keys)} slice{'s' if len(keys) != 1 else ''}"
        parts.append((column, f"the {' and '.join(names)} split{'s' if len(names) > 1 else ''}",
                      f"{slices} of {volumes} volume{'s' if volumes != 1 else ''}"))
    if len(parts) == 1:
        return f"Scored on {parts[0][1]}, {parts[0][2]}."
    if len({split for _, split, _ in parts}) == 1:
        return f"Scored on {parts[0][1]}: " + "; ".join(f"{column} {count}" for column, _, count in parts) + "."
    return "Scored on: " + "; ".join(f"{column} {split}, {count}" for column, split, count in parts) + "."


def compression_section(folder: Path, out_dir: Path) -> str:
    """The tables of scripts/compression.py's report in ``folder`` (``--compression``), as its compression.md
    gives them, read from its compression.json (nothing is measured again), with the machine they were measured
    on; its plot linked relative to ``out_dir`` where it is there."""
    try:
        report = json.loads((folder / "compression.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--compression {folder}: no readable compression.json ({exc}); pass the --out-dir of "
                        "python -m scripts.compression") from exc
    from scripts.compression import table  # torch and the benchmark's modules: imported only when asked for
    png = folder / "compression.png"
    image = Path(os.path.relpath(png.resolve(), out_dir.resolve())).as_posix() if png.is_file() else None
    try:
        return table(report, f"## Compression: what each network costs ({folder / 'compression.json'})", image)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"--compression {folder}: compression.json lacks what the report needs ({exc!r}); "
                        "write it again with python -m scripts.compression") from exc


def main(argv: list[str] | None = None) -> None:
    parser = CliParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dirs", nargs="+", required=True, type=Path,
                        help="evaluate.py --out-dir folders (summary.json + metrics.csv), any accelerations")
    parser.add_argument("--out-dir", required=True, type=Path, help="where table.md and table.csv go")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing table.md / table.csv")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG",
                        help="also draw PSNR and SSIM per model with error bars over seeds into this PNG (with "
                             "--contrasts: the contrasts with their intervals)")
    parser.add_argument("--contrasts", action="store_true",
                        help="add the controlled contrasts of scripts/study/study.sh (B - C primary; C - A, C - D, B - A "
                             "Holm-corrected; with the no-KD arms B - N, C - N, C - L, D - L, Holm-corrected apart) "
                             "with 95 %% t-intervals over seeds (scripts/study/contrasts.py)")
    parser.add_argument("--machine", type=Path, default=None, metavar="JSON",
                        help="the machine (a utils.machine record) that trained the runs whose checkpoints recorded "
                             "none, e.g. the committed study's docs/study/machine.json")
    parser.add_argument("--compression", type=Path, default=None, metavar="DIR",
                        help="append the tables of python -m scripts.compression's report in DIR (its "
                             "compression.json: parameters, FLOPs, latency, ratios, quality per mode)")
    args = parser.parse_args(argv)
    fallback = read_machine(args.machine) if args.machine else None
    compression = compression_section(args.compression, args.out_dir) if args.compression else ""
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise UserError(f"--out-dir {args.out_dir} is a file; choose a folder")
    md_path, csv_path = args.out_dir / "table.md", args.out_dir / "table.csv"
    for path in (md_path, csv_path, args.plot):
        if path is not None:
            refuse_to_overwrite(path, args.overwrite, "--out-dir")
    table, unknown = collect(args.eval_dirs)
    if unknown:
        print(clean_text("left out (names fit no role: teacher, student, sft, stdkd-M, sftkd-M[-seedN]): "
                         + ", ".join(unknown), None))
    if not table:
        raise UserError("no model in --eval-dirs has a known role; name them with evaluate.py --names")
    markdown, csv_rows = build_report(table, data_lines(args.eval_dirs))
    markdown = machine_line(args.eval_dirs, fallback) + "\n\n" + scored_line(table) + "\n\n" + markdown
    found = []
    if args.contrasts:
        columns = table_columns(table)
        found = contrasts.all_contrasts(table, columns)
        if not found:
            raise UserError("--contrasts: the folders hold none of the study's arms (stdkd-M, sftkd-M, "
                            "stdkd-sftinit-M, stdkd-studentinit-M, stdkd-sftinit-none, stdkd-none); run "
                            "scripts/study/study.sh")
        markdown += "".join(f"{line}\n" for line in contrasts.markdown(found))
    markdown += "".join(f"{line}\n" for key in VOLUME_TABLES for line in volume_table(args.eval_dirs, key))
    if compression:
        markdown += "\n" + compression
    pngs: dict[Path, bytes] = {}
    if args.plot is not None:
        draw = contrasts.plot if found else plot
        draw(found or table, args.plot, lambda path, data: pngs.__setitem__(path, data))
    # Names, machines and data descriptions come from files: nothing in them may move a terminal's cursor.
    markdown = clean_lines(markdown)
    write_outputs(args, {"table.md": markdown, "table.csv": clean_lines(csv_text(csv_rows))}, pngs)
    print(markdown)
    print(f"wrote {md_path} and {csv_path}" + (f" and {args.plot}" if args.plot is not None else ""))


def write_outputs(args, tables: dict[str, str], pngs: dict[Path, bytes]) -> None:
    """The tables (and a --plot inside --out-dir) written whole or not at all: staged, then swapped in for the
    previous report's files (data/outputs.py, manifest ``report_manifest.json``), so a failure (a full disk) leaves
    --out-dir as it was and a plain rerun works. A --plot elsewhere is written atomically after the swap."""
    out = args.out_dir.resolve()
    outside = {path: data for path, data in pngs.items() if out not in path.resolve().parents}
    with staged(args.out_dir, "--out-dir", STAGE_PREFIX, MANIFEST, args.overwrite) as stage:
        for name, text in tables.items():
            write_text(stage / name, text)
        for path, data in pngs.items():
            if path not in outside:
                atomic_write(stage / path.resolve().relative_to(out), lambda f, data=data: f.write(data))
    for path, data in outside.items():
        atomic_write(path, lambda f, data=data: f.write(data))

if __name__ == "__main__":
    run_cli(main)
