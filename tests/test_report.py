"""Tests for scripts/report.py: name parsing, the table's numbers, Wilcoxon p-values, gaps and errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

from scripts.report import build_report, collect, format_p, main, parse_model_name
from conftest import cli_error, run_cli
from utils import UserError

KEYS = [(f"vol{v}", s) for v in range(2) for s in range(5)]  # 10 slices in 2 volumes


def write_eval_dir(folder: Path, acc: str, models: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """An evaluate.py-like folder: models maps name -> (PSNR, SSIM) per slice, each (10,) float."""
    folder.mkdir(parents=True)
    lines = ["model,volume,slice,PSNR,SSIM,NMSE,HFEN-LoG,VIF"]
    for name, (psnr, ssim) in models.items():
        lines += [f"{name},{vol},{s},{float(p)!r},{float(q)!r},0.01,0.1,0.9"
                  for (vol, s), p, q in zip(KEYS, psnr, ssim)]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    summary = {name: {"PSNR": {"mean": float(np.mean(p)), "std": float(np.std(p)), "n": len(p)}}
               for name, (p, _) in models.items()}
    (folder / "summary.json").write_text(json.dumps({**summary, "acc": acc, "split": "validation"}))
    return folder


def fake(rng, psnr_mean: float, ssim_mean: float) -> tuple[np.ndarray, np.ndarray]:
    return psnr_mean + rng.normal(0, 0.8, 10), ssim_mean + rng.normal(0, 0.004, 10)


@pytest.fixture
def eval_dirs(tmp_path):
    """4x: two seeds of both KD students (two folders); 5x: one unsuffixed run of each; plus an unknown name."""
    rng = np.random.default_rng(7)
    models = {}
    base = {"ZF": (31.38, 0.6651), "teacher": (40.05, 0.9785), "student": (39.49, 0.9759), "sft": (40.23, 0.9799)}
    models["4x"] = {name: fake(rng, *means) for name, means in base.items()}
    models["4x"].update({"stdkd-at-seed1": fake(rng, 39.76, 0.9769), "sftkd-at-seed1": fake(rng, 40.07, 0.9789),
                         "my-baseline": fake(rng, 30.0, 0.5)})
    seed2 = {"ZF": models["4x"]["ZF"], "stdkd-at-seed2": fake(rng, 39.70, 0.9765),
             "sftkd-at-seed2": fake(rng, 40.01, 0.9785)}
    models["5x"] = {name: fake(rng, psnr - 1.0, ssim - 0.007) for name, (psnr, ssim) in base.items()}
    models["5x"].update({"stdkd-at": fake(rng, 38.85, 0.9691), "sftkd-at": fake(rng, 38.92, 0.9699)})
    dirs = [write_eval_dir(tmp_path / "eval_4x_seed1", "4x", models["4x"]),
            write_eval_dir(tmp_path / "eval_4x_seed2", "4x", seed2),
            write_eval_dir(tmp_path / "eval_5x", "5x", models["5x"])]
    models["4x"].update(seed2)
    return dirs, models


def cell(values: np.ndarray, digits: int) -> str:
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def test_parse_model_name():
    assert parse_model_name("ZF") == ("zf", None, None)
    assert parse_model_name("Teacher") == ("teacher", None, None)
    assert parse_model_name("sft-seed3") == ("sft", None, 3)
    assert parse_model_name("sftkd-at-seed12") == ("sftkd", "at", 12)
    assert parse_model_name("stdkd-svd-kd") == ("stdkd", "svd-kd", None)
    assert parse_model_name("teacher_4x") is None
    assert parse_model_name("kd-at") is None


def test_report_table_numbers_pvalues_and_gaps(eval_dirs, tmp_path):
    dirs, models = eval_dirs
    out = tmp_path / "report"
    result = run_cli("-m", "scripts.report", "--eval-dirs", *map(str, dirs), "--out-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert "my-baseline" in result.stdout  # listed as left out
    md = (out / "table.md").read_text()
    lines = md.splitlines()
    assert lines[:2] == ["Trained on: not recorded.", ""]  # these summaries list no checkpoints
    assert lines[2:4] == ["Scored on the validation split: 4x 10 slices of 2 volumes; 5x 10 slices of 2 volumes.", ""]
    lines = lines[4:]
    labels = [line.split("|")[1].strip() for line in lines[2:lines.index("")]]
    assert labels == ["ZF", "Teacher", "Student", "SFT teacher", "Std-KD (at)", "SFT-KD-Recon (at)"]
    assert "my-baseline" not in md

    # Single runs: mean ± std over slices.
    teacher_row = next(line for line in lines if line.startswith("| Teacher |"))
    for acc in ("4x", "5x"):
        psnr, ssim = models[acc]["teacher"]
        assert cell(psnr, 2) in teacher_row and cell(ssim, 4) in teacher_row
    # Two seeds at 4x: mean ± std over the per-seed means, marked and footnoted.
    sft_row = next(line for line in lines if line.startswith("| SFT-KD-Recon (at) |"))
    seed_means = [np.mean(models["4x"][f"sftkd-at-seed{s}"][0]) for s in (1, 2)]
    seeds_cell = f"{np.mean(seed_means):.2f} ± {np.std(seed_means, ddof=1):.2f} †"  # sample std over seeds
    assert seeds_cell in sft_row
    assert cell(models["5x"]["sftkd-at"][0], 2) in sft_row
    assert "mean ± sample std (ddof 1) over seeds" in md

    # Wilcoxon: per-slice PSNR averaged over seeds, paired by slice.
    std_4x = (models["4x"]["stdkd-at-seed1"][0] + models["4x"]["stdkd-at-seed2"][0]) / 2
    sft_4x = (models["4x"]["sftkd-at-seed1"][0] + models["4x"]["sftkd-at-seed2"][0]) / 2
    p_4x = wilcoxon(sft_4x, std_4x).pvalue
    p_5x = wilcoxon(models["5x"]["sftkd-at"][0], models["5x"]["stdkd-at"][0]).pvalue
    assert 0 < p_4x < 1 and p_4x != p_5x
    line_4x = next(line for line in lines if line.startswith("| at | 4x |"))
    line_5x = next(line for line in lines if line.startswith("| at | 5x |"))
    assert f"| {format_p(p_4x)} | 10 |" in line_4x and f"| {format_p(p_5x)} | 10 |" in line_5x

    # Gaps: student minus teacher, and the best SFT-KD student minus teacher.
    t4, s4 = np.mean(models["4x"]["teacher"][0]), np.mean(models["4x"]["student"][0])
    assert f"4x: student {s4 - t4:+.2f} dB, best SFT-KD-Recon student (at) {np.mean(seed_means) - t4:+.2f} dB" in md
    assert "4x: student" in result.stdout

    with (out / "table.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == labels
    by_label = {r["method"]: r for r in rows}
    assert float(by_label["Teacher"]["PSNR_5x_mean"]) == pytest.approx(np.mean(models["5x"]["teacher"][0]), abs=1e-9)
    assert float(by_label["Teacher"]["SSIM_4x_std"]) == pytest.approx(np.std(models["4x"]["teacher"][1]), abs=1e-9)
    assert by_label["SFT-KD-Recon (at)"]["seeds_4x"] == "2" and by_label["Teacher"]["seeds_4x"] == "1"
    assert float(by_label["SFT-KD-Recon (at)"]["wilcoxon_p_4x"]) == pytest.approx(p_4x, rel=1e-9)
    assert float(by_label["SFT-KD-Recon (at)"]["wilcoxon_p_5x"]) == pytest.approx(p_5x, rel=1e-9)
    assert by_label["Std-KD (at)"]["wilcoxon_p_4x"] == ""


def test_missing_roles_are_omitted(tmp_path):
    rng = np.random.default_rng(0)
    folder = write_eval_dir(tmp_path / "e", "4x", {"ZF": fake(rng, 30, 0.7), "stdkd-fitnets": fake(rng, 39, 0.97)})
    table, unknown = collect([folder])
    markdown, rows = build_report(table)
    assert [r["method"] for r in rows] == ["ZF", "Std-KD (fitnets)"]
    assert "Wilcoxon" not in markdown and "gap" not in markdown and unknown == []


def test_errors_name_the_folder(eval_dirs, tmp_path):
    dirs, _ = eval_dirs
    with pytest.raises(UserError, match="nowhere"):
        main(["--eval-dirs", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "r")])
    (dirs[2] / "metrics.csv").unlink()
    with pytest.raises(UserError, match="eval_5x has no metrics.csv"):
        main(["--eval-dirs", str(dirs[2]), "--out-dir", str(tmp_path / "r")])
    duplicate = tmp_path / "copy"
    duplicate.mkdir()
    for name in ("metrics.csv", "summary.json"):
        (duplicate / name).write_bytes((dirs[0] / name).read_bytes())
    with pytest.raises(UserError, match="teacher at 4x is in both"):
        main(["--eval-dirs", str(dirs[0]), str(duplicate), "--out-dir", str(tmp_path / "r")])


def test_existing_output_needs_overwrite(eval_dirs, tmp_path):
    dirs, _ = eval_dirs
    out = tmp_path / "r"
    main(["--eval-dirs", str(dirs[0]), "--out-dir", str(out)])
    before = (out / "table.md").read_text()
    result = run_cli("-m", "scripts.report", "--eval-dirs", *map(str, dirs), "--out-dir", str(out))
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (out / "table.md").read_text() == before
    main(["--eval-dirs", *map(str, dirs), "--out-dir", str(out), "--overwrite"])
    assert (out / "table.md").read_text() != before


def test_orderings_per_seed_table_over_seed_test_and_plot(tmp_path):
    """Three seeds of the study's set: the orderings table's numbers match an independent computation."""
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(3)
    levels = {"teacher": 31.0, "student": 30.5, "sft": 30.9, "sft0": 31.1, "stdkd-at": 30.7, "sftkd-at": 30.9,
              "sft0kd-at": 30.8}
    dirs, psnr = [], {}
    for seed in (1, 2, 3):
        models = {"ZF": fake(rng, 20.0, 0.5)}
        for name, level in levels.items():
            models[f"{name}-seed{seed}"] = fake(rng, level + 0.1 * seed, 0.95)
            psnr[(name, seed)] = models[f"{name}-seed{seed}"][0]
        dirs.append(write_eval_dir(tmp_path / f"eval_seed{seed}", "4x", models))
    out = tmp_path / "report"
    main(["--eval-dirs", *map(str, dirs), "--out-dir", str(out), "--plot", str(out / "study.png")])
    md = (out / "table.md").read_text()
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| SFT teacher, imitation 0 |" in md and "| SFT-KD-Recon, imitation 0 (at) |" in md

    def row(label: str) -> list[str]:
        line = next(line for line in md.splitlines() if line.startswith(f"| {label} | 4x |"))
        return [cell.strip() for cell in line.split("|")[3:-1]]

    teacher = np.array([psnr[("teacher", s)].mean() for s in (1, 2, 3)])
    student = np.array([psnr[("student", s)].mean() for s in (1, 2, 3)])
    per_slice_t = np.mean([psnr[("teacher", s)] for s in (1, 2, 3)], axis=0)
    per_slice_s = np.mean([psnr[("student", s)] for s in (1, 2, 3)], axis=0)
    diff, p_slices, per_seed, p_seeds = row("Teacher - Student")
    assert diff == f"{np.mean(per_slice_t - per_slice_s):+.2f}"
    assert p_slices == format_p(wilcoxon(per_slice_t, per_slice_s).pvalue)
    assert per_seed == " ".join(f"{d:+.2f}" for d in teacher - student)
    assert p_seeds == format_p(ttest_rel(teacher, student).pvalue)
    for label in ("SFT-KD-Recon (at) - Std-KD (at)", "Std-KD (at) - Student", "SFT teacher - Teacher",
                  "SFT-KD-Recon, imitation 0 (at) - Std-KD (at)"):
        assert len(row(label)) == 4
    seed_row = next(line for line in md.splitlines() if line.startswith("| Student | 4x |"))
    assert f"{student[2]:.2f} / " in seed_row.split("|")[5]
    with pytest.raises(UserError, match="study.png already exists"):
        main(["--eval-dirs", *map(str, dirs), "--out-dir", str(tmp_path / "other"), "--plot", str(out / "study.png")])


def test_report_lists_the_public_volume_metrics(tmp_path):
    rng = np.random.default_rng(0)
    folder = write_eval_dir(tmp_path / "eval", "4x", {"student": (rng.normal(30, 1, 10), rng.uniform(0.8, 0.9, 10))})
    summary = json.loads((folder / "summary.json").read_text())
    stats = {m: {"mean": mean, "std": 0.5 * mean, "n": 2}
             for m, mean in (("NMSE", 0.0123), ("PSNR", 31.234), ("SSIM", 0.9123), ("HFN", 0.2345))}
    (folder / "summary.json").write_text(json.dumps({**summary, "public_volume": {"student": stats}}))
    main(["--eval-dirs", str(folder), "--out-dir", str(tmp_path / "r")])
    table = (tmp_path / "r" / "table.md").read_text()
    assert "The public SFT-KD-Recon evaluate.py's volume-wise metrics" in table
    assert "| eval | 4x | Student | 0.0123 ± 0.0062 | 31.23 ± 15.62 | 0.9123 ± 0.4561 | 0.2345 ± 0.1172 | 2 |" in table
    assert "fastMRI's volume-wise" not in table


def test_runs_of_different_sizes_are_never_one_row(tmp_path):
    """Two seeds of the committed study, one student relabelled as width 8: the student row would average a
    width-8 and a width-32 network, so the report refuses; with equal sizes it reads both."""
    root = Path(__file__).resolve().parents[1]
    folders = []
    for seed, width in ((11, 32), (12, 8)):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        (folder / "metrics.csv").write_bytes((root / "docs/study/mni152" / f"seed{seed}" / "metrics.csv").read_bytes())
        summary = json.loads((root / "docs/study/mni152" / f"seed{seed}" / "summary.json").read_text())
        summary["roles"][f"student-seed{seed}"]["nets"] = {"student": {"cascades": 5, "depth": 3, "width": width}}
        (folder / "summary.json").write_text(json.dumps(summary))
        folders.append(folder)
    with pytest.raises(UserError, match=r"student runs of .*seed11 \(seed 11\) and .*seed12 \(seed 12\) have "
                                         r"networks of different sizes"):
        collect(folders)
    summary = json.loads((folders[1] / "summary.json").read_text())
    summary["roles"]["student-seed12"]["nets"]["student"]["width"] = 32
    (folders[1] / "summary.json").write_text(json.dumps(summary))
    table, _ = collect(folders)
    assert set(table[("student", None)]["4x"]) == {11, 12}


def test_table_names_the_machines_that_trained_its_runs(eval_dirs, tmp_path):
    dirs, _ = eval_dirs
    zen3 = {"cpu": "AMD EPYC (family 25, model 1)", "cores": 2, "isa": "AVX2", "torch": "2.13.0", "threads": 1}
    xeon = {"cpu": "Intel Xeon", "cores": 2, "isa": "AVX512 + AMX", "torch": "2.13.0", "threads": 2}
    for folder, machines in ((dirs[0], {"teacher": xeon, "student": None}), (dirs[1], {"sftkd-at-seed2": xeon})):
        summary = json.loads((folder / "summary.json").read_text())
        # A run scored twice (two test sets) counts once: runs are told apart by their checkpoint's path.
        summary.update(checkpoints={name: f"runs/{name}.pt" for name in machines}, trained_on=machines)
        (folder / "summary.json").write_text(json.dumps(summary))
    first = {}
    for name, extra in (("recorded", []), ("fallback", ["--machine", str(tmp_path / "zen3.json")])):
        (tmp_path / "zen3.json").write_text(json.dumps(zen3))
        main(["--eval-dirs", *map(str, dirs[:2]), "--out-dir", str(tmp_path / name), *extra])
        first[name] = (tmp_path / name / "table.md").read_text().splitlines()[0]
    assert first["recorded"] == ("Trained on: Intel Xeon, 2 cores, ISA AVX512 + AMX, torch 2.13.0, 2 threads (2 runs); "
                                 "not recorded (1 run).")
    assert first["fallback"] == ("Trained on: Intel Xeon, 2 cores, ISA AVX512 + AMX, torch 2.13.0, 2 threads (2 runs); "
                                 "AMD EPYC (family 25, model 1), 2 cores, ISA AVX2, torch 2.13.0, 1 thread (1 run).")
    (tmp_path / "bad.json").write_text("[1, 2]")
    for bad, message in (("bad.json", "not a machine record"), ("missing.json", "cannot read")):
        with pytest.raises(UserError, match=f"--machine .*{bad}: {message}"):
            main(["--eval-dirs", str(dirs[0]), "--out-dir", str(tmp_path / "r"), "--machine", str(tmp_path / bad)])
        assert not (tmp_path / "r").exists()


def test_table_says_which_split_it_scored_on_how_many_slices(eval_dirs, tmp_path):
    dirs, _ = eval_dirs  # every folder: the validation split, 10 slices of 2 volumes (KEYS)
    main(["--eval-dirs", str(dirs[2]), "--out-dir", str(tmp_path / "one")])
    lines = (tmp_path / "one" / "table.md").read_text().splitlines()
    assert lines[1:4] == ["", "Scored on the validation split, 10 slices of 2 volumes.", ""]
    # A column is the union of its folders' slices: a second test set of 3 slices in 1 volume is its own column.
    other = tmp_path / "other"
    rows = ["model,volume,slice,PSNR,SSIM,NMSE,HFEN-LoG,VIF"] + [f"ZF,brain,{s},30.0,0.9,0.01,0.1,0.9" for s in range(3)]
    other.mkdir()
    (other / "metrics.csv").write_text("\n".join(rows) + "\n")
    (other / "summary.json").write_text(json.dumps({"acc": "4x", "split": "test", "test_set": "colin27"}))
    for folder in dirs[:2]:
        summary = json.loads((folder / "summary.json").read_text())
        (folder / "summary.json").write_text(json.dumps({**summary, "split": "test", "test_set": "mni152"}))
    main(["--eval-dirs", *map(str, dirs[:2]), "--out-dir", str(tmp_path / "same")])
    assert "\nScored on the test split, 10 slices of 2 volumes.\n" in (tmp_path / "same" / "table.md").read_text()
    main(["--eval-dirs", *map(str, dirs[:2]), str(other), "--out-dir", str(tmp_path / "two")])
    assert ("\nScored on the test split: 4x mni152 10 slices of 2 volumes; 4x colin27 3 slices of 1 volume.\n"
            in (tmp_path / "two" / "table.md").read_text())


def test_kspace_origin_is_printed_under_the_table(tmp_path):
    rng = np.random.default_rng(3)
    folders = [write_eval_dir(tmp_path / name, "4x", {"ZF": fake(rng, 30, 0.8), f"teacher-seed{i}": fake(rng, 35, 0.9)})
               for i, name in enumerate(("a", "b"))]
    main(["--eval-dirs", *map(str, folders), "--out-dir", str(tmp_path / "old")])
    assert "k-space" not in (tmp_path / "old" / "table.md").read_text()  # written before the entry: nothing
    for folder, kspace in zip(folders, ("synthetic from magnitude", "acquired (fastMRI single-coil kspace)")):
        summary = json.loads((folder / "summary.json").read_text())
        (folder / "summary.json").write_text(json.dumps({**summary, "image": "magnitude", "kspace": kspace}))
    main(["--eval-dirs", str(folders[0]), "--out-dir", str(tmp_path / "one")])
    table = (tmp_path / "one" / "table.md").read_text()
    assert "\n\nk-space: synthetic from magnitude (magnitude images)\n" in table
    assert table.index("Cells:") < table.index("k-space:")
    main(["--eval-dirs", *map(str, folders), "--out-dir", str(tmp_path / "two")])
    table = (tmp_path / "two" / "table.md").read_text()
    assert f"k-space: synthetic from magnitude (magnitude images): {folders[0]}" in table
    assert f"k-space: acquired (fastMRI single-coil kspace) (magnitude images): {folders[1]}" in table


def test_phase_compare_pairs_the_settings_by_seed(tmp_path):
    from scripts.study.phase_compare import main as compare
    rng = np.random.default_rng(5)
    means = {"magnitude": {"teacher": 32.0, "student": 31.0, "sft": 30.5, "stdkd-at": 31.5, "sftkd-at": 32.5},
             "phase": {"teacher": 30.0, "student": 29.5, "sft": 29.0, "stdkd-at": 30.5, "sftkd-at": 30.0}}
    written = {}
    for setting, arms in means.items():
        for seed in (11, 12, 13):
            models = {"ZF": fake(rng, 25, 0.7), **{f"{arm}-seed{seed}": fake(rng, psnr + 0.1 * seed, 0.95)
                                                    for arm, psnr in arms.items()}}
            written[setting, seed] = models
            write_eval_dir(tmp_path / setting / "mni152" / f"seed{seed}", "4x", models)
    compare(["--magnitude", str(tmp_path / "magnitude"), "--phase", str(tmp_path / "phase"), "--out-dir",
             str(tmp_path / "out")])
    text = (tmp_path / "out" / "comparison.md").read_text()
    change = [np.mean(written["phase", s][f"sftkd-at-seed{s}"][0])
              - np.mean(written["magnitude", s][f"sftkd-at-seed{s}"][0]) for s in (11, 12, 13)]
    row = next(line for line in text.splitlines() if line.startswith("| SFT-KD-Recon (at) |"))
    assert row.endswith(f"| {' '.join(f'{d:+.2f}' for d in change)} |")
    assert f"{np.mean(change):+.2f} [" in row
    ranking = [line for line in text.splitlines() if line.startswith("| phase | 12 |")][0]
    assert ranking.index("Std-KD (at)") < ranking.index("SFT-KD-Recon (at)") < ranking.index("SFT teacher")
    with pytest.raises(UserError, match="--out-dir"):
        compare(["--magnitude", str(tmp_path / "magnitude"), "--phase", str(tmp_path / "phase"), "--out-dir",
                 str(tmp_path / "out")])


def test_report_includes_the_compression_tables(eval_dirs, tmp_path, capsys):
    dirs, _ = eval_dirs
    docs = Path(__file__).resolve().parents[1] / "docs" / "compression"
    compression = json.loads((docs / "compression.json").read_text())
    out = tmp_path / "report"
    main(["--eval-dirs", *map(str, dirs), "--out-dir", str(out), "--compression", str(docs)])
    text = (out / "table.md").read_text()
    # The committed report's tables as written there (read, not measured again), with the machine they ran on.
    committed = (docs / "compression.md").read_text()
    section = text[text.index("## Compression"):]
    assert f"Measured on: {compression['machine_line']}" in section
    for line in committed.splitlines():
        if line.startswith("| "):
            assert line in section
    linked = section[section.index("](") + 2:section.index(".png)") + 4]
    assert (out / linked).resolve() == (docs / "compression.png").resolve()

    capsys.readouterr()
    err = cli_error(main, ["--eval-dirs", *map(str, dirs), "--out-dir", str(tmp_path / "refused"),
                           "--compression", str(tmp_path)], capsys)
    assert f"--compression {tmp_path}" in err and "compression.json" in err
    assert not (tmp_path / "refused").exists()
