"""The experiment loop on the smoke experiment, end to end, in a tmp directory laid out like the repository."""

import json
import shutil
from pathlib import Path

import pytest

from lm.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """tmp_path as the repository root: configs/ linked, experiments/smoke copied (the report is written there)."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    shutil.copytree(ROOT / "experiments" / "smoke", tmp_path / "experiments" / "smoke")
    for name in ("results.md", "results.png"):  # a report made in the repository is not this test's
        (tmp_path / "experiments" / "smoke" / name).unlink(missing_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # `python -m lm` subprocesses, also without `pip install -e .`
    return tmp_path


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_summary.json").read_text())


def test_smoke_experiment_runs_skips_finished_variants_and_reproduces(workdir, capsys):
    main(["experiment", "run", "smoke"])
    runs = workdir / "runs" / "smoke"
    classic = summary(runs / "classic")
    assert classic["finished"] and classic["best_val"]["val/loss"] < 11
    assert classic["git_commit"] and set(classic["versions"]) == {"python", "torch", "lightning", "lm"}
    report = (workdir / "experiments" / "smoke" / "results.md").read_text()
    assert "| classic | 1,622,016 | 768 |" in report and "| modern |" in report
    assert (workdir / "experiments" / "smoke" / "results.png").read_bytes()[:4] == b"\x89PNG"

    # Again with the classic run gone: the data and the finished modern run are kept, classic is redone...
    modern_summary = (runs / "modern" / "run_summary.json").stat().st_mtime_ns
    shutil.rmtree(runs / "classic")
    capsys.readouterr()
    main(["experiment", "run", "smoke"])
    out = capsys.readouterr().out
    assert "data/python-docs-smoke: already prepared" in out
    assert "runs/smoke/modern: finished, skipped" in out
    assert (runs / "modern" / "run_summary.json").stat().st_mtime_ns == modern_summary
    # ...to the same numbers: same seed, same CPU.
    assert summary(runs / "classic")["best_val"] == classic["best_val"]


def test_an_unknown_experiment_is_one_line_naming_the_known_ones(workdir):
    with pytest.raises(SystemExit, match="no experiment 'nope'.*known: smoke"):
        main(["experiment", "run", "nope"])
