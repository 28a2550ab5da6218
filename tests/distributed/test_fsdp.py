"""FSDP (FULL_SHARD, one unit per transformer Block) on 2 CPU processes, against DDP; its checkpoint outside FSDP.

Lightning allows FSDPStrategy on GPUs only; `launched.CPUFSDPStrategy` lifts that for the test (see its docstring).
"""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from lm.checkpoint import load_model
from lm.eval.hellaswag import evaluate, load_examples
from lm.generate import generate_text
from lm.interop.export import main as export
from tests.distributed.test_ddp import CPU_DDP, fit, metric_lines, weights
from tests.eval.test_hellaswag import write_jsonl

CPU_FSDP = {
    "class_path": "tests.distributed.launched.CPUFSDPStrategy",
    "init_args": {
        "sharding_strategy": "FULL_SHARD",
        "auto_wrap_policy": ["lm.model.gpt.Block"],
        "state_dict_type": "full",
    },
}


@pytest.mark.slow
def test_fsdp_trains_like_ddp_and_its_checkpoint_loads_anywhere(text_corpus, tmp_path):
    # Even val batches: FSDP gathers weights in every forward, so ranks must run the same number of val batches.
    even = {"trainer.val_check_interval": 2, "data.val_batches": 4, "trainer.limit_val_batches": 4}
    ddp = fit(tmp_path, text_corpus, "ddp", "--config", CPU_DDP, **even)
    fsdp_trainer = tmp_path / "fsdp-trainer.yaml"
    fsdp_trainer.write_text(yaml.safe_dump({"trainer": {"accelerator": "cpu", "devices": 2, "strategy": CPU_FSDP}}))
    fsdp = fit(tmp_path, text_corpus, "fsdp", "--config", str(fsdp_trainer), **even)

    # Same losses within float noise (FSDP reduce-scatters gradients in another order than DDP's all-reduce).
    for key in ("train/loss", "val/loss"):
        ours, reference = metric_lines(fsdp, key), metric_lines(ddp, key)
        assert ours.keys() == reference.keys()
        for step in ours:
            assert ours[step] == pytest.approx(reference[step], abs=1e-3), (key, step)
    checkpoint = fsdp / "checkpoints" / "last.ckpt"
    for key, value in weights(checkpoint).items():
        torch.testing.assert_close(value, weights(ddp / "checkpoints" / "last.ckpt")[key], atol=2e-3, rtol=0)

    # One full file: the single-process model and the Hugging Face export read it.
    model, ckpt = load_model(checkpoint)
    assert ckpt["global_step"] == 4 and ckpt["tokens_seen"] == 4 * 128
    assert model(torch.randint(0, 50257, (1, 8))).isfinite().all()
    export(["--ckpt_path", str(checkpoint), "--out", str(tmp_path / "hf")])
    assert (tmp_path / "hf" / "config.json").is_file()


def guard_lines(run: Path, rank: int) -> dict[int, dict]:
    lines = [json.loads(line) for line in (run / f"guard-rank{rank}.jsonl").read_text().splitlines()]
    return {line["step"]: line for line in lines}


@pytest.fixture(scope="module")
def nan_at_step_2(text_corpus, tmp_path_factory):
    """2-process FSDP and its 1-process reference (accumulation 2), each with a NaN put into one gradient element
    at optimizer step 2 (under FSDP: into rank 1's shard), HellaSwag at the last validation, checkpoints every step."""
    tmp = tmp_path_factory.mktemp("fsdp-guard")
    hellaswag = write_jsonl(tmp / "hellaswag.jsonl")
    fsdp_trainer = tmp / "fsdp-trainer.yaml"
    fsdp_trainer.write_text(yaml.safe_dump({"trainer": {"accelerator": "cpu", "devices": 2, "strategy": CPU_FSDP}}))
    every_step = ["--periodic_checkpoint.every_n_train_steps", "1", "--periodic_checkpoint.save_top_k", "-1"]

    def run(name: str, nan_rank: int, *extra: str) -> Path:
        callbacks = [
            {"class_path": "tests.distributed.launched.InjectNaN", "init_args": {"step": 1, "rank": nan_rank}},
            {"class_path": "tests.distributed.launched.GuardRecorder"},
            {"class_path": "lm.callbacks.HellaSwagCallback", "init_args": {"data": hellaswag, "batch_size": 2}},
        ]
        settings = {"trainer.callbacks": callbacks, "trainer.val_check_interval": 4, "data.val_batches": 4}
        return fit(tmp, text_corpus, name, *extra, *every_step, **settings)

    return run("fsdp", 1, "--config", str(fsdp_trainer)), run("single", 0)


def test_fsdp_guard_uses_the_global_norm_and_every_rank_skips(nan_at_step_2):
    fsdp, single = nan_at_step_2
    ranks, reference = [guard_lines(fsdp, r) for r in range(2)], metric_lines(single, "train/grad_norm")
    assert sorted(ranks[0]) == sorted(ranks[1]) == sorted(reference) == [1, 2, 3, 4]
    # One norm, the whole model's, on both ranks and as logged. At step 1 the weights are the same as the single
    # process's; later they differ by rounding (another reduction order, amplified by Adam), and so do the norms.
    for step, tolerance in ((1, 1e-5), (3, 1e-4), (4, 1e-4)):
        assert ranks[0][step]["train/grad_norm"] == ranks[1][step]["train/grad_norm"]
        assert ranks[0][step]["train/grad_norm"] == pytest.approx(reference[step], abs=tolerance)
        assert metric_lines(fsdp, "train/grad_norm")[step] == ranks[0][step]["train/grad_norm"]
    for rank in ranks:  # the NaN in rank 1's shard reached rank 0 too: both skipped step 2
        assert math.isnan(rank[2]["train/grad_norm"]) and rank[4]["train/skipped_steps"] == 1

    # Skipped on every shard: the weights after step 2 are exactly those after step 1, and those of the single
    # process that skipped the same step up to rounding (a step that one rank had taken would move them by ~lr).
    before, after = (weights(fsdp / "checkpoints" / f"step-000000{s}.ckpt") for s in (1, 2))
    reference = weights(single / "checkpoints" / "step-0000002.ckpt")
    for key in before:
        assert torch.equal(before[key], after[key]), key
        torch.testing.assert_close(after[key], reference[key], atol=1e-4, rtol=0)


def test_fsdp_eval_callbacks_and_summary_see_the_whole_model(nan_at_step_2, tmp_path):
    fsdp, _ = nan_at_step_2
    model, _ = load_model(fsdp / "checkpoints" / "last.ckpt")  # the weights at step 4, in one process
    summary = json.loads((fsdp / "run_summary.json").read_text())
    assert summary["params"] == model.num_params()
    [sample] = summary["final_samples"]  # SampleCallback's defaults: prompt "The", 64 tokens, seed 0
    assert sample["step"] == 4
    assert sample["text"] == generate_text(model, "The", max_new_tokens=64, temperature=0.8, top_k=200, seed=0)
    scores = evaluate(model, load_examples(fsdp.parent / "hellaswag.jsonl"))
    val = metric_lines(fsdp, "eval/hellaswag_acc_norm")
    assert val == {4: pytest.approx(scores["acc_norm"])}
    assert metric_lines(fsdp, "eval/hellaswag_acc") == {4: pytest.approx(scores["acc"])}
