"""The shipped trainer configs say what they mean once jsonargparse has built them (test_configs parses them)."""

from pathlib import Path

import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, Strategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from lm.model.gpt import Block

TRAINER = Path(__file__).resolve().parents[2] / "configs" / "trainer"


def strategy(name: str, **init_args) -> Strategy:
    config = yaml.safe_load((TRAINER / name).read_text())["trainer"]["strategy"]
    config["init_args"].update(init_args)
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    return parser.instantiate(parser.parse_object({"strategy": config})).strategy


def test_fsdp_wraps_and_checkpoints_each_block():
    fsdp = strategy("fsdp.yaml", activation_checkpointing_policy=["lm.model.gpt.Block"])
    assert isinstance(fsdp, FSDPStrategy) and fsdp._state_dict_type == "full"
    for policy in (fsdp.kwargs["auto_wrap_policy"], fsdp._activation_checkpointing_kwargs["auto_wrap_policy"]):
        assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {Block}


def test_ddp_configs_skip_the_buffer_broadcast():
    for name in ("ddp.yaml", "multi-node.yaml", "cpu.yaml"):
        ddp = strategy(name)
        assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs["broadcast_buffers"] is False
