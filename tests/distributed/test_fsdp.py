"""FSDP (FULL_SHARD, one unit per transformer Block) on 2 CPU processes, against DDP; its checkpoint outside FSDP.

Lightning allows FSDPStrategy on GPUs only; `launched.CPUFSDPStrategy` lifts that for the test (see its docstring).
"""

import pytest
import torch
import yaml

from lm.checkpoint import load_model
from lm.interop.export import main as export
from tests.distributed.test_ddp import CPU_DDP, fit, metric_lines, weights

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
