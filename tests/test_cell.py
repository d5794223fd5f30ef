"""scripts/study/cell.sh after its runs (a scratch evaluation already in place, so nothing trains): the bit-for-bit
check of the old arms decides what is copied into the committed cell, and the cell's table and the map rebuild."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

CELL = "w16-4x"  # a cell run in full by cell.sh: every arm, N and L, Colin27, imitation
# The models the map scored before plan-N-L (ZF and arms A-D with AT); the rest of a full cell is new.
MAP_MODELS = ("ZF", "teacher", "student", "sft", "stdkd-at", "sftkd-at", "stdkd-sftinit-at", "stdkd-studentinit-at")


def as_the_map_committed(cell):
    """Turn a full cell's folder back into what the map committed before cell.sh ran: MNI152 only, the map's own
    models only, no rerun.json."""
    shutil.rmtree(cell / "colin27")
    (cell / "rerun.json").unlink()
    for seed_dir in cell.glob("mni152/seed*"):
        seed = seed_dir.name.removeprefix("seed")
        keep = {model if model == "ZF" else f"{model}-seed{seed}" for model in MAP_MODELS}
        lines = (seed_dir / "metrics.csv").read_text().splitlines()
        (seed_dir / "metrics.csv").write_text(
            "\n".join([lines[0], *(line for line in lines[1:] if line.split(",")[0] in keep)]) + "\n")
        summary = json.loads((seed_dir / "summary.json").read_text())
        summary = {key: ({run: v for run, v in value.items() if run in keep} if isinstance(value, dict)
                         and set(value) & keep else value)
                   for key, value in summary.items() if key not in ("CS (L1-wavelet)", "cs") and
                   (not key.endswith(f"-seed{seed}") or key in keep)}
        (seed_dir / "summary.json").write_text(json.dumps(summary))


def scored(seed_dir):
    """The models a seed folder's metrics.csv scored."""
    return {line.split(",")[0] for line in (seed_dir / "metrics.csv").read_text().splitlines()[1:]}


def setup(tmp_path, whole_map: bool = True):
    """A copy of the committed map (or of CELL alone) with CELL as the map committed it, and a scratch rerun of
    that cell in full (the committed evaluation: the old arms reproduce it)."""
    docs = tmp_path / "map"
    if whole_map:
        shutil.copytree(ROOT / "docs" / "map", docs)
    else:  # the map then rebuilds from one cell: faster, for tests that do not compare it with the committed one
        shutil.copytree(ROOT / "docs" / "map" / CELL, docs / CELL)
    scratch = tmp_path / "results" / "docs" / CELL
    for test_set in ("mni152", "colin27"):
        shutil.copytree(docs / CELL / test_set, scratch / test_set)
    for times in (docs / CELL).glob("times_seed*.tsv"):
        shutil.copy(times, scratch)
    as_the_map_committed(docs / CELL)
    return docs, scratch


def cell_sh(tmp_path, docs, cell=CELL, **env):
    brain = tmp_path / "ch2bet.nii.gz"
    brain.write_bytes(b"")  # only its presence is checked once the runs exist
    outer = {key: value for key, value in os.environ.items()
             if key not in ("SEEDS", "STUDY_FLAGS", "EPOCHS", "SIZE", "KD_METHODS", "STUDENT_FLAGS", "TEACHER_FLAGS",
                            "TRAIN_FLAGS", "PREPARE_FLAGS")}
    full = {**outer, "MAP_DOCS": str(docs), "COLIN27": str(brain), "PYTHON": sys.executable, "ALLOW_DIRTY": "1",
            **env}
    return subprocess.run(["bash", "scripts/study/cell.sh", cell, str(tmp_path / "results")], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two reports and a map, ~20 s of CPU
def test_a_reproduced_rerun_rebuilds_the_committed_cell_byte_for_byte(tmp_path):
    docs, _ = setup(tmp_path)
    result = cell_sh(tmp_path, docs)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reproduced: every committed per-slice metric is identical" in result.stdout
    assert "git add" in result.stdout and "old arms reproduced bit for bit" in result.stdout
    record = json.loads((docs / CELL / "rerun.json").read_text())
    assert record["old_arms_reproduced"] is True and record["kd_methods"] == ["at", "imitation"]
    assert "AMD EPYC" in record["trained_on"]
    # The same check lines as the committed run's: the map's models compared, the new ones counted.
    assert record["check"] == json.loads((ROOT / "docs" / "map" / CELL / "rerun.json").read_text())["check"]
    for name in ("table.md", "table.csv"):
        assert (docs / CELL / name).read_text() == (ROOT / "docs" / "map" / CELL / name).read_text()
    assert (docs / "map.md").read_text() == (ROOT / "docs" / "map" / "map.md").read_text()


@pytest.mark.slow
def test_a_rerun_that_differs_is_refused_on_the_map_s_cpu_kind_and_a_new_cell_on_another(tmp_path):
    docs, scratch = setup(tmp_path, whole_map=False)
    metrics = scratch / "mni152" / "seed23" / "metrics.csv"
    lines = metrics.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("sftkd-at-seed23,"))  # an arm of the map
    fields = lines[row].split(",")
    fields[3] = repr(float(fields[3]) + 1e-9)
    metrics.write_text("\n".join([*lines[:row], ",".join(fields), *lines[row + 1:]]) + "\n")
    before = (docs / CELL / "mni152" / "seed23" / "metrics.csv").read_text()
    refused = cell_sh(tmp_path, docs)
    assert refused.returncode == 1 and "the code changed their numbers" in refused.stderr
    assert f"seed23: {fields[0]} differs on 1 of 28 slices" in refused.stdout
    assert (docs / CELL / "mni152" / "seed23" / "metrics.csv").read_text() == before
    assert not (docs / CELL / "rerun.json").exists()
    # The same difference from another CPU kind: a new cell, copied whole (the second brain too, which the map
    # draws apart), its record saying so.
    for summary_path in scratch.glob("*/seed*/summary.json"):
        summary = json.loads(summary_path.read_text())
        for record in summary["trained_on"].values():
            record["cpu"] = "Other CPU (family 6, model 143)"
        summary["test_set"] = summary_path.parts[-3]
        summary_path.write_text(json.dumps(summary))
    new = cell_sh(tmp_path, docs)
    assert new.returncode == 0, new.stderr[-2000:]
    assert "the CPU kind differs" in new.stdout and "new cell" in new.stdout
    assert (docs / CELL / "mni152" / "seed23" / "metrics.csv").read_text() == metrics.read_text()
    assert json.loads((docs / CELL / "rerun.json").read_text())["old_arms_reproduced"] is False
    table = (docs / CELL / "table.md").read_text()
    assert "Trained on: Other CPU (family 6, model 143)" in table and "| 4x colin27 |" in table
    assert (docs / "colin27" / "map.md").read_text().startswith("Map, colin27 test set")


def test_bad_cells_and_settings_are_refused_before_anything_runs(tmp_path):
    docs = tmp_path / "map"
    docs.mkdir()
    assert cell_sh(tmp_path, docs, cell="w8-5x").stderr.startswith("error: unknown cell 'w8-5x'")
    refused = cell_sh(tmp_path, docs, SEEDS="1 2")
    assert refused.returncode == 2 and refused.stderr.startswith("error: SEEDS is set")
    missing = cell_sh(tmp_path, docs)
    assert missing.returncode == 2 and missing.stderr.startswith(f"error: {docs}/{CELL}/mni152 does not exist")
    assert not (tmp_path / "results").exists()


def test_reproduced_compares_every_committed_row_as_text(tmp_path):
    from conftest import run_cli
    committed = ROOT / "docs" / "map" / CELL
    same = run_cli("-m", "scripts.study.reproduced", "--committed", str(committed), "--rerun", str(committed))
    assert same.returncode == 0 and same.stdout.splitlines()[-1].startswith("reproduced: every committed")
    rerun = tmp_path / CELL
    shutil.copytree(committed, rerun)
    metrics = rerun / "mni152" / "seed21" / "metrics.csv"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(line for line in lines if not line.startswith("sftkd-at-seed21,")) + "\n")
    missing = run_cli("-m", "scripts.study.reproduced", "--committed", str(committed), "--rerun", str(rerun))
    assert missing.returncode == 1 and "not reproduced: mni152/seed21: sftkd-at-seed21 is missing" in missing.stdout
    models = scored(committed / "mni152" / "seed22")
    assert f"mni152/seed22: {len(models)} of {len(models)} committed models identical, 0 new" in missing.stdout
    bad = run_cli("-m", "scripts.study.reproduced", "--committed", str(tmp_path / "nothing"), "--rerun", str(rerun))
    assert bad.returncode == 2 and bad.stderr.startswith("error: --committed")


def test_partial_compares_only_the_rerun_models(tmp_path):
    from conftest import run_cli
    committed = ROOT / "docs" / "map" / CELL
    rerun = tmp_path / CELL
    shutil.copytree(committed, rerun)
    for metrics in rerun.glob("*/seed*/metrics.csv"):
        lines = metrics.read_text().splitlines()
        metrics.write_text("\n".join(line for line in lines if "kd-" not in line.split(",")[0]) + "\n")
    models = scored(committed / "mni152" / "seed21")
    kept = {model for model in models if "kd-" not in model}
    partial = run_cli("-m", "scripts.study.reproduced", "--committed", str(committed), "--rerun", str(rerun),
                      "--partial")
    assert partial.returncode == 0, partial.stdout
    assert 2 < len(kept) < len(models)
    assert (f"mni152/seed21: {len(kept)} of {len(models)} committed models identical ({len(models) - len(kept)} not "
            "rerun), 0 new") in partial.stdout


@pytest.mark.slow  # a report and a map, ~10 s of CPU
def test_arms_evaluated_apart_join_their_cell_s_table_and_map(tmp_path):
    """A cell's nokd/{test set}/seedN (N and L run after the cell) is read with the cell by study.sh's report and
    map.py: their rows and contrasts appear, the rest of the table is unchanged."""
    docs = tmp_path / "map"
    shutil.copytree(ROOT / "docs" / "map" / CELL, docs / CELL)
    as_the_map_committed(docs / CELL)
    roles = {"stdkd-sftinit-none": {"model": "kd", "teacher": "standard", "init": "sft-blocks", "kd_method": "none"},
             "stdkd-none": {"model": "kd", "teacher": "standard", "init": "scratch", "kd_method": "none"}}
    for seed in range(21, 26):
        source = docs / CELL / "mni152" / f"seed{seed}"
        part = docs / CELL / "nokd" / "mni152" / f"seed{seed}"
        part.mkdir(parents=True)
        lines = (source / "metrics.csv").read_text().splitlines()
        rows = [lines[0], *(line for line in lines if line.startswith("ZF,"))]
        for run, like in (("stdkd-sftinit-none", "stdkd-sftinit-at"), ("stdkd-none", "student")):
            rows += [line.replace(f"{like}-seed{seed},", f"{run}-seed{seed},", 1) for line in lines
                     if line.startswith(f"{like}-seed{seed},")]
        (part / "metrics.csv").write_text("\n".join(rows) + "\n")
        summary = json.loads((source / "summary.json").read_text())
        nets = summary["roles"][f"stdkd-at-seed{seed}"]["nets"]
        summary["roles"] = {f"{run}-seed{seed}": {**r, "nets": nets, "seed": seed} for run, r in roles.items()}
        summary["checkpoints"] = {f"{run}-seed{seed}": f"{run}/best_model.pt" for run in roles}
        summary["trained_on"] = {name: summary["machine"] for name in summary["checkpoints"]}
        (part / "summary.json").write_text(json.dumps(summary))
    env = {**os.environ, "REPORT_ONLY": "1", "DOCS": str(docs / CELL), "PYTHON": sys.executable}
    result = subprocess.run(["bash", "scripts/study/study.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    table = (docs / CELL / "table.md").read_text()
    committed = (ROOT / "docs" / "map" / CELL / "table.md").read_text()
    # N scores like C here, so B - N is B - C (n, mean, interval, per seed, SD, MDE); the old rows are the
    # committed ones.
    primary = next(line for line in table.splitlines() if line.startswith("| **B - C"))
    b_n = next(line for line in table.splitlines() if line.startswith("| B - N"))
    assert b_n.split("|")[3:9] == primary.split("|")[3:9]
    assert "| SFT blocks, no KD |" in table and "| Student alone, pre-training + KD epochs |" in table
    teacher = next(line for line in committed.splitlines() if line.startswith("| Teacher | 4x mni152 |"))
    assert teacher.replace("| 4x mni152 |", "| 4x |") in table
    mapped = subprocess.run([sys.executable, "-m", "scripts.study.map", "--map-dir", str(docs), "--out-dir",
                             str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert mapped.returncode == 0, mapped.stderr[-2000:]
    assert f"| {CELL} | D - L (student pre-training + KD vs the student alone, same epochs) (at) |" in \
        (tmp_path / "out" / "map.md").read_text()
