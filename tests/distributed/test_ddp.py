"""DDP on 2 CPU processes (gloo), launched the way users launch it: `python -m lm fit` re-executed per rank.

The reference is one process with accumulation 2 and the same global batch (model.batch_tokens): same batches,
same gradients (mean of the two micro-batches), so the same weights after every step.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lm.checkpoint import load_checkpoint
from tests.conftest import MUON_VARIANTS, write_config

ROOT = Path(__file__).resolve().parents[2]
CPU_DDP = str(ROOT / "configs" / "trainer" / "cpu.yaml")
RECORDER = [{"class_path": "tests.distributed.launched.BatchRecorder"}]


def fit(tmp_path, data_dir, name, *extra, timeout=300, **overrides) -> Path:
    """Runs `python -m lm fit` in a subprocess (so Lightning's launcher can re-execute it per rank)."""
    run = tmp_path / name
    settings = {
        "data.batch_size": 2,
        "data.val_batches": 4,  # 2 + 2 over 2 ranks (every rank runs the same number: collectives)
        "model.batch_tokens": 128,
        "model.optim.lr_schedule": "constant",  # schedule independent of max_steps, so resumed runs compare
        "trainer.max_steps": 4,
        "trainer.limit_val_batches": 4,
        "trainer.callbacks": RECORDER,
        **overrides,
    }
    config = write_config(tmp_path / f"{name}.yaml", data_dir, run, **settings)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "lm", "fit", "--config", config, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def two_processes(*extra) -> tuple[str, ...]:
    return ("--config", CPU_DDP, *extra)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def assert_same_weights(a: Path, b: Path, **tolerance):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], **tolerance, msg=lambda m, k=key: f"{k}: {m}")


def metric_lines(run: Path, key: str) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line[key] for line in lines if key in line}


@pytest.fixture(scope="module")
def runs(text_corpus, tmp_path_factory):
    """A 2-process DDP run (4 steps) and its 1-process reference (6 steps, checkpoint at step 4)."""
    tmp = tmp_path_factory.mktemp("ddp")
    ddp = fit(tmp, text_corpus, "ddp", *two_processes(), **{"trainer.val_check_interval": 2})
    single = fit(  # accumulation 2; val_check_interval counts optimizer steps whatever the accumulation
        tmp,
        text_corpus,
        "single",
        "--periodic_checkpoint.every_n_train_steps",
        "4",
        **{"trainer.max_steps": 6, "trainer.val_check_interval": 2},
    )
    return tmp, ddp, single


def test_ddp_equals_one_process_with_accumulation(runs):
    _, ddp, single = runs
    assert load_checkpoint(ddp / "checkpoints" / "last.ckpt")["tokens_seen"] == 4 * 128
    assert_same_weights(ddp / "checkpoints" / "last.ckpt", single / "checkpoints" / "step-0000004.ckpt")


def test_ranks_read_the_single_process_stream(runs):
    _, ddp, single = runs
    read = {r: (ddp / f"batches-rank{r}.jsonl").read_text().splitlines() for r in range(2)}
    reference = (single / "batches-rank0.jsonl").read_text().splitlines()[:8]
    assert [read[step % 2][step // 2] for step in range(8)] == reference


def test_validation_is_token_weighted_across_ranks(runs):
    _, ddp, single = runs
    for key in ("val/loss", "val/ppl", "val/bpb"):
        ours, reference = metric_lines(ddp, key), metric_lines(single, key)
        assert sorted(ours) == [2, 4]
        for step in ours:
            assert ours[step] == pytest.approx(reference[step], rel=1e-6), (key, step)


def test_only_rank_zero_writes(runs):
    _, ddp, _ = runs
    files = sorted(p.name for p in ddp.iterdir() if p.is_file() and not p.name.startswith("batches-"))
    assert [f for f in files if not f.startswith("events.out")] == [
        "config.yaml",
        "hparams.yaml",
        "metrics.jsonl",
        "run_summary.json",
    ]
    assert len([f for f in files if f.startswith("events.out")]) == 1
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    steps = [json.loads(line)["step"] for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2, 3, 4, 4]  # one line per logging step and per validation: not one per rank


def test_resume_on_one_process_from_a_two_process_checkpoint(runs, text_corpus):
    """The global batch (model.batch_tokens) is kept, so accumulation goes 1 → 2 and the run continues exactly."""
    tmp, ddp, single = runs
    resumed = fit(
        tmp,
        text_corpus,
        "resumed-1",
        "--ckpt_path",
        str(ddp / "checkpoints" / "last.ckpt"),
        **{"trainer.max_steps": 6, "trainer.val_check_interval": 4},
    )
    assert_same_weights(resumed / "checkpoints" / "last.ckpt", single / "checkpoints" / "last.ckpt")
    # the exact data position: the micro-batches after step 4, the samples and tokens counted
    reference = (single / "batches-rank0.jsonl").read_text().splitlines()
    assert (resumed / "batches-rank0.jsonl").read_text().splitlines() == reference[8:]
    mine, theirs = (load_checkpoint(run / "checkpoints" / "last.ckpt") for run in (resumed, single))
    assert mine["TokenDataModule"]["consumed_samples"] == theirs["TokenDataModule"]["consumed_samples"] == 6 * 4
    assert mine["tokens_seen"] == theirs["tokens_seen"] == 6 * 128
    tokens = metric_lines(single, "train/tokens")
    assert metric_lines(resumed, "train/tokens") == {step: tokens[step] for step in (5, 6)}


@pytest.mark.slow
def test_resume_on_two_processes(runs, text_corpus):
    tmp, ddp, single = runs
    resumed = fit(
        tmp,
        text_corpus,
        "resumed-2",
        *two_processes("--ckpt_path", str(ddp / "checkpoints" / "last.ckpt")),
        **{"trainer.max_steps": 6, "trainer.val_check_interval": 2},
    )
    assert_same_weights(resumed / "checkpoints" / "last.ckpt", single / "checkpoints" / "last.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("variants", [{}, MUON_VARIANTS], ids=["plain", "variants"])
def test_ddp_with_muon_equals_one_process_with_accumulation(text_corpus, tmp_path, variants):
    muon = {"model.optim.name": "muon", "trainer.val_check_interval": 2, **variants}
    ddp = fit(tmp_path, text_corpus, "ddp", *two_processes(), **muon)
    single = fit(tmp_path, text_corpus, "single", **muon)
    assert_same_weights(ddp / "checkpoints" / "last.ckpt", single / "checkpoints" / "last.ckpt")
