"""`python -m lm eval` and HarnessCallback end to end, on local copies of harness tasks (harness_tasks.py)."""

import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lm.cli import main
from lm.errors import UserError
from lm.eval.results import mean_accuracy, metric_values
from lm.eval.suite import HarnessCallback
from tests.conftest import write_config
from tests.distributed.test_ddp import assert_same_weights, fit, two_processes
from tests.eval.harness_tasks import TASKS, write_tasks

LIMIT = 4


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("tasks"), max_gen_toks=8)  # the tiny model's context is 32


def callback(task_dir: Path, **settings) -> list[dict]:
    init_args = {"tasks": TASKS, "include_path": str(task_dir), "limit": LIMIT, "batch_size": 4, **settings}
    return [{"class_path": "lm.eval.suite.HarnessCallback", "init_args": init_args}]


def eval_args(ckpt: Path, tasks: Path, *extra: str) -> list[str]:
    args = ["eval", "--ckpt_path", str(ckpt), "--tasks", ",".join(TASKS), "--include_path", str(tasks)]
    return [*args, "--limit", str(LIMIT), "--batch_size", "3", *extra]


def eval_lines(run: Path) -> dict[int, dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line for line in lines if any(key.startswith("eval/") for key in line)}


def expected_logs(result_file: Path) -> dict[str, float]:
    """What the callback should log, computed from the JSON that `python -m lm eval` wrote."""
    results = json.loads(result_file.read_text())
    return {f"eval/{name}": value for name, value in metric_values(results).items()} | {
        "eval/mean_acc": mean_accuracy(results)
    }


def logged(line: dict) -> dict[str, float]:
    return {key: value for key, value in line.items() if key.startswith("eval/") and key != "eval/seconds"}


DROPOUT = {"trainer.max_steps": 4, "trainer.val_check_interval": 2, "model.config.dropout": 0.1}


@pytest.fixture(scope="module")
def run(text_corpus, tasks, tmp_path_factory) -> Path:
    """4 steps with dropout (training draws random numbers), the harness tasks at every validation (steps 2, 4)."""
    tmp = tmp_path_factory.mktemp("suite")
    config = write_config(
        tmp / "run.yaml", text_corpus, tmp / "run", **DROPOUT, **{"trainer.callbacks": callback(tasks)}
    )
    main(["fit", "--config", config])
    return tmp / "run"


def test_the_callback_logs_what_python_m_lm_eval_reports(run, tasks, capsys):
    lines = eval_lines(run)
    assert sorted(lines) == [2, 4]
    assert lines[4]["eval/seconds"] > 0
    assert {"eval/arc_easy_local/acc_norm", "eval/wikitext_local/bits_per_byte", "eval/mean_acc"} <= set(lines[4])

    capsys.readouterr()
    main(eval_args(run / "checkpoints" / "last.ckpt", tasks))  # the weights of step 4
    table = capsys.readouterr().out
    assert "hellaswag_local" in table and "exact_match" in table and "wrote" in table
    assert logged(lines[4]) == pytest.approx(expected_logs(run / "eval" / "last.json"), rel=1e-6)  # float32 logs

    events = EventAccumulator(str(run))
    events.Reload()
    assert {"eval/mean_acc", "eval/seconds", "eval/gsm8k_local/exact_match/strict-match"} <= set(
        events.Tags()["scalars"]
    )


def test_the_callback_leaves_training_as_it_was(run, text_corpus, tmp_path):
    """The harness reseeds the global random generators; the callback restores them (and the train mode)."""
    config = write_config(tmp_path / "plain.yaml", text_corpus, tmp_path / "plain", **DROPOUT)
    main(["fit", "--config", config])
    assert_same_weights(run / "checkpoints" / "last.ckpt", tmp_path / "plain" / "checkpoints" / "last.ckpt")


def test_every_n_validations_in_fit_and_always_in_validate(text_corpus, tasks, tmp_path, capsys):
    every_third = callback(tasks, every_n_validations=3, tasks=["arc_easy_local"])
    settings = {"trainer.max_steps": 4, "trainer.val_check_interval": 1, "trainer.callbacks": every_third}
    config = write_config(tmp_path / "run.yaml", text_corpus, tmp_path / "run", **settings)
    main(["fit", "--config", config])
    assert sorted(eval_lines(tmp_path / "run")) == [3]

    capsys.readouterr()
    main(["validate", "--config", config, "--ckpt_path", str(tmp_path / "run" / "checkpoints" / "last.ckpt")])
    assert "eval/arc_easy_local/acc_norm" in capsys.readouterr().out


def test_results_go_beside_the_run_and_are_never_replaced(run, tasks, tmp_path, capsys):
    """Evaluation writes runs/<name>/eval/<stem>.json and nothing else of the run changes."""
    fit_files = {p: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
    ckpt = run / "checkpoints" / "best.ckpt"
    main(eval_args(ckpt, tasks, "--limit", "2"))
    assert (run / "eval" / "best.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()} == fit_files

    first = (run / "eval" / "best.json").read_text()
    with pytest.raises(SystemExit, match=r"best.json exists .*--overwrite true"):
        main(eval_args(ckpt, tasks))
    assert (run / "eval" / "best.json").read_text() == first
    main(eval_args(ckpt, tasks, "--overwrite", "true"))
    assert json.loads((run / "eval" / "best.json").read_text())["results"]["arc_easy_local"]["sample_len"] == LIMIT

    loose = shutil.copy(ckpt, tmp_path / "model.ckpt")  # a checkpoint outside a run: beside it
    main(eval_args(loose, tasks, "--limit", "1"))
    main(eval_args(loose, tasks, "--limit", "1", "--out", str(tmp_path / "x" / "y.json")))
    assert (tmp_path / "model.eval.json").is_file() and (tmp_path / "x" / "y.json").is_file()
    with pytest.raises(SystemExit, match="checkpoint not found"):
        main(eval_args(tmp_path / "nowhere.ckpt", tasks))


def test_without_the_harness_the_command_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` fails as if it were not installed
    monkeypatch.delitem(sys.modules, "lm.eval.harness", raising=False)
    install = r'^error: lm-evaluation-harness is not installed: pip install -e "\.\[eval\]"$'
    with pytest.raises(SystemExit, match=install):
        main(["eval", "--ckpt_path", str(tmp_path / "x.ckpt"), "--tasks", "hellaswag"])
    with pytest.raises(SystemExit, match=install):
        runpy.run_module("lm.eval", run_name="__main__")  # python -m lm.eval


def test_the_harness_cli_knows_the_lm_model(tasks, run, monkeypatch, capsys):
    """`python -m lm.eval` is the harness's own command line with the "lm" model registered."""
    ckpt = run / "checkpoints" / "last.ckpt"
    args = ["run", "--model", "lm", "--model_args", f"ckpt_path={ckpt}", "--tasks", "arc_easy_local"]
    monkeypatch.setattr(sys, "argv", ["lm.eval", *args, "--include_path", str(tasks), "--limit", "2"])
    runpy.run_module("lm.eval", run_name="__main__")
    out = capsys.readouterr().out
    assert "arc_easy_local" in out and "acc_norm" in out


def test_ddp_callback_equals_one_process_eval(text_corpus, tasks, tmp_path):
    """Two gloo ranks split the requests; the logged values equal `python -m lm eval` of the same weights."""
    overrides = {"trainer.val_check_interval": 2, "trainer.callbacks": callback(tasks)}
    ddp = fit(tmp_path, text_corpus, "ddp", *two_processes(), **overrides)
    main(eval_args(ddp / "checkpoints" / "last.ckpt", tasks))
    lines = eval_lines(ddp)
    assert sorted(lines) == [2, 4]
    assert logged(lines[4]) == pytest.approx(expected_logs(ddp / "eval" / "last.json"), rel=1e-6)


@pytest.mark.slow
def test_fsdp_callback_equals_one_process_eval(text_corpus, tasks, tmp_path):
    """Under FSDP the ranks gather the whole model first; the logged values are still `python -m lm eval`'s."""
    from tests.distributed.test_fsdp import CPU_FSDP

    trainer = tmp_path / "fsdp-trainer.yaml"
    trainer.write_text(json.dumps({"trainer": {"accelerator": "cpu", "devices": 2, "strategy": CPU_FSDP}}))
    overrides = {"trainer.val_check_interval": 2, "trainer.callbacks": callback(tasks), "data.val_batches": 4}
    fsdp = fit(tmp_path, text_corpus, "fsdp", "--config", str(trainer), **overrides)
    main(eval_args(fsdp / "checkpoints" / "last.ckpt", tasks))
    assert logged(eval_lines(fsdp)[4]) == pytest.approx(expected_logs(fsdp / "eval" / "last.json"), rel=1e-6)


def test_an_experiment_evaluates_its_variants_and_bases(run, tasks, tmp_path, monkeypatch, capsys):
    """`eval:` in experiment.yaml: `python -m lm eval` on each variant's best.ckpt and on its base, in the report."""
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "experiments" / "suite").mkdir(parents=True)
    spec = {
        "variants": {"cpt": []},
        "init_from": {"cpt": str(run / "checkpoints" / "last.ckpt")},
        "eval": {"tasks": ["arc_easy_local", "hellaswag_local"], "include_path": str(tasks), "limit": 2},
    }
    (tmp_path / "experiments" / "suite" / "experiment.yaml").write_text(json.dumps(spec))
    shutil.copytree(run, tmp_path / "runs" / "suite" / "cpt", ignore=shutil.ignore_patterns("eval"))  # finished
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(root))  # the `python -m lm eval` subprocesses
    main(["experiment", "run", "suite", "--allow_mixed_commits", "true"])  # this checkout may have changes
    evaluated = tmp_path / "runs" / "suite" / "cpt" / "eval"
    best, base = (json.loads((evaluated / name).read_text()) for name in ("best.json", "base.json"))
    assert best["config"]["ckpt_path"].endswith("best.ckpt") and base["config"]["ckpt_path"].endswith("last.ckpt")
    report = (tmp_path / "experiments" / "suite" / "results.md").read_text()
    acc = best["results"]["arc_easy_local"]["acc_norm,none"]
    assert "| model | arc_easy_local (acc_norm) | hellaswag_local (acc_norm) | mean |" in report
    assert f"| cpt | {acc:.2%} ± " in report and "| cpt's base | " in report

    stamp = (evaluated / "best.json").stat().st_mtime_ns
    capsys.readouterr()
    main(["experiment", "run", "suite", "--allow_mixed_commits", "true"])  # done: nothing evaluated again
    assert (evaluated / "best.json").stat().st_mtime_ns == stamp and "lm eval" not in capsys.readouterr().out


def test_the_callback_refuses_settings_it_cannot_honour():
    with pytest.raises(UserError, match="every_n_validations must be ≥ 1, got 0"):
        HarnessCallback(tasks=["hellaswag"], every_n_validations=0)
