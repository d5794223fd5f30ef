"""The setting probes of docs/setting/ side by side: per probe, the study's contrasts (mean over seeds and
per-seed SD), and, for probes on the baseline's seeds, each lever's paired effect on every contrast.

    python -m scripts.study.probes --baseline docs/setting/p1-w8-augment docs/setting/p2-w8-ema ... [--kd-method at]

A probe is a folder holding ``{test set}/seedN/`` evaluation folders (scripts/study/study.sh's ``DOCS``). A lever is
judged by what it does to the spread (the per-seed SD the issue's goals bound), so the baseline and each probe
share their seeds: the lever's effect on a contrast, per seed, is the probe's contrast minus the baseline's,
and its SD change is read beside that paired difference, not across seed sets. Three seeds bound an SD only
loosely (a 95 % interval from 2 degrees of freedom spans about 0.5x to 6x the estimate), which the table's
note says.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts import report
from scripts.study import arms, contrasts
from data.outputs import write_text
from utils import CliParser, UserError, old_spellings, refuse_to_overwrite, run_cli

# (column heading, label prefix of scripts/study/contrasts.py, whether the contrast is per KD method)
CONTRASTS = (("Teacher - Student", "Teacher - Student", False), ("B - C", "B - C", True),
             ("B - A", "B - A", True), ("C - A", "C - A", True))


# (column heading, report.collect row key or an arm letter of scripts/study/arms.py, per KD method)
ROWS = (("Teacher", "teacher"), ("Student", "student"), ("A", "A"), ("B", "B"), ("C", "C"))


@dataclass
class Probe:
    """One probe folder: its seeds; per heading of :data:`CONTRASTS`, the contrast (None if missing); per
    heading of :data:`ROWS`, ``{seed: mean over the test slices}`` (empty if missing)."""

    folder: Path
    seeds: list
    found: dict
    scores: dict


def read_probe(folder: Path, test_set: str, kd_method: str, metric: str = "PSNR") -> Probe:
    dirs = sorted(d for d in (folder / test_set).glob("seed*") if (d / "summary.json").is_file())
    if not dirs:
        raise UserError(f"{folder} has no {test_set}/seed*/summary.json; run its scripts/study/study.sh line "
                        "(docs/setting/README.md) first")
    table, _ = report.collect(dirs)
    columns = report.table_columns(table)
    if len(columns) != 1:
        raise UserError(f"{folder}: its {test_set} evaluations have {len(columns)} accelerations ({columns}); "
                        "a probe has one")
    every = contrasts.all_contrasts(table, columns)
    found = {}
    for heading, prefix, per_method in CONTRASTS:
        found[heading] = next((c for c in every if c.metric == metric and c.label.startswith(prefix)
                               and (c.method == kd_method if per_method else c.method is None)), None)
    letters = {arm.letter: arm.prefix for arm in arms.ARMS}
    scores = {}
    for heading, row in ROWS:
        key = (letters[row], kd_method) if row in letters else (row, None)
        scores[heading] = contrasts.seed_means(table.get(key, {}).get(columns[0], {}), metric)
    seeds = sorted({s for c in found.values() if c is not None for s in c.seeds})
    return Probe(folder, seeds, found, scores)


def paired_change(probe: contrasts.Contrast, base: contrasts.Contrast) -> np.ndarray | None:
    """(n,) float64: the probe's per-seed contrast minus the baseline's on the seeds both have (None if the
    seeds differ: a lever is compared on the baseline's own seeds)."""
    if list(probe.seeds) != list(base.seeds):
        return None
    return np.asarray(probe.diffs, dtype=np.float64) - np.asarray(base.diffs, dtype=np.float64)


def _cell(c: contrasts.Contrast | None) -> str:
    return "–" if c is None else f"{c.mean:+.2f} ({c.sd:.2f})"


def _score_change(probe: dict, base: dict) -> str:
    """The paired change of one row's score (probe minus baseline, mean [per seed]) on the same seeds."""
    if not probe or sorted(probe) != sorted(base):
        return "–"
    change = np.array([probe[s] - base[s] for s in sorted(base)])
    return f"{change.mean():+.2f} [{' '.join(f'{x:+.2f}' for x in change)}]"


def markdown(baseline: Probe, probes: list[Probe], test_set: str, kd_method: str) -> str:
    headings = [h for h, _, _ in CONTRASTS]
    lines = [f"Probes, {test_set} test set, PSNR dB, KD method {kd_method}: each contrast's mean over seeds "
             "(per-seed SD).", "",
             "| probe | seeds | " + " | ".join(headings) + " |", "|---|---|" + "---|" * len(headings)]
    for p in [baseline, *probes]:
        lines.append(f"| {p.folder.name} | {' '.join(map(str, p.seeds))} | "
                     + " | ".join(_cell(p.found[h]) for h in headings) + " |")
    lines += ["", f"Each lever against the baseline {baseline.folder.name} on the same seeds: the paired change "
              "of each contrast (probe minus baseline, mean over seeds [per seed]) and the change of its "
              "per-seed SD (probe SD - baseline SD; 3 seeds bound an SD only loosely, about 0.5x to 6x).", "",
              "| probe | " + " | ".join(f"{h}: change [per seed] / SD change" for h in headings) + " |",
              "|---|" + "---|" * len(headings)]
    for p in probes:
        cells = []
        for h in headings:
            c, b = p.found[h], baseline.found[h]
            change = paired_change(c, b) if c is not None and b is not None else None
            if change is None:
                cells.append("– (other seeds)" if c is not None and b is not None else "–")
                continue
            per_seed = " ".join(f"{x:+.2f}" for x in change)
            cells.append(f"{change.mean():+.2f} [{per_seed}] / {c.sd - b.sd:+.2f}")
        lines.append(f"| {p.folder.name} | " + " | ".join(cells) + " |")
    rows = [h for h, _ in ROWS]
    lines += ["", "Each network's score: mean over seeds (PSNR dB) per probe, and each lever's paired change of it "
              "(probe minus baseline, mean [per seed]); A Std-KD, B SFT-KD-Recon, C standard teacher + SFT blocks.",
              "", "| probe | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for p in [baseline, *probes]:
        means = [f"{np.mean(list(p.scores[h].values())):.2f}" if p.scores[h] else "–" for h in rows]
        lines.append(f"| {p.folder.name} | " + " | ".join(means) + " |")
    for p in probes:
        lines.append(f"| {p.folder.name} - {baseline.folder.name} | "
                     + " | ".join(_score_change(p.scores[h], baseline.scores[h]) for h in rows) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = CliParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probes", type=Path, nargs="+", help="probe folders (scripts/study/study.sh DOCS)")
    parser.add_argument("--baseline", type=Path, required=True, help="the probe the levers change one at a time")
    parser.add_argument("--test-set", default="mni152", help="which test set of each probe")
    parser.add_argument("--kd-method", default="at", help="the KD method of B - C, B - A and C - A")
    old_spellings(parser.add_argument("--out-dir", "--out", type=Path, default=None,
                                      help="also write the table into this folder, as probes.md"), "--out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out-dir/probes.md")
    args = parser.parse_args(argv)
    out = args.out_dir / "probes.md" if args.out_dir is not None else None
    if out is not None:
        refuse_to_overwrite(out, args.overwrite, "--out-dir")
    baseline = read_probe(args.baseline, args.test_set, args.kd_method)
    probes = [read_probe(folder, args.test_set, args.kd_method) for folder in args.probes
              if folder.resolve() != args.baseline.resolve()]
    if baseline.found["B - C"] is None:
        raise UserError(f"--baseline {args.baseline} has no B - C for --kd-method {args.kd_method}; name a method "
                        "the probe trained")
    text = markdown(baseline, probes, args.test_set, args.kd_method)
    print(text, end="")
    if out is not None:
        write_text(out, text)
        print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
