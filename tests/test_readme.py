"""The README's first screen works when followed literally, its commands parse, its CPU table
is the generated one, and the repository carries its own contract (no outside document)."""

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


def test_cpu_torch_note_comes_before_the_two_commands():
    section = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    note = section.index("download.pytorch.org/whl/cpu")
    assert note < section.index("```bash")
    commands = [[line.split("#")[0].strip() for line in block.strip().splitlines()] for block in bash_blocks(section)]
    assert commands == [
        ['pip install -e ".[dev]" && python -m perf.sweep --quick'],
        ["python -m pytest -q", 'python -m pytest -q -m "not slow"'],
    ]


def test_the_first_screen_says_where_results_go_what_the_first_call_costs_and_how_to_run_the_notebook():
    section = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    assert "~/.cache/triton_focal/perf/" in section and "--out" in section
    assert "first call" in section and "TRITON_FOCAL_BACKEND=reference" in section
    # The notebook command keeps its output (jupyter execute alone prints nothing and saves nothing).
    command = re.search(r"jupyter execute --output=(\w+) notebooks/segmentation_swap_in\.ipynb", section)
    assert command, "the notebook command must keep its output with --output"
    assert f"notebooks/{command.group(1)}.ipynb" in section  # and the README shows how to read it
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
