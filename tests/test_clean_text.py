"""Text from users and files never reaches the terminal raw (issue 25, item 5): one sanitiser, utils.clean_text,
shows control characters escaped (a newline as \\n, an escape code as \\x1b); every error line passes through it,
and arguments holding one are refused before anything runs."""
from __future__ import annotations

import pytest

import evaluate
import train_teacher
from scripts import report
from tests.conftest import cli_error
from utils import UserError, clean_text


def test_clean_text_escapes_controls_and_keeps_the_rest():
    assert clean_text("a\nerror: fake") == "a\\nerror: fake"
    assert clean_text("a\x1b[2Jb\t\x07\u200e") == "a\\x1b[2Jb\\t\\x07\\u200e"
    assert clean_text("Ünïcode ok / 4x") == "Ünïcode ok / 4x"
    assert clean_text("x" * 300) == "x" * 200 and clean_text("x" * 300, None) == "x" * 300


def one_line(main, argv, capsys) -> str:
    err = cli_error(main, argv, capsys)
    assert "\x1b" not in err and "\x07" not in err
    return err


@pytest.mark.parametrize("main, argv", [
    (evaluate.main, ["--checkpoints", "c.pt", "--names", "a\x1b[2Jb", "--data-root", "d", "--acc", "4x",
                     "--out-dir", "o"]),
    (train_teacher.main, ["--data-root", "d", "--exp-dir", "E/a\nerror: fake", "--epochs", "1"]),
    (report.main, ["--eval-dirs", "e\x07", "--out-dir", "o"]),
])
def test_arguments_with_control_characters_are_refused_shown_escaped(main, argv, capsys, tmp_path, monkeypatch):
    # Issue list 6: --names $'a\e[2Jb' cleared the screen from the results table, and --exp-dir $'E/a\nerror: fake'
    # printed a fake error line.
    monkeypatch.chdir(tmp_path)
    err = one_line(main, argv, capsys)
    assert "holds a control character" in err and ("\\x1b[2J" in err or "\\nerror: fake" in err or "\\x07" in err)
    assert not any(tmp_path.iterdir())


def test_every_error_line_is_sanitised(capsys, monkeypatch):
    monkeypatch.delenv("SFTKD_DEBUG", raising=False)

    def fails(argv):
        raise UserError("checkpoint x.pt: run name 'evil\nerror: all good' \x1b[31mred")
    err = one_line(fails, [], capsys)
    assert err == "error: checkpoint x.pt: run name 'evil\\nerror: all good' \\x1b[31mred\n"
