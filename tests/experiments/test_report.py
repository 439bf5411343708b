"""``fedpeat report`` and the docs site: the committed generated tables match their result files, the CLI reference
matches the commands, bad input is refused before anything is written, and the docs' Python examples run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import app
from experiments.report import (
    DEFAULT_CALIBRATION,
    DEFAULT_OUT,
    DEFAULT_README,
    DEFAULT_RESULTS,
    calibration_parameters,
    readme_with_headline,
    sim2real_headline,
    write_reports,
)
from fedpeat_env.surrogate import Calibration
from tests.helpers import cli_runner, cli_text

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_tables_are_generated_from_the_committed_results(tmp_path):
    written = write_reports(DEFAULT_CALIBRATION, DEFAULT_RESULTS, tmp_path)
    for path in written:
        if path.suffix == ".md":  # the figures are rendered anew (matplotlib's bytes vary by version)
            committed = DEFAULT_OUT / path.name
            assert committed.read_text() == path.read_text(), f"{committed} is stale: run `fedpeat report`"
    readme = DEFAULT_README.read_text()
    assert readme_with_headline(readme, sim2real_headline(DEFAULT_RESULTS / "sim2real")) == readme, \
        "README's results block is stale: run `fedpeat report`"


def test_the_readme_block_is_replaced_between_its_markers_only():
    readme = "intro\n<!-- report:headline -->\nold\n<!-- /report:headline -->\noutro\n"
    assert readme_with_headline(readme, "new\n") == "intro\n<!-- report:headline -->\nnew\n<!-- /report:headline -->\noutro\n"
    with pytest.raises(ValueError, match="README has no <!-- report:headline -->"):
        readme_with_headline("no markers", "new\n")


def test_the_parameter_table_shows_every_fitted_value_and_flags_bounds():
    calibration = Calibration.load(DEFAULT_CALIBRATION)
    table = calibration_parameters(calibration)
    for name, p in calibration.parameters.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert f"{p['value']:.4g}" in row and row.count(" *") == int(p["at_bound"])


def test_a_missing_result_file_is_named_and_nothing_is_written(tmp_path):
    runner = cli_runner()
    out = tmp_path / "generated"
    result = runner.invoke(app,
                           ["report", "--results", str(tmp_path / "nowhere"), "--out", str(out)])
    assert result.exit_code == 2
    assert "sim2real.csv is missing" in cli_text(result.output)
    assert not out.exists()


def test_the_cli_reference_matches_the_commands(tmp_path):
    out = tmp_path / "cli.md"
    subprocess.run([sys.executable, "-m", "typer", "experiments.cli", "utils", "docs", "--name", "fedpeat", "--title",
                    "Command line (generated)", "--output", str(out)], check=True, cwd=ROOT, capture_output=True)
    assert (ROOT / "docs" / "cli.md").read_text() == out.read_text(), "docs/cli.md is stale: run `make docs`"


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


DOC_PAGES = [ROOT / "README.md", *(p for p in sorted((ROOT / "docs").glob("*.md")) if p.name != "clients.md")]
"""Pages whose Python examples run in-process (docs/clients.md: its scripts run in tests/fedpeat_env/test_clients_doc)."""
EXAMPLES = [(path, i, code) for path in DOC_PAGES
            for i, code in enumerate(_python_blocks(path))]


@pytest.mark.parametrize("path,index,code", EXAMPLES, ids=[f"{p.name}-{i}" for p, i, _ in EXAMPLES])
def test_every_python_example_of_the_docs_runs(path, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{path.name}[{index}]", "exec"), {"__name__": "__docs__"})
