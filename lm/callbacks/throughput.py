"""Training speed: tokens/s, model FLOPs utilisation (MFU) and peak GPU memory.

Design choices:
- No per-step host-device sync: the clock is read (after one cuda synchronize) only at the trainer's
  logging steps (`trainer.log_every_n_steps`), where Lightning already waits for the logged loss, and the
  tokens of the interval come from `pl_module.tokens_per_step` (global: all ranks, all micro-batches).
- Validation time is left out of the interval; sample generation in callbacks is counted in.
- MFU = (6N + 12·L·H·Q·T FLOPs per token, PaLM appendix B) × tokens/s / (peak bf16 FLOP/s × ranks). The
  peak comes from a small table of dense bf16 numbers; an unknown GPU or the CPU gets tokens/s only.
"""

import re
import time

import lightning as L
import torch

# Dense bf16 tensor-core peak FLOP/s (no sparsity), from the vendors' data sheets.
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "A10": 125e12,
    "L4": 121e12,
    "3090": 71e12,
    "T4": 65e12,
}


def peak_flops(device_name: str) -> float | None:
    """Peak bf16 FLOP/s of a GPU named like torch.cuda.get_device_name(), or None if not in the table."""
    for model, flops in PEAK_BF16_FLOPS.items():
        if re.search(rf"\b{model}\b", device_name):  # whole words: "A10" is not "A100", "L4" is not "L40S"
            return flops
    return None


def synchronized_time(device: torch.device) -> float:
    """The clock, once the device has finished its queued work (only ever called at interval boundaries)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class ThroughputCallback(L.Callback):
    """Logs perf/tokens_per_sec, perf/mfu (known GPUs) and perf/max_memory_gb (CUDA) at each logging step."""

    def on_train_start(self, trainer, pl_module):
        self.flops_per_token = pl_module.model.flops_per_token(getattr(trainer.datamodule, "seq_len", None))
        device = pl_module.device
        peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        self.peak_flops = peak * trainer.world_size if peak else None
        self.step0, self.t0 = trainer.global_step, synchronized_time(device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.step0 or step % trainer.log_every_n_steps:
            return
        now = synchronized_time(pl_module.device)
        tokens_per_sec = (step - self.step0) * pl_module.tokens_per_step / (now - self.t0)
        metrics = {"perf/tokens_per_sec": tokens_per_sec}
        if self.peak_flops:
            metrics["perf/mfu"] = tokens_per_sec * self.flops_per_token / self.peak_flops
        if pl_module.device.type == "cuda":
            metrics["perf/max_memory_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / 1e9
        pl_module.log_dict(metrics)
        self.step0, self.t0 = step, now

    def on_validation_start(self, trainer, pl_module):
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.validation_start = synchronized_time(pl_module.device)

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.t0 += synchronized_time(pl_module.device) - self.validation_start
