"""Test-only plugins for the `python -m lm fit` processes that the distributed tests launch (named in their YAML)."""

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, allowed on CPU.

    Lightning refuses `FSDPStrategy` unless the accelerator is a GPU, by an exact type check
    (`type(strategy) is FSDPStrategy`), and passes FSDP `device_id=None` on CPU, which torch's FSDP refuses
    ("needs a non-CPU accelerator device"). torch's FSDP shards and trains on CPU with gloo when given
    `device_id=cpu`: this subclass passes the check and wraps the model that way. Gathering the full
    state dict with `offload_to_cpu=True` (Lightning's choice, right on GPU) frees memory that is still in use
    when the parameters already live on the CPU (segfault in torch 2.13), so it gathers without offloading.
    The rest (optimizer state, checkpoint files, loading) is Lightning's own code.
    """

    def _setup_model(self, model):
        policy = self.kwargs.pop("auto_wrap_policy", None)
        model = FullyShardedDataParallel(
            module=model,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            auto_wrap_policy=policy,
            **self.kwargs,
        )
        return super()._setup_model(model)

    def lightning_module_state_dict(self):
        config = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
        with FullyShardedDataParallel.state_dict_type(self.model, StateDictType.FULL_STATE_DICT, config):
            return self.model.state_dict()


class BatchRecorder(L.Callback):
    """Appends each training micro-batch's first tokens to <run>/batches-rank<r>.jsonl, one line per batch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, _ = batch
        path = Path(trainer.default_root_dir) / f"batches-rank{trainer.global_rank}.jsonl"
        with open(path, "a") as f:
            f.write(json.dumps(x[:, :4].tolist()) + "\n")
