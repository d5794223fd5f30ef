"""scripts/study/map.py reads each cell's width from its recorded roles and gives the contrasts the study's own table
gives; scripts/study/map.sh runs a tiny cell end to end and resumes it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from scripts.study.map import main
from utils import UserError


def fake_cell(folder: Path, docs: str, width: int) -> Path:
    """A map cell from a committed study (docs/study*): its MNI152 evaluations, every run recorded at ``width``."""
    for seed_dir in sorted((ROOT / docs / "mni152").glob("seed*")):
        out = folder / "mni152" / seed_dir.name
        out.mkdir(parents=True)
        (out / "metrics.csv").write_bytes((seed_dir / "metrics.csv").read_bytes())
        summary = json.loads((seed_dir / "summary.json").read_text())
        for roles in summary["roles"].values():
            roles["nets"] = {"student": {"cascades": 5, "depth": 3, "width": width}}
        (out / "summary.json").write_text(json.dumps(summary))
    return folder


def test_the_map_gives_each_cell_the_study_table_numbers_under_its_recorded_width(tmp_path):
    fake_cell(tmp_path / "map" / "w32-4x", "docs/study", 8)  # the folder's name is wrong: the roles say 8
    fake_cell(tmp_path / "map" / "w16-4x", "docs/study-augment", 16)
    out = tmp_path / "out" / "map.png"
    main(["--map-dir", str(tmp_path / "map"), "--out-dir", str(out.parent)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mapped, every = (tmp_path / "out" / "map.md").read_text().split("Every contrast of every cell")
    rows = [line for line in mapped.splitlines() if line.startswith("| w")]
    # The committed tables' (docs/map.md) Teacher - Student and AT B - C on the MNI152 block, width first.
    assert rows == ["| w32-4x | 8 | 4x | 5 | -0.51 [-1.66, +0.63] | -0.24 [-0.59, +0.11] | 0.28 | 0.48 |",
                    "| w16-4x | 16 | 4x | 5 | -0.30 [-0.78, +0.18] | +0.06 [-0.16, +0.29] | 0.18 | 0.31 |"]
    # Below it, every contrast with its power statement, as docs/study.md's two tables give them.
    rows = [line for line in every.splitlines() if line.startswith("| w16-4x")]
    assert len(rows) == 2 + 4 * 2  # Teacher - Student, SFT teacher - Teacher; B - C, B - A, C - A, C - D per KD method
    assert ("| w16-4x | **B - C (SFT teacher vs standard, both SFT blocks) (at)** (primary) | +0.06 [-0.16, +0.29] "
            "| 0.18 | 0.31 | null: > +0.29 excluded |") in rows
    assert "| w16-4x | B - A (SFT-KD-Recon vs Std-KD) (at) | +0.99 [+0.60, +1.38] | 0.31 | 0.53 | above 0 |" in rows
    assert "| w16-4x | SFT teacher - Teacher | -0.51 [-0.66, -0.36] | 0.12 | 0.20 | below 0 |" in rows
    with pytest.raises(UserError, match="already exists"):
        main(["--map-dir", str(tmp_path / "map"), "--out-dir", str(out.parent)])
    fake_cell(tmp_path / "map" / "again", "docs/study", 8)
    with pytest.raises(UserError, match="are both the cell student width 8, 4x"):
        main(["--map-dir", str(tmp_path / "map"), "--out-dir", str(out.parent), "--overwrite"])


def test_cells_of_different_training_settings_are_refused(tmp_path):
    def record(cell: Path, augment: bool, seeds=None):
        for summary_path in sorted(cell.glob("mni152/seed*/summary.json"))[:seeds]:
            summary = json.loads(summary_path.read_text())
            summary["recipe"] = {name: {"epochs": 40, "augment": augment} for name in summary["roles"]}
            summary_path.write_text(json.dumps(summary))

    augmented = fake_cell(tmp_path / "map" / "w16-4x", "docs/study-augment", 16)
    plain = fake_cell(tmp_path / "map" / "w8-4x", "docs/study", 8)
    out = tmp_path / "out" / "map.png"
    record(augmented, True)
    main(["--map-dir", str(tmp_path / "map"), "--out-dir", str(out.parent)])  # an older cell that recorded none is not checked
    assert ("recorded and the same in w16-4x; not recorded (runs of older versions, not checked): w8-4x"
            in (tmp_path / "out" / "map.md").read_text())
    record(plain, False)
    with pytest.raises(UserError, match=r"w16-4x and .*w8-4x trained teacher in different settings \(augment True "
                                        r"against False\)"):
        main(["--map-dir", str(tmp_path / "map"), "--out-dir", str(out.parent), "--overwrite"])
    record(plain, True, seeds=2)  # two of its seeds now say True, the others False
    with pytest.raises(UserError, match=r"w8-4x: its teacher runs were trained in two settings"):
        main(["--map-dir", str(tmp_path / "map"), "--out-dir", str(out.parent), "--overwrite"])


def test_a_cell_without_recorded_widths_is_refused(tmp_path):
    folder = tmp_path / "map" / "w8-4x" / "mni152" / "seed11"
    folder.mkdir(parents=True)
    for name in ("metrics.csv", "summary.json"):
        (folder / name).write_bytes((ROOT / "docs/study/mni152/seed11" / name).read_bytes())
    with pytest.raises(UserError, match="record no widths"):
        main(["--map-dir", str(tmp_path / "map"), "--out-dir", str(tmp_path / "m")])


def map_sh(tmp_path, **env):
    full = {**os.environ, "WIDTHS": "4", "ACCS": "4x", "SEEDS": "1", "EPOCHS": "1", "SIZE": "16",
            "KD_METHODS": "imitation", "PREPARE_FLAGS": "--max-slices-per-volume 12", "OMP_NUM_THREADS": "1",
            "PYTHON": sys.executable, "MAP_DOCS": str(tmp_path / "docs"), "COLIN27": str(tmp_path / "none"), **env}
    return subprocess.run(["bash", "scripts/study/map.sh", str(tmp_path / "runs")], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_map_sh_runs_a_cell_at_its_width_and_resumes(tmp_path):
    result = map_sh(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # Without the second brain (COLIN27 names no file) the study says so and scores MNI152 alone.
    assert ("is not installed (Debian: apt-get install mricron-data); the study skips the Colin27 test set"
            in result.stdout)
    assert not (tmp_path / "docs" / "w4-4x" / "colin27").exists()
    config = json.loads((tmp_path / "runs" / "w4-4x" / "seed1" / "4x" / "stdkd-imitation" / "config.json").read_text())
    assert config["roles"]["nets"]["student"]["width"] == 4
    assert config["augment"] is True and config["lr_step_size"] == 20  # the map's setting, not study.sh's default
    table = (tmp_path / "docs" / "map.md").read_text()
    assert "| w4-4x | 4 | 4x | 1 |" in table and "recorded and the same in w4-4x." in table
    again = map_sh(tmp_path)
    assert again.returncode == 0 and "== cell w4-4x: done" in again.stdout
    refused = map_sh(tmp_path, SEEDS="11 30")
    assert refused.returncode == 2 and refused.stderr.startswith("error: SEEDS has 11, a seed of the study")


def nokd_rows(text: str) -> list[str]:
    """The rows of the no-KD arms' table in a map.md (or docs/map.md, which quotes them)."""
    return [line for line in text.splitlines() if line.startswith("| w") and line.count("|") == 8]


def test_the_no_kd_contrasts_get_one_row_per_cell_and_kd_method(tmp_path):
    """A cell with N and L (w16-4x, AT and imitation): one row per KD method, each contrast as its table.md gives
    it; a cell without them has no row."""
    shutil.copytree(ROOT / "docs" / "map" / "w16-4x", tmp_path / "map" / "w16-4x",
                    ignore=shutil.ignore_patterns("colin27"))
    fake_cell(tmp_path / "map" / "w8-8x", "docs/study", 8)
    main(["--map-dir", str(tmp_path / "map"), "--out-dir", str(tmp_path / "out")])
    rows = nokd_rows((tmp_path / "out" / "map.md").read_text())
    assert [row.split(" | ")[:3] for row in rows] == [["| w16-4x", "mni152", "at"], ["| w16-4x", "mni152", "imitation"]]
    table = (ROOT / "docs" / "map" / "w16-4x" / "table.md").read_text()
    for row, method in zip(rows, ("at", "imitation")):
        for column, name in enumerate(("B - N", "C - N", "C - L", "D - L"), start=4):
            line = next(line for line in table.splitlines()
                        if line.startswith(f"| {name} (") and f"({method}) | 4x mni152 |" in line)
            fields = [field.strip() for field in line.split("|")]
            mean, interval, sd, mde = fields[4], fields[5], fields[7], fields[8]
            assert row.split("|")[column].strip().startswith(f"{mean} {interval} (SD {sd}, MDE {mde}; ")


def test_docs_map_quotes_the_committed_no_kd_rows():
    """docs/map.md's table of the no-KD arms is the committed map.md's (MNI152) and colin27/map.md's rows, all
    of them: MAP_ONLY=1 rebuilds its figures."""
    generated = [row for path in ("docs/map/map.md", "docs/map/colin27/map.md")
                 for row in nokd_rows((ROOT / path).read_text())]
    assert len(generated) >= 6
    assert sorted(nokd_rows((ROOT / "docs" / "map.md").read_text())) == sorted(generated)
