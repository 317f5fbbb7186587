"""The README agrees with the code: its test command is CI's, its sweep commands parse, the
folder it names is the sweep's, its CPU table is the generated one, and the repository carries
its own contract (no outside document)."""

import re
import shlex
import subprocess

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser, from PyPI (the [dev] extra declares it)
    import tomli as tomllib
from pathlib import Path

import pytest

from perf import sweep

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def test_ci_runs_the_readme_test_command_and_its_markers_exist():
    """The README's test commands are what CI runs, and the markers they select by exist."""
    section = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for block in bash_blocks(section) for line in block.strip().splitlines()]
    tests = [command for command in commands if command.startswith("python -m pytest")]
    assert tests, "the README's first screen has no test command"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests[0] in ci, f"{tests[0]!r} (the README's test command) is not a line of .ci/run"
    markers = [
        m.split(":")[0]
        for m in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    ]
    for command in tests:
        for expression in re.findall(r'-m "([^"]+)"', command):
            assert set(re.findall(r"\w+", expression)) - {"not", "and", "or"} <= set(markers), command


def test_the_readme_says_where_the_sweep_writes(monkeypatch):
    monkeypatch.delenv("TRITON_FOCAL_PERF_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    written = sweep.default_out("DEVICE").relative_to(Path.home())
    assert f"~/{written.parent}/<device>/" in README


def test_the_notebook_command_keeps_an_output_the_readme_reads_and_git_ignores():
    section = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    # jupyter execute alone prints nothing and saves nothing: --output keeps the executed copy.
    command = re.search(r"jupyter execute --output=(\w+) notebooks/segmentation_swap_in\.ipynb", section)
    assert command, "the notebook command must keep its output with --output"
    assert f"notebooks/{command.group(1)}.ipynb" in section  # the next command reads that copy
    assert f"notebooks/*{command.group(1)[-9:]}.ipynb" in (ROOT / ".gitignore").read_text()
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    # nbclient installs `jupyter execute`; --output needs 0.11 (the version checked here)
    assert any(req.replace(" ", "") == "nbclient>=0.11" for req in dev)
    assert (ROOT / "notebooks" / "segmentation_swap_in.ipynb").exists()


def perf_commands():
    texts = README + (ROOT / "perf" / "README.md").read_text()
    return sorted(set(re.findall(r"python -m perf\.sweep[^`\n#]*", texts)))


@pytest.mark.parametrize("command", perf_commands())
def test_every_documented_sweep_command_parses(command):
    argv = shlex.split(command)[3:]
    argv = [a for a in argv if a not in ("&&",)]
    sweep.parse_args(argv)


def test_cpu_table_is_the_generated_one():
    """Each ratio in the README's CPU table appears in the committed summary of the run."""
    summary = (ROOT / "perf" / "results" / "cpu" / "compare" / "summary.md").read_text()
    section = README.split("### On a CPU", 1)[1].split("\n## ", 1)[0]
    assert "python -m perf.sweep --cpu-table --out perf/results/cpu/compare" in section
    rows = [line for line in section.splitlines() if line.startswith(("| seg", "| vocab", "| det"))]
    assert len(rows) == 8
    generated = re.findall(r"(\d+\.\d+) \[(\d+\.\d+)-(\d+\.\d+)\]", summary)
    generated = {tuple(round(float(v), 1) for v in triple) for triple in generated}
    for row in rows:
        for triple in re.findall(r"(\d+\.\d+) \[(\d+\.\d+)-(\d+\.\d+)\]", row):
            assert tuple(round(float(v), 1) for v in triple) in generated, f"{triple} of {row!r} is not in the summary"


def test_no_file_points_to_a_document_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in (".py", ".md", ".toml", ".txt", ".ipynb") and path.exists() and path != Path(__file__):
            if "SPEC.md" in path.read_text(errors="ignore"):
                offenders.append(name)
    assert not offenders, f"these files cite SPEC.md, which is not in the repository: {offenders}"
