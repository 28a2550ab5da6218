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


class InjectNaN(L.Callback):
    """Puts a NaN into one gradient element held by rank `rank` after the backward pass of optimizer step `step`:
    under FSDP that element lives only in this rank's shard."""

    def __init__(self, step: int, rank: int = 0):
        self.step, self.rank = step, rank

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            grad = next(p.grad for p in pl_module.parameters() if p.grad is not None and p.grad.numel())
            grad.view(-1)[0] = float("nan")


class GuardRecorder(L.Callback):
    """Appends what NonFiniteGuard logged on this rank (grad norm, skipped steps) to <run>/guard-rank<r>.jsonl,
    once per optimizer step."""

    recorded_step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.recorded_step:  # a micro-batch inside an accumulation window
            return
        self.recorded_step = trainer.global_step
        metrics = {key: float(trainer.callback_metrics[key]) for key in ("train/grad_norm", "train/skipped_steps")}
        with open(Path(trainer.default_root_dir) / f"guard-rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": trainer.global_step, **metrics}) + "\n")
