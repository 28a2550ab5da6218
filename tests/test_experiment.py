"""The experiment loop on the smoke experiment, end to end, in a tmp directory laid out like the repository."""

import json
import shutil
from pathlib import Path

import pytest

from lm.cli import main
from lm.experiment import base_checkpoint, fit_args, load_experiment

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


@pytest.mark.parametrize("name", sorted(p.parent.name for p in (ROOT / "experiments").glob("*/experiment.yaml")))
def test_every_variant_of_every_experiment_parses(name, monkeypatch, capsys):
    """The configs and flags of each shipped variant compose into a valid fit config (no data or GPU needed)."""
    monkeypatch.chdir(ROOT)
    spec = load_experiment(name)
    runs = Path("runs", name)
    for variant in spec["variants"]:
        args = fit_args(spec, variant, runs / variant, base_checkpoint(spec, variant, runs))
        with pytest.raises(SystemExit) as exit:
            main([*args, "--print_config"])
        assert exit.value.code in (None, 0), f"{name}/{variant}: {capsys.readouterr().err}"
        assert f"default_root_dir: {runs / variant}" in capsys.readouterr().out


def test_a_variant_is_a_fit_command_that_continues_an_interrupted_run(tmp_path):
    spec = {"configs": ["base.yaml"], "variants": {"v": ["more.yaml", "--model.lr=1e-3"]}}
    run_dir = tmp_path / "v"
    fresh = ["fit", "--config", "base.yaml", "--config", "more.yaml", "--model.lr=1e-3"]
    fresh += ["--model.init_from", "b.ckpt", "--trainer.default_root_dir", str(run_dir)]
    assert fit_args(spec, "v", run_dir, "b.ckpt") == fresh
    run_dir.mkdir()  # crashed before its first checkpoint
    assert fit_args(spec, "v", run_dir, "b.ckpt") == [*fresh, "--overwrite", "true"]
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").touch()
    assert fit_args(spec, "v", run_dir, "b.ckpt") == [*fresh, "--ckpt_path", "last"]
