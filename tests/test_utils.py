"""Tests of utils.py: atomic files, checkpoints, RNG state and the CLI error wrapper."""
from __future__ import annotations

import argparse
import errno
import io
import json
import random

import numpy as np
import pytest
import torch

from data.masks import AccelerationError
from models.checkpoints.io import load_checkpoint, save_checkpoint
from data.outputs import atomic_write, write_json, write_text
from utils import UserError, describe_machine, get_rng_state, machine, run_cli, seed_everything, set_rng_state


# --------------------------------------------------------------------------- atomic files

def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old contents")

    def half_write(f):
        f.write(b"new partial data")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, half_write)
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]

    atomic_write(path, lambda f: f.write(b"new contents"))
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_write_json_and_text(tmp_path):
    write_json(tmp_path / "a" / "b.json", {"psnr": 31.5, "names": ["x"]})
    assert json.loads((tmp_path / "a" / "b.json").read_text()) == {"psnr": 31.5, "names": ["x"]}
    write_text(tmp_path / "c.txt", "hello\n")
    assert (tmp_path / "c.txt").read_text() == "hello\n"


# --------------------------------------------------------------------------- checkpoints

def _checkpoint() -> dict:
    torch.manual_seed(0)
    return {"format": "sftkd-v1", "arch": {"kind": "dccnn", "n_convs": 3},
            "model": {"w": torch.randn(3, 4), "b": torch.arange(5)},
            "epoch": 7, "best_val_loss": 0.125, "config": {"acc": ["4x"], "lr": 1e-3}}


def test_checkpoint_round_trip(tmp_path):
    ckpt = _checkpoint()
    path = tmp_path / "run" / "model.pt"
    save_checkpoint(ckpt, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], ckpt["model"]["w"])
    assert torch.equal(loaded["model"]["b"], ckpt["model"]["b"])
    assert loaded["epoch"] == 7 and loaded["best_val_loss"] == 0.125
    assert loaded["config"] == ckpt["config"] and loaded["arch"] == ckpt["arch"]
    # The file itself loads with weights_only=True (no pickled objects inside).
    torch.load(path, weights_only=True)


def test_load_checkpoint_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(UserError, match="does not exist") as info:
        load_checkpoint(missing, "--teacher-checkpoint")
    assert str(missing) in str(info.value) and "--teacher-checkpoint" in str(info.value)

    corrupt = tmp_path / "corrupt.pt"
    save_checkpoint(_checkpoint(), corrupt)
    data = corrupt.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as info:
        load_checkpoint(corrupt)
    assert str(corrupt) in str(info.value) and "\n" not in str(info.value)

    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(UserError, match="garbage.pt"):
        load_checkpoint(garbage)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        load_checkpoint(foreign)


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "public.pt"
    torch.save({"model": {}, "arch": {}, "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(UserError, match=r"pickled Python objects \(argparse.Namespace\).*import_checkpoint"):
        load_checkpoint(path)
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": {}, "arch": {}, "args": io.StringIO("x")}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match=r"legacy.pt holds pickled Python objects \(_io.StringIO\) that no checkpoint"):
        load_checkpoint(legacy)


def test_a_dataloader_worker_error_prints_the_workers_own_message(capsys, monkeypatch):
    """torch re-raises a worker's error with its traceback as the message; the user sees the last line only."""
    monkeypatch.delenv("SFTKD_DEBUG", raising=False)

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise AccelerationError("'3y' is not an acceleration")

    def main(argv):
        next(iter(torch.utils.data.DataLoader(Broken(), num_workers=1)))

    with pytest.raises(SystemExit):
        run_cli(main, [])
    assert capsys.readouterr().err == "error: '3y' is not an acceleration\n"


# --------------------------------------------------------------------------- RNG state

def _draw() -> tuple:
    return (random.random(), random.randint(0, 10 ** 9), tuple(np.random.rand(3)),
            float(np.random.standard_normal()), tuple(torch.rand(3).tolist()), int(torch.randint(0, 10 ** 9, ())))


@pytest.mark.parametrize("through_file", [False, True])
def test_rng_state_reproduces_next_numbers(tmp_path, through_file):
    seed_everything(123)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's legacy state (has_gauss = 1)
    state = get_rng_state()
    expected = _draw()
    if through_file:
        torch.save(state, tmp_path / "rng.pt")
        state = torch.load(tmp_path / "rng.pt", weights_only=True)
    _draw()  # move every generator on
    set_rng_state(state)
    assert _draw() == expected


def test_seed_everything_repeats():
    seed_everything(5)
    first = _draw()
    seed_everything(5)
    assert _draw() == first
    seed_everything(6)
    assert _draw() != first


# --------------------------------------------------------------------------- run_cli

def _failing_main(argv):
    if argv and argv[0] == "ok":
        print("fine")
        return
    raise UserError("--data-root /nowhere does not exist")


def test_run_cli_user_error_exit_code(capsys, monkeypatch):
    monkeypatch.delenv("SFTKD_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        run_cli(_failing_main, ["--flag"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "error: --data-root /nowhere does not exist\n"
    assert "Traceback" not in captured.err

    run_cli(_failing_main, ["ok"])
    assert capsys.readouterr().out == "fine\n"


def test_run_cli_debug_reraises(monkeypatch):
    with pytest.raises(UserError):
        run_cli(_failing_main, ["--debug"])
    monkeypatch.setenv("SFTKD_DEBUG", "1")
    with pytest.raises(UserError):
        run_cli(_failing_main, [])


def test_run_cli_disk_full_is_user_facing(capsys, monkeypatch):
    monkeypatch.delenv("SFTKD_DEBUG", raising=False)

    def disk_full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/out/model.pt")

    with pytest.raises(SystemExit) as info:
        run_cli(disk_full, [])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No space left on device: /out/model.pt")

    def bug(argv):
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError):
        run_cli(bug, [])


def _renamed_parser():
    from utils import CliParser, old_spellings
    parser = CliParser(prog="tool")
    old_spellings(parser.add_argument("--out-dir", "--out", dest="out", required=True), "--out")
    return parser


def test_old_spelling_of_a_renamed_flag_is_refused_with_a_hint_and_hidden(capsys):
    parser = _renamed_parser()
    assert parser.parse_args(["--out-dir", "a"]).out == "a"
    for argv in (["--out", "a"], ["--out=a"], ["--out-dir", "a", "--out"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: --out is now --out-dir: give --out-dir"), err
    text = parser.format_help()
    assert "--out-dir" in text and "--out " not in text and "--out," not in text
    assert "--debug" in text and "SFTKD_DEBUG" in text
    with pytest.raises(SystemExit):
        parser.parse_args([])
    err = capsys.readouterr().err
    assert "required: --out-dir (see tool --help)" in err and "--out-dir/--out" not in err
    # --debug is consumed by run_cli, so it never reaches config.json through the parsed flags.
    assert "debug" not in vars(parser.parse_args(["--out-dir", "a"]))


@pytest.mark.parametrize("text, ok", [("0", True), ("42", True), (str(2 ** 32 - 1), True), (str(2 ** 32), False),
                                      ("-1", False), ("1.5", False)])
def test_seed_type_takes_numpy_seeds_only(text, ok):
    import argparse
    from utils import seed_type
    if ok:
        assert seed_type(text) == int(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="0 to 4294967295"):
            seed_type(text)


@pytest.mark.parametrize("text, ok", [("0", True), ("0.5", True), ("-1", False), ("nan", False), ("inf", False),
                                      ("x", False)])
def test_weight_type(text, ok):
    import argparse
    from models.training.flags import weight_type
    if ok:
        assert weight_type(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError):
            weight_type(text)


# --------------------------------------------------------------------------- the machine a figure comes from

def test_machine_records_cpu_isa_torch_build_and_threads(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    info = machine()
    assert json.loads(json.dumps(info)) == info  # JSON-able: it goes into config.json and summary.json
    assert info["isa"].split(" + ")[0] == torch.backends.cpu.get_cpu_capability()
    assert info["torch"] == torch.__version__ and info["threads"] == torch.get_num_threads()
    assert info["caps"] == "ONEDNN_MAX_CPU_ISA=AVX2" and info["cpu"] and info["cores"] >= 1
    line = describe_machine(info)
    assert line.startswith(info["cpu"] + ", ") and f"ISA {info['isa']} (capped: ONEDNN_MAX_CPU_ISA=AVX2)" in line
    assert describe_machine({"cpu": "AMD EPYC (family 25, model 1)", "cores": 2, "isa": "AVX2", "caps": "",
                             "torch": "2.13.0", "threads": 1, "note": "not shown"}) == \
        "AMD EPYC (family 25, model 1), 2 cores, ISA AVX2, torch 2.13.0, 1 thread"
