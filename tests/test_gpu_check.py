"""`python -m lm gpu-check --device cpu --tiny`: the GPU check's dry run, so that the script cannot rot before a GPU
is available. Every section runs on a tiny model and is written; failures end the command with one line."""

import json

import pytest
import torch

from lm import gpu_check
from lm.errors import UserError
from lm.gpu_check import TINY_PLAN, Check, Run, documents_alone, key_exists, main, mismatches, result

SECTIONS = {"throughput", "cases", "correctness", "sanity"}


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # main sets it for --device cpu; restored after the test


def test_dry_run_writes_every_section(tmp_path, cpu_only, capsys):
    main(["--device", "cpu", "--tiny", "--out", str(tmp_path)])
    out = json.loads((tmp_path / "gpu-check.json").read_text())
    assert out["failures"] == []
    assert set(out["sections"]) == SECTIONS and all(s["status"] == "ok" for s in out["sections"].values())
    env = out["environment"]
    assert env["device"] == "cpu" and env["torch"] and env["lightning"] and env["date"] and "commit" in env

    throughput = out["sections"]["throughput"]
    assert [row["config"] for row in throughput["rows"]] == ["classic", "modern"]
    for row in throughput["rows"]:
        assert row["status"] == "measured" and row["batch_size"] == 2 and row["precision"] == "bf16-mixed"
        assert row["lightning"]["tokens_per_sec"] > 0 and row["pytorch"]["tokens_per_sec"] > 0
        assert isinstance(row["lightning_overhead"], float)
        assert row["lightning"]["host_reads_in_timed_steps"]["between_logging_steps"] == 0
    assert [t["met"] for t in throughput["targets"]] == [None] * 4  # the targets are an H100's

    cases = {row["case"]: row for row in out["sections"]["cases"]["rows"]}
    assert cases.keys() == {case.name for case in gpu_check.CASES}
    baseline = cases["causal, default backend"]
    assert baseline["status"] == "measured" and baseline["tokens_per_sec"] > 0 and baseline["optimizer_step_ms"] > 0
    for case in gpu_check.CASES:  # a case runs only where its keys exist, and on the CPU only if it can
        status = cases[case.name]["status"]
        missing = gpu_check.available(case.overrides)
        if missing:
            assert status == f"not available in this commit ({missing})"
        elif case.cuda_only:
            assert status.startswith("skipped on the CPU")
        else:
            assert status == "measured", case.name

    checks = {row["check"]: row for row in out["sections"]["correctness"]["rows"]}
    assert checks.keys() == {check.name for check in gpu_check.CHECKS}
    for check in gpu_check.CHECKS[:3]:  # bf16 vs fp32 and compiled vs eager exist in every commit
        assert checks[check.name]["status"] == "passed" and checks[check.name]["measured"]

    sanity = out["sections"]["sanity"]
    assert sanity["loss_falls"] and sanity["losses"][-1][1] < 0.9 * sanity["losses"][0][1]
    assert sanity["host_reads"]["between_logging_steps"] == 0 and sanity["host_reads"]["per_logging_step"]

    report = (tmp_path / "gpu-check.md").read_text()
    for title, _ in gpu_check.SECTIONS.values():
        assert title in report
    assert "## Failures\n\nnone" in report
    assert "all checks passed" in capsys.readouterr().out


def test_a_failure_ends_the_command_with_one_line_after_writing_everything(tmp_path, cpu_only, monkeypatch):
    failing = Check("always fails", lambda run, overrides: result({"error": 1.0}, {"error": 0.5}))
    passing = Check("always passes", lambda run, overrides: result({"error": 0.0}, {"error": 0.5}))
    missing = Check("needs a key", lambda run, overrides: 1 / 0, {"model.config.no_such_key": 1})
    monkeypatch.setattr(gpu_check, "CHECKS", [failing, passing, missing])

    def crash(run, deadline):
        raise RuntimeError("boom")

    monkeypatch.setitem(gpu_check.SECTIONS, "sanity", (gpu_check.SECTIONS["sanity"][0], crash))
    with pytest.raises(UserError, match="gpu-check: 2 failure") as err:
        main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--only", "correctness", "sanity"])
    assert "\n" not in str(err.value) and "always fails" in str(err.value) and "boom" in str(err.value)
    out = json.loads((tmp_path / "gpu-check.json").read_text())
    assert set(out["sections"]) == {"correctness", "sanity"}
    rows = {row["check"]: row["status"] for row in out["sections"]["correctness"]["rows"]}
    assert rows == {
        "always fails": "FAILED",
        "always passes": "passed",
        "needs a key": "not available in this commit (model.config.no_such_key)",
    }
    assert out["sections"]["sanity"]["status"] == "error" and "boom" in out["sections"]["sanity"]["error"]
    report = (tmp_path / "gpu-check.md").read_text()
    assert "always fails" in report and "RuntimeError: boom" in report and "not run" in report


def test_a_gpu_with_another_torch_or_without_the_wheels_is_a_mismatch():
    info = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.13.0+cu130", "jsonargparse": None, "datasets": "5.2.0"}
    problems = mismatches(info, expect_torch="2.11.0+cu130")
    assert len(problems) == 2 and "expected 2.11.0+cu130" in problems[0] and "jsonargparse" in problems[1]
    assert mismatches({**info, "torch": "2.11.0+cu130", "jsonargparse": "4.53.0"}, "2.11.0+cu130") == []
    assert mismatches({**info, "jsonargparse": "4.53.0"}, expect_torch="") == []  # '' accepts any build
    assert mismatches({**info, "device": "cpu", "jsonargparse": "4.53.0"}, "2.11.0+cu130") == []  # the dry run's


@pytest.mark.parametrize(
    "key, exists",
    [
        ("model.config.block", True),
        ("model.optim.lr", True),
        ("model.optim.muon.normuon", True),
        ("model.lr", False),  # a flat key of earlier versions
        ("model.config.no_such_key", False),
        ("model.no_such_key", False),
        ("data.batch_size", False),  # cases override the model only
    ],
)
def test_key_exists_follows_the_arguments_and_dataclasses_of_this_commit(key, exists):
    assert key_exists(key) is exists


def tiny_run(tmp_path) -> Run:
    return Run(torch.device("cpu"), TINY_PLAN, tiny=True, work=tmp_path, out=tmp_path, result={})


def test_the_document_check_fails_plain_causal_attention(tmp_path):
    """Without document masking (keys of a later commit) a packed row's later documents see the earlier ones, and
    the classic block's positions do not restart: the check must see both."""
    out = documents_alone(tiny_run(tmp_path), overrides={})
    assert not out["passed"]
    assert out["measured"]["classic logits"] > 1e-3 and out["measured"]["modern logits"] > 1e-3
    assert out["measured"]["modern gradients"] > 1e-3


def test_the_backend_check_passes_a_backend_against_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "SDPA", {})  # this commit has one attention path: compare it with itself
    out = gpu_check.backend_matches_sdpa(tiny_run(tmp_path), overrides={})
    assert out["passed"] and out["measured"] == {"logits": 0.0, "gradients": 0.0}
