"""`python -m lm bench --config X.yaml`: training speed of the config's model on this machine, three ways.

Rows (same shape, micro-batch, precision, compile setting, gradient clipping and AdamW settings on each):
- lightning: the real LanguageModel through Trainer.fit. A callback reads the clock after the warm-up steps and
  after the last one, with one synchronize at each boundary and none in between.
- pytorch: the same model and optimizer (LanguageModel.adamw) in a plain loop with autocast. Lightning's
  overhead is the ratio of the two step times.
- reference: a minimal nanoGPT-style GPT-2 written below (SDPA, tied embeddings, vocabulary padded to 50304, no
  framework) with the config's shape, always the classic block: our model code against the simplest fast peer.

Design choices:
- Synthetic batches (random tokens, pinned on CUDA, copied non_blocking each step like Lightning does): the
  data loader has its own benchmark (`python -m lm.data.bench`), so it is left out here.
- Every step is an optimizer step (no gradient accumulation) on every row, so the rows compare fairly.
- Warm-up steps, where torch.compile does its work, are timed separately ("warm-up s").
- MFU = tokens/s × (6N + 12·L·H·Q·T) / peak dense bf16 FLOP/s of the GPU (table in lm.callbacks.throughput);
  the CPU gets none. The lightning row also counts the host syncs in its timed steps (CUDA only).
"""

import argparse
import dataclasses
import gc
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from lm.callbacks.throughput import peak_flops, synchronized_time
from lm.errors import UserError
from lm.model import GPT, ModelConfig
from lm.module import LanguageModel

PRECISIONS = ("32-true", "bf16-mixed")
NOT_BENCHED = ("batch_tokens", "max_tokens", "tokens_per_param", "init_from")  # budget and lineage: no speed effect


@dataclasses.dataclass
class Settings:
    """What the benchmark takes from a run config."""

    config: ModelConfig
    module_args: dict  # LanguageModel arguments other than the architecture and the budget
    batch_size: int
    seq_len: int
    precision: str = "32-true"
    gradient_clip_val: float | None = None

    @property
    def compile(self) -> bool:
        return bool(self.module_args.get("compile", False))


def load_settings(path: str, batch_size: int | None = None) -> Settings:
    """Model, micro-batch, context, precision and clipping from a `python -m lm fit` config file."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    model = dict(raw.get("model") or {})
    if "config" not in model:
        raise UserError(f"{path} has no model.config: the benchmark needs the architecture")
    config = ModelConfig(**model.pop("config"))
    module_args = {k: v for k, v in model.items() if k not in NOT_BENCHED}
    data, trainer = raw.get("data") or {}, raw.get("trainer") or {}
    precision = str(trainer.get("precision", "32-true"))
    if precision == "32":
        precision = "32-true"
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision {precision!r} in {path}: the benchmark supports {PRECISIONS}")
    return Settings(
        config=config,
        module_args=module_args,
        batch_size=batch_size or data.get("batch_size", 16),
        seq_len=data.get("seq_len", config.block_size),
        precision=precision,
        gradient_clip_val=trainer.get("gradient_clip_val"),
    )


# ---- the nanoGPT-style reference -----------------------------------------------------------------------


class ReferenceBlock(nn.Module):
    def __init__(self, n_head: int, n_embd: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.c_attn, self.attn_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(approximate="tanh"), nn.Linear(4 * n_embd, n_embd)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp(self.ln_2(x))


class ReferenceGPT(nn.Module):
    """GPT-2 as nanoGPT writes it: the simplest fast peer of our classic block."""

    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int = 50304):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(ReferenceBlock(n_head, n_embd) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))  # (B, T, C)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, padded vocab)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def reference_config(config: ModelConfig) -> ModelConfig:
    """Our classic config of the reference's shape (vocabulary padded to 64 like nanoGPT's 50304)."""
    return dataclasses.replace(config, block="classic", mlp_hidden=None, pad_vocab_multiple=64, tie_embeddings=True)


def reference_model(config: ModelConfig) -> ReferenceGPT:
    c = reference_config(config)
    return ReferenceGPT(c.n_layer, c.n_head, c.n_embd, c.block_size, c.padded_vocab_size)


def reference_adamw(model: nn.Module, s: Settings, device: torch.device) -> torch.optim.AdamW:
    """nanoGPT's grouping: decay every ≥2-D tensor, nothing else; fused on CUDA."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": s.module_args.get("weight_decay", 0.1)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    betas = tuple(s.module_args.get("betas", (0.9, 0.95)))
    return torch.optim.AdamW(groups, lr=s.module_args.get("lr", 3e-4), betas=betas, fused=device.type == "cuda")


# ---- timing --------------------------------------------------------------------------------------------


def synthetic_batches(n: int, s: Settings, pin: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` (input, target) batches of uniformly random tokens, pinned for asynchronous copies when `pin`."""
    tokens = torch.randint(
        0, s.config.vocab_size, (n, s.batch_size, s.seq_len + 1), generator=torch.Generator().manual_seed(0)
    )
    batches = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]
    return [(x.pin_memory(), y.pin_memory()) for x, y in batches] if pin else batches


def train_plain(model, optimizer, batches, s: Settings, device: torch.device, warmup: int) -> tuple[float, float]:
    """Seconds of the `warmup` first steps and seconds per later step of a plain PyTorch training loop."""
    model.train()
    start = synchronized_time(device)
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            timed = synchronized_time(device)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=s.precision == "bf16-mixed"):
            loss = model(x, y)
        loss.backward()
        if s.gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.gradient_clip_val)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    end = synchronized_time(device)
    return timed - start, (end - timed) / (len(batches) - warmup)


class SyntheticData(L.LightningDataModule):
    """Pre-made batches with the attributes LanguageModel.setup reads from a TokenDataModule."""

    def __init__(self, batches, s: Settings):
        super().__init__()
        self.batches, self.batch_size, self.seq_len = batches, s.batch_size, s.seq_len
        self.vocab_size = s.config.vocab_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)


class StepTimer(L.Callback):
    """Clock readings (after a synchronize) at the start, after `warmup` steps and after the last step.

    On CUDA it also counts the host syncs in between, with torch's sync debug mode set to warn.
    """

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.last = warmup, warmup + steps - 1
        self.syncs: int | None = None

    def on_train_start(self, trainer, pl_module):
        self.start = synchronized_time(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.timed = synchronized_time(pl_module.device)
            if pl_module.device.type == "cuda":
                self.catcher = warnings.catch_warnings(record=True)
                self.records = self.catcher.__enter__()
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.last:
            if pl_module.device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
                self.catcher.__exit__(None, None, None)
                self.syncs = sum("synchronizing CUDA operation" in str(r.message) for r in self.records)
            self.end = synchronized_time(pl_module.device)


def train_lightning(s: Settings, batches, device: torch.device, warmup: int) -> tuple[float, float, int | None, int]:
    """Warm-up seconds, seconds per step, host syncs in the timed steps and parameters of LanguageModel + Trainer."""
    torch.manual_seed(0)
    module = LanguageModel(config=s.config, **s.module_args)
    timer = StepTimer(warmup, len(batches) - warmup)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=s.precision,
        max_steps=len(batches),
        gradient_clip_val=s.gradient_clip_val,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=SyntheticData(batches, s))
    steps = len(batches) - warmup
    return timer.timed - timer.start, (timer.end - timer.timed) / steps, timer.syncs, module.model.num_params()


# ---- the benchmark -------------------------------------------------------------------------------------


def free_memory(device: torch.device):
    """Forget the previous row: its tensors, its compiled graphs and the peak-memory counter."""
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def bench(s: Settings, steps: int = 20, warmup: int = 5) -> dict:
    """The three rows and Lightning's overhead, as one JSON-ready dict."""
    if steps < 1 or warmup < 1:
        raise UserError("--steps and --warmup must be at least 1 (warm-up also absorbs compilation)")
    if s.seq_len > s.config.block_size:
        raise UserError(f"data.seq_len ({s.seq_len}) exceeds model.config.block_size ({s.config.block_size})")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    batches = synthetic_batches(warmup + steps, s, pin=device.type == "cuda")

    def row(name: str, params: int, flops_per_token: int, warmup_s: float, step_s: float) -> dict:
        tokens_per_sec = s.batch_size * s.seq_len / step_s
        return {
            "name": name,
            "params": params,
            "tokens_per_sec": tokens_per_sec,
            "mfu": tokens_per_sec * flops_per_token / peak if peak else None,
            "step_ms": 1000 * step_s,
            "warmup_s": warmup_s,
            "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        }

    with torch.device("meta"):  # shapes only, for the parameter and FLOP counts
        ours, peer = GPT(s.config), GPT(reference_config(s.config))
    flops, peer_flops = ours.flops_per_token(s.seq_len), peer.flops_per_token(s.seq_len)

    free_memory(device)
    warmup_s, step_s, syncs, params = train_lightning(s, batches, device, warmup)
    lightning = row("lightning", params, flops, warmup_s, step_s)
    lightning["host_syncs_in_timed_steps"] = syncs

    free_memory(device)
    torch.manual_seed(0)
    module = LanguageModel(config=s.config, **s.module_args).to(device)
    if s.compile:
        module.model.compile()
    pytorch = row("pytorch", params, flops, *train_plain(module.model, module.adamw(), batches, s, device, warmup))
    del module

    free_memory(device)
    torch.manual_seed(0)
    model = reference_model(s.config).to(device)
    if s.compile:
        model.compile()
    timing = train_plain(model, reference_adamw(model, s, device), batches, s, device, warmup)
    reference = row("reference", peer.num_params(), peer_flops, *timing)
    del model
    free_memory(device)

    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_bf16_flops": peak,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "model": dataclasses.asdict(s.config),
        "batch_size": s.batch_size,
        "seq_len": s.seq_len,
        "precision": s.precision,
        "compile": s.compile,
        "activation_checkpointing": bool(s.module_args.get("activation_checkpointing", False)),
        "steps": steps,
        "warmup": warmup,
        "data": "synthetic: uniformly random tokens",
        "rows": [lightning, pytorch, reference],
        "lightning_overhead": lightning["step_ms"] / pytorch["step_ms"] - 1,
    }


# ---- largest micro-batch -------------------------------------------------------------------------------


def largest_batch(fits: Callable[[int], bool], limit: int = 4096) -> int:
    """Largest b ≤ limit with fits(b) (assumed monotone): double from 1, then bisect. 0 if even 1 does not fit."""
    low, high = 0, 1
    while high <= limit and fits(high):
        low, high = high, 2 * high
    high = min(high, limit + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def find_max_batch(s: Settings) -> int:
    """Largest micro-batch for which two training steps of our model (plain loop, config settings) fit on the GPU."""
    device = torch.device("cuda")
    free_memory(device)
    module = LanguageModel(config=s.config, **s.module_args).to(device)
    if s.compile:
        module.model.compile()
    optimizer = module.adamw()

    def fits(batch_size: int) -> bool:
        batches = synthetic_batches(2, dataclasses.replace(s, batch_size=batch_size), pin=True)
        try:
            train_plain(module.model, optimizer, batches, s, device, warmup=1)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            optimizer.zero_grad(set_to_none=True)
            del batches
            gc.collect()
            torch.cuda.empty_cache()

    print(f"searching the largest micro-batch at seq_len {s.seq_len} ...")
    return largest_batch(fits)


# ---- report --------------------------------------------------------------------------------------------


def format_table(result: dict) -> str:
    def number(value, spec: str, width: int) -> str:
        return f"{'-' if value is None else format(value, spec):>{width}}"

    c = result["model"]
    lines = [
        f"lm bench on {result['device']} (torch {result['torch']}, lightning {result['lightning']}): {c['block']} "
        f"{c['n_layer']} layers × {c['n_embd']}, micro-batch {result['batch_size']} × {result['seq_len']} tokens, "
        f"{result['precision']}, compile {'on' if result['compile'] else 'off'}, "
        f"{result['steps']} timed steps after {result['warmup']} warm-up, {result['data']}",
        "",
        f"{'row':<10} {'params':>12} {'tokens/s':>12} {'MFU':>7} {'step ms':>9} {'warm-up s':>10} {'peak mem GB':>12}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['name']:<10} {r['params']:>12,} {r['tokens_per_sec']:>12,.0f} {number(r['mfu'], '.1%', 7)} "
            f"{r['step_ms']:>9.1f} {r['warmup_s']:>10.1f} {number(r['peak_memory_gb'], '.2f', 12)}"
        )
    lightning, peak = result["rows"][0], result["peak_bf16_flops"]
    lines += [
        "",
        f"Lightning overhead (lightning / pytorch step time - 1): {result['lightning_overhead']:+.1%}",
        "MFU = tokens/s × (6N + 12·L·H·Q·T) FLOPs per token / peak dense bf16 FLOP/s "
        + (f"({peak / 1e12:.0f} TFLOP/s)" if peak else "(none: not a known GPU)"),
    ]
    if lightning.get("host_syncs_in_timed_steps") is not None:
        lines.append(f"host syncs in the lightning row's timed steps: {lightning['host_syncs_in_timed_steps']}")
    if result.get("max_batch_size") is not None:
        lines.append(f"largest micro-batch that fits at seq_len {result['seq_len']}: {result['max_batch_size']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lm bench", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a run config (model:, data:, trainer: sections)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (torch.compile happens here)")
    parser.add_argument("--batch_size", type=int, help="micro-batch (default: data.batch_size of the config)")
    parser.add_argument("--find_max_batch", action="store_true", help="also search the largest micro-batch (GPU)")
    parser.add_argument("--out", help="JSON file for the table (default: runs/bench/<config name>.json)")
    args = parser.parse_args(argv)
    if args.find_max_batch and not torch.cuda.is_available():
        raise UserError("--find_max_batch needs a GPU: on the CPU memory is not the limit")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    settings = load_settings(args.config, args.batch_size)
    result = bench(settings, args.steps, args.warmup)
    if args.find_max_batch:
        result["max_batch_size"] = find_max_batch(settings)
    print(format_table(result))
    out = Path(args.out or f"runs/bench/{Path(args.config).stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
