"""The experiment loop on the smoke experiment, end to end, in a tmp directory laid out like the repository."""

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lm import experiment
from lm.cli import main
from lm.experiment import base_checkpoint, fit_args, load_experiment, reproducing_commit, run_inputs

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
    assert "Ran at commit aaaaaaaa with python" in report
    assert re.search(r"cpu, (1 thread|\d+ threads), deterministic algorithms off", report)
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


def test_commits_with_the_same_code_and_configs_share_a_table(smoke, workdir, monkeypatch):
    """A variant added to an experiment in a later commit that leaves every finished run's inputs as they were joins
    the table unmarked (what each run read: run_inputs, tested below)."""
    inputs = {"a" * 40: {"lm": "tree-1"}, "b" * 40: {"lm": "tree-1"}, "c" * 40: {"lm": "tree-2"}}
    monkeypatch.setattr(experiment, "run_inputs", lambda name, variant, sha, repo: inputs.get(sha))
    monkeypatch.setattr(experiment, "newest_commit", lambda commits, repo: max(commits))
    set_commit(smoke / "modern", "b" * 40)
    try:
        main(["experiment", "report", "smoke"])
        report = (workdir / "experiments" / "smoke" / "results.md").read_text()
        assert "⚠" not in report and "Ran at commits aaaaaaaa, bbbbbbbb (each run reproduces at bbbbbbbb)" in report
        set_commit(smoke / "modern", "c" * 40)
        with pytest.raises(SystemExit, match="classic at aaaaaaaa, modern at cccccccc"):
            main(["experiment", "report", "smoke"])
    finally:
        set_commit(smoke / "modern", "a" * 40)
        main(["experiment", "report", "smoke"])


def test_a_run_reproduces_at_a_later_commit_only_if_its_code_configs_and_settings_are_the_same(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # experiments/ is read from the working directory
    clock = iter(range(1_800_000_000, 1_900_000_000, 60))  # commit dates a minute apart: "newest" is well defined

    def git(*args: str) -> str:
        date = {"GIT_COMMITTER_DATE": f"{next(clock)} +0000", "GIT_AUTHOR_DATE": "1800000000 +0000"}
        command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
        return subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ | date).stdout.strip()

    spec_file = tmp_path / "experiments" / "e" / "experiment.yaml"
    spec_file.parent.mkdir(parents=True)
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "model.py").write_text("n_layer = 4\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text("seed_everything: 0\n")

    def commit(variants: dict, **settings) -> str:
        spec_file.write_text(yaml.safe_dump({"configs": ["configs/base.yaml"], "variants": variants, **settings}))
        git("add", "lm", "configs/base.yaml", "experiments")
        git("commit", "-qm", "x")
        return git("rev-parse", "HEAD")

    git("init", "-q")
    first = commit({"a": ["--x=1"]})
    second = commit({"a": ["--x=1"], "b": ["--x=2"]}, question="grown")  # a variant added, the question reworded
    (tmp_path / "configs" / "base.yaml").write_text("seed_everything: 1\n")
    third = commit({"a": ["--x=1"], "b": ["--x=2"]})  # a shared config changed
    fourth = commit({"a": ["--x=3"], "b": ["--x=2"]})  # a's flags changed
    fifth = commit({"a": ["--x=3"], "b": ["--x=2"]}, prepare=[{"source": "python-docs"}])  # a setting changed
    (tmp_path / "configs" / "scratch.yaml").write_text("seed_everything: 2\n")  # never added
    sixth = commit({"a": ["--x=3"], "c": ["configs/scratch.yaml"]})
    inputs = lambda variant, sha: run_inputs("e", variant, sha, tmp_path)
    assert set(inputs("a", first)) == {"settings", "arguments", "lm", "configs/base.yaml"}
    assert inputs("a", first) == inputs("a", second) != inputs("a", third) != inputs("a", fourth) != inputs("a", fifth)
    assert inputs("b", first) is None and inputs("c", sixth) is None  # not there then; a file git does not track
    reproduced = lambda *runs: reproducing_commit("e", {str(i): run for i, run in enumerate(runs)}, tmp_path)
    assert reproduced(("a", first), ("b", second)) == second
    assert reproduced(("a", first), ("b", third)) is None and reproduced(("a", third), ("a", fourth)) is None
    assert reproduced(("a", fourth), ("a", fourth)) == fourth


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


def fake_run(run_dir: Path, curve: list[tuple[int, float]], sha: str = "a" * 40) -> None:
    """A finished run's run_summary.json and metrics.jsonl, as RunSummaryCallback writes them (val points only)."""
    run_dir.mkdir(parents=True)
    lines = [{"step": tokens // 100, "tokens": tokens, "val/loss": loss} for tokens, loss in curve]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    best = min(lines, key=lambda line: line["val/loss"])
    summary = {
        "finished": True,
        "params": 1000,
        "tokens_seen": curve[-1][0],
        "best_val": {"step": best["step"], "tokens": best["tokens"], "val/loss": best["val/loss"], "val/bpb": 1.0},
        "wall_time_s": 10.0,
        "mean_tokens_per_sec": 100.0,
        "git_commit": sha,
        "git_dirty": False,
        "versions": {"python": "3"},
        "device": "cpu",
        "threads": 2,
        "deterministic": False,
    }
    (run_dir / "run_summary.json").write_text(json.dumps(summary))


def test_seeded_variants_are_runs_of_their_own_with_the_seed_as_a_flag(tmp_path):
    spec = {"configs": ["base.yaml"], "variants": {"a": [], "b": ["--model.optim.lr=1e-3"]}, "seeds": [0, 3]}
    assert experiment.runs_of(spec) == [
        ("a/seed0", "a", 0),
        ("a/seed3", "a", 3),
        ("b/seed0", "b", 0),
        ("b/seed3", "b", 3),
    ]
    assert experiment.runs_of(spec, ["b"]) == [("b/seed0", "b", 0), ("b/seed3", "b", 3)]
    args = fit_args(spec, "b", tmp_path / "b" / "seed3", None, 3)
    assert args == [
        "fit",
        "--config",
        "base.yaml",
        "--model.optim.lr=1e-3",
        "--seed_everything=3",
        "--trainer.default_root_dir",
        str(tmp_path / "b" / "seed3"),
    ]
    assert experiment.runs_of({"variants": {"a": []}}) == [("a", "a", None)]  # no seeds: as before


def test_a_report_over_seeds_gives_mean_spread_tokens_to_target_and_welch_test(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "experiments" / "seeded"
    folder.mkdir(parents=True)
    spec = {
        "question": "q?",
        "variants": {"base": [], "fast": [], "solo": []},
        "seeds": [0, 1],
        "baseline": "base",
        "compare": {"solo": "fast"},
    }
    (folder / "experiment.yaml").write_text(json.dumps(spec))
    runs = tmp_path / "runs" / "seeded"
    fake_run(runs / "base" / "seed0", [(100, 6.0), (200, 5.0), (300, 4.0)])
    fake_run(runs / "base" / "seed1", [(100, 6.0), (200, 5.2), (300, 4.2)])  # target: mean final loss 4.1
    fake_run(runs / "fast" / "seed0", [(100, 4.0), (200, 3.0), (300, 2.9)])  # reaches 4.1 at 100 tokens
    fake_run(runs / "fast" / "seed1", [(100, 4.6), (200, 3.1), (300, 3.0)])  # ... and at 200
    fake_run(runs / "solo" / "seed0", [(100, 5.0), (200, 4.5), (300, 4.4)])  # never reaches it; seed1 never ran
    experiment.report("seeded")
    report = (folder / "results.md").read_text()
    p_value = experiment.welch_p_value([2.9, 3.0], [4.0, 4.2])
    paired = experiment.paired_p_value({0: 2.9, 1: 3.0}, {0: 4.0, 1: 4.2})
    assert f"| base | 2 | 4.1000 ± {0.2 / 2**0.5:.4f} | 4.0000, 4.2000 | 300 | 1.00× | - |" in report
    assert (
        f"| fast | 2 | 2.9500 ± {0.1 / 2**0.5:.4f} | 2.9000, 3.0000 | 150 | 2.00× "
        f"| -1.1500 vs base (p = {p_value:.3f}; {paired:.3f}) |" in report
    )
    solo = "| solo | 1 (one seed: no spread) | 4.4000 | 4.4000 | not reached (0 of 1 seeds did) | - |"
    assert solo + " +1.4500 vs fast (no test: one seed) |" in report
    assert "| solo/seed1 | not run |" in report
    assert "tokens to 4.1000" in report and "Welch" in report and "paired t-test" in report
    assert set(json.loads((folder / "results.json").read_text())["variants"]) == {
        "base/seed0",
        "base/seed1",
        "fast/seed0",
        "fast/seed1",
        "solo/seed0",
    }


def test_without_a_baseline_rows_face_the_lowest_mean_or_their_compare(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "experiments" / "grid"
    folder.mkdir(parents=True)
    # lr8 is compared with itself: a reference of its own (another optimizer's best, say), not tested
    variants = {"lr1": [], "lr2": [], "lr4": [], "lr8": []}
    spec = {"question": "q?", "variants": variants, "seeds": [0, 1], "compare": {"lr8": "lr8"}}
    (folder / "experiment.yaml").write_text(json.dumps(spec))
    runs = tmp_path / "runs" / "grid"
    for variant, losses in {"lr1": (5.0, 5.2), "lr2": (4.0, 4.1), "lr4": (4.5, 4.6), "lr8": (6.0, 6.1)}.items():
        for seed, loss in enumerate(losses):
            fake_run(runs / variant / f"seed{seed}", [(100, loss + 1), (200, loss)])
    experiment.report("grid")
    report = (folder / "results.md").read_text()
    p_value = experiment.welch_p_value([5.0, 5.2], [4.0, 4.1])
    paired = experiment.paired_p_value({0: 5.0, 1: 5.2}, {0: 4.0, 1: 4.1})
    assert f"| +1.0500 vs lr2 (p = {p_value:.3f}; {paired:.3f}) |" in report
    assert "| lr2 | 2 |" in report and "| the reference |" in report
    assert f"| +0.5000 vs lr2 (p = {experiment.welch_p_value([4.5, 4.6], [4.0, 4.1]):.3f}; " in report
    assert f"| lr8 | 2 | 6.0500 ± {0.1 / 2**0.5:.4f} | 6.0000, 6.1000 | the reference |" in report


def test_bad_seeds_or_references_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "experiments" / "x"
    folder.mkdir(parents=True)
    for extra, message in [
        ({"seeds": [0, 0]}, "seeds must be a list of distinct integers"),
        ({"baseline": "nope"}, "baseline is compared with 'nope', which is not a variant"),
        ({"compare": {"nope": "a"}}, "compare names 'nope', which is not a variant"),
    ]:
        (folder / "experiment.yaml").write_text(json.dumps({"variants": {"a": []}, **extra}))
        with pytest.raises(experiment.UserError, match=message):
            load_experiment("x")


def test_a_grid_crosses_each_variant_with_every_combination_of_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "experiments" / "ladder"
    folder.mkdir(parents=True)
    grid = {"model.config.depth": [2, 4], "model.max_flops": [1.0e13, 3.0e13]}
    (folder / "experiment.yaml").write_text(json.dumps({"grid": grid, "seeds": [0, 1]}))
    spec = load_experiment("ladder")
    assert list(spec["variants"]) == [
        "depth2-max_flops1e+13",
        "depth2-max_flops3e+13",
        "depth4-max_flops1e+13",
        "depth4-max_flops3e+13",
    ]
    assert spec["variants"]["depth4-max_flops1e+13"] == ["--model.config.depth=4", "--model.max_flops=10000000000000.0"]
    assert len(experiment.runs_of(spec)) == 8  # × 2 seeds
    (folder / "experiment.yaml").write_text(json.dumps({"variants": {"adamw": ["a.yaml"], "muon": []}, "grid": grid}))
    spec = load_experiment("ladder")
    assert len(spec["variants"]) == 8 and spec["variants"]["muon-depth2-max_flops3e+13"][0] == "--model.config.depth=2"
    assert spec["variants"]["adamw-depth2-max_flops1e+13"][0] == "a.yaml"
    (folder / "experiment.yaml").write_text(json.dumps({"grid": {"model.optim.lr": 3}}))
    with pytest.raises(experiment.UserError, match="grid maps config keys to lists of values"):
        load_experiment("ladder")
    (folder / "experiment.yaml").write_text(json.dumps({"grid": {"model.max_tokens": [1234567.5]}}))
    assert load_experiment("ladder")["variants"] == {"max_tokens1.23457e+06": ["--model.max_tokens=1234567.5"]}
    (folder / "experiment.yaml").write_text(json.dumps({"grid": {"model.max_tokens": [1234567.0, 1234568.0]}}))
    with pytest.raises(experiment.UserError, match="both named max_tokens1.23457e\\+06"):
        load_experiment("ladder")


def test_a_ladder_report_fits_the_law_its_runs_follow(tmp_path, monkeypatch):
    """Runs of a grid drawn from a known law: the report's IsoFLOP exponent is the law's, with the CSV and plot."""
    from tests.test_scaling import ALPHA, BETA, law, optimal_size

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "experiments" / "ladder"
    folder.mkdir(parents=True)
    sizes, budgets = [2, 3, 4, 5, 6], [1e17, 1e18, 1e19]
    grid = {"model.config.depth": sizes, "model.max_flops": budgets}
    spec = {"grid": grid, "scaling": {"budget": "model.max_flops", "predict": [1e20], "bootstrap": 0}}
    (folder / "experiment.yaml").write_text(json.dumps(spec))
    for name in load_experiment("ladder")["variants"]:
        depth, budget = int(name.split("-")[0][5:]), float(name.split("max_flops")[1])
        optimum = optimal_size(budget)
        n = optimum * 2.0 ** (depth - 4)  # sizes from 1/4 to 4 × the optimum
        tokens = budget / (6 * n)
        warmup_only = depth == 6 and budget == 1e17  # its loss is far off: the fit would be wrong if it used it
        loss = law(n, tokens) * (3 if warmup_only else 1)
        fake_run(tmp_path / "runs" / "ladder" / name, [(int(tokens) // 2, 99.0), (int(tokens), loss)])
        summary_path = tmp_path / "runs" / "ladder" / name / "run_summary.json"
        config = {"model": {"max_flops": budget, "optim": {"warmup_steps": 10**9 if warmup_only else 1}}}
        extra = {"non_embedding_params": n, "tokens_seen": int(tokens), "step": 100, "config": config}
        summary_path.write_text(json.dumps(json.loads(summary_path.read_text()) | extra))
    experiment.report("ladder")
    report = (folder / "results.md").read_text()
    assert "14 runs fitted (1 stopped within their warmup, left out)" in report
    exponent = float(report.split("N* = ")[1].split("C^(")[1].split(" ±")[0])
    assert exponent == pytest.approx(BETA / (ALPHA + BETA), abs=0.03)
    assert "α = 0.340" in report and "β = 0.280" in report  # the parametric fit recovers the law itself
    assert "for C = 1e+20 FLOPs: N* ≈" in report and "Parametric" in report
    low, high = (float(x.replace(",", "")) for x in re.search(r"freedom\): N\* ([\d.e+]+)–([\d.e+]+)", report).groups())
    assert "Student's t, 1 degrees of freedom" in report and low < optimal_size(1e20) < high  # 3 budgets
    assert (
        "| the reference |" not in report and " vs depth" not in report
    )  # a ladder's rows are other budgets: no row is tested against the lowest
    assert (folder / "scaling.csv").read_text().count("\n") == 16 and ",true\n" in (folder / "scaling.csv").read_text()
    assert (folder / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    for name in sorted(load_experiment("ladder")["variants"])[4:]:  # too few runs left for five constants
        shutil.rmtree(tmp_path / "runs" / "ladder" / name)
    experiment.report("ladder")
    assert "- Parametric fit: not possible (" in (folder / "results.md").read_text()


@pytest.mark.parametrize(
    "args",
    [
        ["--variant", "modern"],
        ["--variant=modern"],
        ["--variant", "modern,classic"],
        ["--variant", "modern", "--variant", "classic"],
        ["--variant", "[modern, classic]"],
    ],
)
def test_verify_takes_a_name_a_comma_separated_list_or_repeats(args, monkeypatch):
    chosen = []

    @functools.wraps(experiment.verify)
    def verify(name, variant=None, **kwargs):
        chosen.append(variant)

    monkeypatch.setattr(experiment, "verify", verify)
    main(["experiment", "verify", "smoke", *args])
    assert chosen == [["modern", "classic"] if "classic" in " ".join(args) else ["modern"]]


def test_verify_help_shows_how_to_name_variants(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "verify", "--help"])
    assert "--variant a,b" in capsys.readouterr().out
