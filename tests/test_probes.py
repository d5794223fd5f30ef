"""scripts/probes.py: each probe's contrasts are the study table's, and a lever's paired change is the probe's
per-seed contrast minus the baseline's on the same seeds."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import ROOT
from scripts import probes
from utils import UserError


def copy_probe(folder, docs, seeds=None):
    for seed_dir in sorted((ROOT / docs / "mni152").glob("seed*")):
        if seeds is None or int(seed_dir.name[4:]) in seeds:
            shutil.copytree(seed_dir, folder / "mni152" / seed_dir.name)
    return folder


def test_probe_contrasts_and_paired_changes(tmp_path, capsys):
    base = probes.read_probe(copy_probe(tmp_path / "base", "docs/study"), "mni152", "at")
    lever = probes.read_probe(copy_probe(tmp_path / "augment", "docs/study-augment"), "mni152", "at")
    # docs/study.md's tables: AT B - C on the MNI152 block, -0.24 (SD 0.28) and +0.06 (SD 0.18).
    assert (round(base.found["B - C"].mean, 2), round(base.found["B - C"].sd, 2)) == (-0.24, 0.28)
    assert (round(lever.found["B - C"].mean, 2), round(lever.found["B - C"].sd, 2)) == (0.06, 0.18)
    assert base.seeds == [11, 12, 13, 14, 15]
    change = probes.paired_change(lever.found["B - C"], base.found["B - C"])
    np.testing.assert_allclose(change, lever.found["B - C"].diffs - base.found["B - C"].diffs)
    assert change.mean() == pytest.approx(0.06 + 0.24, abs=0.01)
    # A network's score change is its per-seed mean PSNR difference; B - C's change is B's minus C's.
    b = {s: lever.scores["B"][s] - base.scores["B"][s] for s in base.seeds}
    c = {s: lever.scores["C"][s] - base.scores["C"][s] for s in base.seeds}
    np.testing.assert_allclose(change, [b[s] - c[s] for s in base.seeds])
    text = probes.markdown(base, [lever], "mni152", "at")
    row = next(line for line in text.splitlines() if line.startswith("| augment | ") and "/" in line)
    assert row.split(" | ")[2] == (f"{change.mean():+.2f} [{' '.join(f'{x:+.2f}' for x in change)}] / "
                                   f"{lever.found['B - C'].sd - base.found['B - C'].sd:+.2f}")


def test_a_probe_on_other_seeds_gets_no_paired_change(tmp_path):
    base = probes.read_probe(copy_probe(tmp_path / "base", "docs/study", {11, 12, 13}), "mni152", "at")
    other = probes.read_probe(copy_probe(tmp_path / "other", "docs/study-augment", {13, 14, 15}), "mni152", "at")
    assert probes.paired_change(other.found["B - C"], base.found["B - C"]) is None
    row = next(line for line in probes.markdown(base, [other], "mni152", "at").splitlines()
               if line.startswith("| other | ") and "other seeds" in line)
    assert row.count("– (other seeds)") == 4


def test_missing_probe_and_method_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="has no mni152/seed"):
        probes.main(["--baseline", str(tmp_path / "none"), str(tmp_path / "none")])
    copy_probe(tmp_path / "base", "docs/study", {11, 12})
    with pytest.raises(UserError, match="no B - C for --kd-method fitnet"):
        probes.main(["--baseline", str(tmp_path / "base"), str(tmp_path / "base"), "--kd-method", "fitnet"])
