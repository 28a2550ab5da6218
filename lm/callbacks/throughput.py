"""Training speed: tokens/s, model FLOPs utilisation (MFU) and peak GPU memory.

Design choices:
- No per-step host-device sync: the clock is read (after one cuda synchronize) only at the trainer's
  logging steps (`trainer.log_every_n_steps`), where Lightning already waits for the logged loss, and the
  tokens of the interval come from `pl_module.tokens_seen` (global: all ranks, all micro-batches).
- Validation time is left out of the interval; sample generation in callbacks is counted in.
- MFU = (`GPT.flops_per_token`: 6 per matmul weight + 12·L·H·Q·T, PaLM appendix B) × tokens/s / (peak FLOP/s ×
  ranks). The peak comes from a small table of dense tensor-core numbers, in fp16 for 16-mixed runs and bf16
  otherwise; an unknown GPU, a GPU without that dtype (T4 has no bf16) and the CPU get tokens/s only.
"""

import re
import time

import lightning as L
import torch

# Dense tensor-core peak FLOP/s (no sparsity) from the vendors' data sheets, per 16-bit dtype. The first pattern
# found in torch.cuda.get_device_name() wins, so a variant comes before its family (an H100 PCIe or NVL card is
# slower than the SXM part whose name is just "H100 80GB HBM3"). Whole words: "A10" is not "A100", "L4" not "L40S".
PEAK_FLOPS = [
    (r"\bH100\b.*\bPCIe\b", {"bf16": 756e12, "fp16": 756e12}),
    (r"\bH[12]00\b.*\bNVL\b", {"bf16": 835e12, "fp16": 835e12}),
    (r"\bH[12]00\b", {"bf16": 989e12, "fp16": 989e12}),  # SXM
    (r"\bA100\b", {"bf16": 312e12, "fp16": 312e12}),
    (r"\bA10\b", {"bf16": 125e12, "fp16": 125e12}),
    (r"\bL4\b", {"bf16": 121e12, "fp16": 121e12}),
    (r"\b3090\b", {"bf16": 71e12, "fp16": 71e12}),
    (r"\bT4\b", {"fp16": 65e12}),  # Turing: fp16 tensor cores, no bf16
]


def peak_flops(device_name: str, dtype: str = "bf16") -> float | None:
    """Peak dense FLOP/s of a GPU named like torch.cuda.get_device_name() in `dtype` ("bf16" or "fp16").

    None for a GPU missing from the table or without that dtype: no MFU rather than a wrong one.
    """
    for pattern, peaks in PEAK_FLOPS:
        if re.search(pattern, device_name):
            return peaks.get(dtype)
    return None


def peak_dtype(precision: str) -> str:
    """The tensor-core dtype whose peak a run of this Lightning precision is measured against."""
    return "fp16" if str(precision).startswith("16") else "bf16"


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
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
        peak = peak_flops(name, peak_dtype(trainer.precision))
        self.peak_flops = peak * trainer.world_size if peak else None
        self.step0, self.t0 = trainer.global_step, synchronized_time(device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.step0 or step % trainer.log_every_n_steps:
            return
        now = synchronized_time(pl_module.device)
        tokens_per_sec = (pl_module.tokens_seen(step) - pl_module.tokens_seen(self.step0)) / (now - self.t0)
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
