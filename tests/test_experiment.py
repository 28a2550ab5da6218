"""The experiment loop on the smoke experiment, end to end, in a tmp directory laid out like the repository."""

import json
import shutil
from pathlib import Path

import pytest

from lm import experiment
from lm.cli import main
from lm.experiment import base_checkpoint, fit_args, load_experiment

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A tmp directory as the repository root: configs/ linked, experiments/smoke copied (reports are written there)."""
    root = tmp_path_factory.mktemp("repo")
    (root / "configs").symlink_to(ROOT / "configs")
    shutil.copytree(ROOT / "experiments" / "smoke", root / "experiments" / "smoke")
    for name in ("results.md", "results.png", "results.json"):  # a report made in the repository is not this test's
        (root / "experiments" / "smoke" / name).unlink(missing_ok=True)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        monkeypatch.setenv("PYTHONPATH", str(ROOT))  # `python -m lm` subprocesses, also without `pip install -e .`
        yield root


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_summary.json").read_text())


def set_commit(run_dir: Path, sha: str, dirty: bool = False) -> None:
    """Pretend a run ran at commit `sha`: the checkout under test may or may not have uncommitted changes."""
    data = summary(run_dir) | {"git_commit": sha, "git_dirty": dirty}
    (run_dir / "run_summary.json").write_text(json.dumps(data))


def error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code not in (None, 0)
    return str(exit_info.value.code)


@pytest.fixture(scope="module")
def smoke(workdir) -> Path:
    """The smoke experiment, run (from whatever checkout the tests run in), then reported at one pretend commit."""
    main(["experiment", "run", "smoke", "--allow_mixed_commits", "true"])
    runs = workdir / "runs" / "smoke"
    for variant in ("classic", "modern"):
        set_commit(runs / variant, "a" * 40)
    main(["experiment", "report", "smoke"])
    return runs


def test_smoke_experiment_runs_reports_and_records_what_decides_its_numbers(smoke, workdir):
    classic = summary(smoke / "classic")
    assert classic["finished"] and classic["best_val"]["val/loss"] < 11
    assert set(classic["versions"]) == {"python", "torch", "lightning", "lm"}
    assert classic["device"] == "cpu" and classic["threads"] >= 1 and classic["deterministic"] is False
    assert classic["config"]["model"]["config"]["block"] == "classic"  # the resolved config
    assert classic["config"]["trainer"]["default_root_dir"] == "runs/smoke/classic"
    report = (workdir / "experiments" / "smoke" / "results.md").read_text()
    assert "| classic | 1,622,016 | 768 |" in report and "| modern |" in report and "⚠" not in report
    assert "Ran at commit aaaaaaaa with python" in report and "threads, deterministic algorithms off" in report
    assert (workdir / "experiments" / "smoke" / "results.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((workdir / "experiments" / "smoke" / "results.json").read_text())["variants"]
    assert results["classic"]["best_val_loss"] == classic["best_val"]["val/loss"]


def test_a_report_of_several_commits_is_refused_unless_marked(smoke, workdir, capsys):
    set_commit(smoke / "modern", "b" * 40)
    try:
        message = error_line(capsys, ["experiment", "report", "smoke"])
        assert "classic at aaaaaaaa, modern at bbbbbbbb" in message and "--allow_mixed_commits" in message
        set_commit(smoke / "modern", "a" * 40, dirty=True)
        assert "modern at aaaaaaaa+dirty" in error_line(capsys, ["experiment", "report", "smoke"])

        main(["experiment", "report", "smoke", "--allow_mixed_commits", "true"])
        report = (workdir / "experiments" / "smoke" / "results.md").read_text()
        assert "Not one clean commit" in report
        assert "| classic ⚠ |" in report and "| modern ⚠ |" in report
    finally:
        set_commit(smoke / "modern", "a" * 40)
        main(["experiment", "report", "smoke"])


def test_verify_reruns_the_variants_exactly_and_flags_a_difference(smoke, workdir, capsys):
    # The committed modern number is made not to come back: both numbers, the difference, and a non-zero exit.
    results_file = workdir / "experiments" / "smoke" / "results.json"
    results = json.loads(results_file.read_text())
    results["variants"]["modern"]["best_val_loss"] += 0.1
    results_file.write_text(json.dumps(results))
    capsys.readouterr()
    try:
        message = error_line(capsys, ["experiment", "verify", "smoke"])
    finally:
        main(["experiment", "report", "smoke"])
    assert "smoke: modern differ from" in message
    out = capsys.readouterr().out
    classic, modern = (summary(smoke / v)["best_val"]["val/loss"] for v in ("classic", "modern"))
    assert f"| classic | {classic:.6f} | {classic:.6f} | +0.000000 | same | exact |" in out
    assert f"| modern | {modern + 0.1:.6f} | {modern:.6f} | -0.100000 | same | OFF (allowed: 0.0) |" in out
    assert summary(workdir / "runs" / "verify" / "smoke" / "classic")["best_val"]["val/loss"] == classic


def test_finished_variants_are_skipped_and_a_deleted_one_is_redone(smoke, capsys):
    modern_summary = (smoke / "modern" / "run_summary.json").stat().st_mtime_ns
    classic = summary(smoke / "classic")
    shutil.rmtree(smoke / "classic")
    capsys.readouterr()
    main(["experiment", "run", "smoke", "--allow_mixed_commits", "true"])
    out = capsys.readouterr().out
    assert "data/python-docs-smoke: already prepared" in out
    assert "runs/smoke/modern: finished, skipped" in out
    assert (smoke / "modern" / "run_summary.json").stat().st_mtime_ns == modern_summary
    assert summary(smoke / "classic")["best_val"] == classic["best_val"]  # same seed, same CPU


def test_an_unknown_experiment_is_one_line_naming_the_known_ones(workdir):
    with pytest.raises(SystemExit, match="no experiment 'nope'.*known: smoke"):
        main(["experiment", "run", "nope"])


def test_running_from_uncommitted_changes_is_refused_before_any_compute(workdir, monkeypatch):
    monkeypatch.setattr(experiment, "git_state", lambda: {"git_commit": "c" * 40, "git_dirty": True})
    with pytest.raises(SystemExit, match="uncommitted changes.*--allow_mixed_commits"):
        main(["experiment", "run", "smoke", "--runs_root", "elsewhere"])
    assert not Path("elsewhere").exists()


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
    spec = {"configs": ["base.yaml"], "variants": {"v": ["more.yaml", "--model.optim.lr=1e-3"]}}
    run_dir = tmp_path / "v"
    fresh = ["fit", "--config", "base.yaml", "--config", "more.yaml", "--model.optim.lr=1e-3"]
    fresh += ["--model.init_from", "b.ckpt", "--trainer.default_root_dir", str(run_dir)]
    assert fit_args(spec, "v", run_dir, "b.ckpt") == fresh
    run_dir.mkdir()  # crashed before its first checkpoint
    assert fit_args(spec, "v", run_dir, "b.ckpt") == [*fresh, "--overwrite", "true"]
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").touch()
    assert fit_args(spec, "v", run_dir, "b.ckpt") == [*fresh, "--ckpt_path", "last"]
