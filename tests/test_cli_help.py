"""Every command-line tool of the project documents each option and its default in --help."""

import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "examples").glob("*.py"))
MODULES = ["perf.sweep", "perf.plot", "perf.summary", "perf.cpu_threads"]


def help_text(target, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [target, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        if target.endswith(".py"):
            runpy.run_path(str(ROOT / target), run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=False)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("target", SCRIPTS + MODULES)
def test_help_states_every_option_with_its_default(target, monkeypatch, capsys):
    text = help_text(target, monkeypatch, capsys)
    options = text.split("options:", 1)[1]
    # One entry per option: a line starting with "  -x" or "  --name", up to the next one.
    entries = re.split(r"\n  (?=-)", "\n" + options)[1:]
    assert entries, text
    for entry in entries:
        name = entry.split()[0].rstrip(",")
        if name in ("-h", "--help"):
            continue
        assert "(default:" in entry, f"{target}: option {name} has no default in --help"
