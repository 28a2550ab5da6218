"""`python -m lm bench --config X.yaml`: training speed of the config's model on this machine, three ways.

Rows (same shape, micro-batch, precision, compile setting, gradient clipping and AdamW settings on each):
- lightning: `python -m lm fit` of the config itself, in this process: LanguageModel and TokenDataModule through
  Trainer.fit with everything a training run has (every default callback, the progress bar, TensorBoard logging,
  checkpointing at the end), on a small corpus prepared for the benchmark. A callback reads the clock after the
  warm-up steps and after the last one (one synchronize at each boundary, none in between), and the host reads of
  the timed steps are counted (lm.callbacks.host_reads; on CUDA also torch's synchronizing calls).
- pytorch: the same model and optimizer (LanguageModel.build_optimizer, the same compiled forward) in a plain loop with
  autocast, over the same data loader. Lightning's overhead is the difference of the two step times.
- reference: a minimal nanoGPT-style GPT-2 written below (SDPA, tied embeddings, vocabulary padded to 50304, no
  framework) with the config's shape, always the classic block: our model code against the simplest fast peer.

Design choices:
- Every step is an optimizer step (no gradient accumulation) on every row, so the rows compare fairly; validation
  is off. Warm-up steps, where torch.compile does its work, are timed separately ("warm-up s").
- `--repeats R` runs the three rows R times, interleaved (lightning, pytorch, reference, lightning, ...), and
  reports medians: the ratio of two rows is then measured under the same load, which matters on shared machines.
- MFU = tokens/s × GPT.flops_per_token / peak dense bf16 FLOP/s of the GPU (table in lm.callbacks.throughput);
  the CPU gets none.
- `--memory` (instead of the rows): the peak memory of one training step (plain loop) with the loss from the whole
  batch's logits and with the chunked loss (lm/model/loss.py), each in a fresh process: CUDA's
  max_memory_allocated on a GPU, the peak resident set size above the size before the step on the CPU.
"""

import argparse
import contextlib
import dataclasses
import gc
import inspect
import json
import logging
import multiprocessing
import random
import resource
import statistics
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from lm.callbacks.host_reads import HostReadCounter
from lm.callbacks.throughput import peak_flops, synchronized_time
from lm.data.datamodule import TokenDataModule
from lm.data.prepare import prepare
from lm.errors import UserError
from lm.model import GPT, ModelConfig
from lm.model.gpt import LOSS_CHUNK_TOKENS
from lm.module import LanguageModel
from lm.optim import OptimConfig

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
    num_workers: int = 0

    @property
    def compile(self) -> bool:
        return bool(self.module_args.get("compile", False))


def merged(base: dict, override: dict) -> dict:
    """`override` on top of `base`, nested sections merged key by key (as `--config a.yaml --config b.yaml` do)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_settings(paths: list[str], batch_size: int | None = None) -> Settings:
    """Model, micro-batch, context, precision, clipping and loader workers from `python -m lm fit` config files."""
    raw: dict = {}
    for path in paths:
        raw = merged(raw, yaml.safe_load(Path(path).read_text()) or {})
    path = " + ".join(paths)
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
        num_workers=data.get("num_workers", inspect.signature(TokenDataModule).parameters["num_workers"].default),
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
    optim = OptimConfig.from_dict(s.module_args.get("optim") or {})
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": optim.adamw.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.adamw.betas), fused=device.type == "cuda")


# ---- data ----------------------------------------------------------------------------------------------


def benchmark_corpus(root: Path, tokens: int) -> str:
    """A prepared corpus of about `tokens` tokens of seeded random words (content does not change speed)."""
    rng = random.Random(0)
    words = [f"w{rng.randrange(10**6)}" for _ in range(5000)]
    with open(root / "corpus.jsonl", "w") as f:
        for _ in range(tokens // 300 + 1):  # ~100 words, ~300 tokens a document
            f.write(json.dumps({"text": " ".join(rng.choices(words, k=100))}) + "\n")
    with open(root / "prepare.log", "w") as log, contextlib.redirect_stderr(log):
        out = prepare(source="local", path=str(root / "corpus.jsonl"), out=str(root / "corpus"), val_fraction=0.01)
    return str(out)


def train_batches(corpus: str, s: Settings) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches the lightning row's TokenDataModule serves, for the plain loops."""
    data = TokenDataModule(corpus, seq_len=s.seq_len, batch_size=s.batch_size, num_workers=s.num_workers)
    return iter(data.train_dataloader())


def synthetic_batches(n: int, s: Settings, pin: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` (input, target) batches of uniformly random tokens, pinned for asynchronous copies when `pin`."""
    tokens = torch.randint(
        0, s.config.vocab_size, (n, s.batch_size, s.seq_len + 1), generator=torch.Generator().manual_seed(0)
    )
    batches = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]
    return [(x.pin_memory(), y.pin_memory()) for x, y in batches] if pin else batches


# ---- timing --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    warmup_s: float
    step_s: float
    peak_memory_gb: float | None = None


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def train_plain(forward, parameters, optimizer, batches, s: Settings, device: torch.device, warmup: int, steps: int):
    """A plain PyTorch training loop of warmup + steps steps: seconds of the warm-up and per later step."""
    start = synchronized_time(device)
    for i in range(warmup + steps):
        if i == warmup:
            timed = synchronized_time(device)
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=s.precision == "bf16-mixed"):
            loss = forward(x, y)
        loss.backward()
        if s.gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(parameters, s.gradient_clip_val)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    end = synchronized_time(device)
    return Timing(timed - start, (end - timed) / steps, peak_memory_gb(device))


class StepTimer(L.Callback):
    """Clock readings (after a synchronize) at the start, after `warmup` steps and after the last step.

    On CUDA it also counts torch's synchronizing calls in between (sync debug mode set to warn).
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


def fit_args(configs: list[str], s: Settings, corpus: str, run_dir: Path, device: torch.device, steps: int) -> list:
    """`python -m lm fit` of the configs on one device, on the corpus, `steps` optimizer steps, no validation."""
    return [
        "fit",
        *(f"--config={config}" for config in configs),
        "--seed_everything=0",
        f"--trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        "--trainer.devices=1",
        "--trainer.num_nodes=1",
        "--trainer.strategy=auto",
        f"--trainer.max_steps={steps}",
        "--trainer.accumulate_grad_batches=1",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--checkpoint.monitor=null",  # no validation, so no val/loss: the checkpoint at the end is the latest state
        f"--trainer.default_root_dir={run_dir}",
        "--model.batch_tokens=null",
        "--model.max_tokens=null",
        "--model.tokens_per_param=null",
        f"--data.sources={corpus}",
        "--data.weights=null",
        "--data.schedule=null",
        f"--data.batch_size={s.batch_size}",
        f"--data.num_workers={s.num_workers}",
        "--overwrite=true",
    ]


def train_lightning(args: list[str], warmup: int, steps: int, log: Path) -> tuple[Timing, dict, int | None]:
    """Timing, host reads of the timed steps and CUDA syncs of `python -m lm fit ARGS`, run in this process."""
    from lm.train import run  # LightningCLI: imported when a benchmark runs, not when lm.bench is

    timer, reads = StepTimer(warmup, steps), HostReadCounter()
    lightning_log = logging.getLogger("lightning.pytorch")  # its handler writes to the terminal, not sys.stderr
    level, _ = lightning_log.level, lightning_log.setLevel(logging.WARNING)
    try:
        with open(log, "a") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            cli = run(args, callbacks=(timer, reads))
    finally:
        lightning_log.setLevel(level)
    device = cli.model.device
    # Reads of the optimizer steps the timed batches make, but the last: after it training ends (the progress bar's
    # final refresh, last.ckpt), which is not the loop.
    timed = range(warmup + 1, warmup + steps)
    host_reads = reads.summary(cli.trainer.log_every_n_steps, timed)
    timing = Timing(timer.timed - timer.start, (timer.end - timer.timed) / steps, peak_memory_gb(device))
    return timing, host_reads, timer.syncs


# ---- the benchmark -------------------------------------------------------------------------------------


def free_memory(device: torch.device):
    """Forget the previous row: its tensors, its compiled graphs and the peak-memory counter."""
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def our_plain_row(s: Settings, corpus: str, device: torch.device, warmup: int, steps: int) -> Timing:
    torch.manual_seed(0)
    module = LanguageModel(config=s.config, **s.module_args).to(device)
    model = module.model
    forward = torch.compile(model.forward) if s.compile else model  # as LanguageModel compiles its training forward
    parameters, optimizer = list(model.parameters()), module.build_optimizer()
    return train_plain(forward, parameters, optimizer, train_batches(corpus, s), s, device, warmup, steps)


def reference_row(s: Settings, corpus: str, device: torch.device, warmup: int, steps: int) -> Timing:
    torch.manual_seed(0)
    model = reference_model(s.config).to(device)
    forward = torch.compile(model) if s.compile else model
    optimizer, parameters = reference_adamw(model, s, device), list(model.parameters())
    return train_plain(forward, parameters, optimizer, train_batches(corpus, s), s, device, warmup, steps)


def speed(step_s: float, s: Settings, model: GPT, peak: float | None) -> tuple[float, float | None]:
    """Tokens/s of a training step of `step_s` seconds, and its MFU where the GPU's peak FLOP/s is known."""
    tokens_per_sec = s.batch_size * s.seq_len / step_s
    return tokens_per_sec, tokens_per_sec * model.flops_per_token(s.seq_len) / peak if peak else None


def bench(
    configs: list[str], s: Settings, steps: int = 20, warmup: int = 5, repeats: int = 1, reference: bool = True
) -> dict:
    """The rows (medians over interleaved repeats) and Lightning's overhead, as one JSON-ready dict.

    `reference=False` leaves the reference row out (`lm gpu-check` compares only our two paths)."""
    if steps < 1 or warmup < 1 or repeats < 1:
        raise UserError("--steps, --warmup and --repeats must be at least 1 (warm-up also absorbs compilation)")
    if s.seq_len > s.config.block_size:
        raise UserError(f"data.seq_len ({s.seq_len}) exceeds model.config.block_size ({s.config.block_size})")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    with torch.device("meta"):  # shapes only, for the parameter and FLOP counts
        ours, peer = GPT(s.config), GPT(reference_config(s.config))
    names = ("lightning", "pytorch", "reference") if reference else ("lightning", "pytorch")
    timings: dict[str, list[Timing]] = {name: [] for name in names}
    reads, syncs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = benchmark_corpus(root, tokens=max(2 * (warmup + steps + 1) * s.batch_size * (s.seq_len + 1), 10**5))
        for repeat in range(repeats):
            free_memory(device)
            args = fit_args(configs, s, corpus, root / f"run-{repeat}", device, warmup + steps)
            timing, host_reads, cuda_syncs = train_lightning(args, warmup, steps, root / "fit.log")
            timings["lightning"].append(timing)
            reads.append(host_reads)
            syncs.append(cuda_syncs)
            free_memory(device)
            timings["pytorch"].append(our_plain_row(s, corpus, device, warmup, steps))
            if reference:
                free_memory(device)
                timings["reference"].append(reference_row(s, corpus, device, warmup, steps))
        free_memory(device)

    def row(name: str, model: GPT) -> dict:
        step_s = statistics.median(t.step_s for t in timings[name])
        tokens_per_sec, mfu = speed(step_s, s, model, peak)
        memory = [t.peak_memory_gb for t in timings[name] if t.peak_memory_gb is not None]
        return {
            "name": name,
            "params": model.num_params(),
            "tokens_per_sec": tokens_per_sec,
            "mfu": mfu,
            "step_ms": 1000 * step_s,
            "step_ms_each_repeat": [round(1000 * t.step_s, 3) for t in timings[name]],
            "warmup_s": statistics.median(t.warmup_s for t in timings[name]),
            "peak_memory_gb": max(memory) if memory else None,
        }

    def paired(a: str, b: str, how: Callable[[float, float], float]) -> float:
        """Median over repeats of how(a's step time, b's step time), each pair measured back to back."""
        return statistics.median(how(x.step_s, y.step_s) for x, y in zip(timings[a], timings[b]))

    lightning = row("lightning", ours)
    lightning["host_reads_in_timed_steps"] = reads[-1]
    lightning["host_syncs_in_timed_steps"] = syncs[-1]
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
        "repeats": repeats,
        "data": "a corpus of random words, prepared for the benchmark",
        "rows": [lightning, row("pytorch", ours)] + ([row("reference", peer)] if reference else []),
        "lightning_overhead": paired("lightning", "pytorch", lambda a, b: a / b - 1),
        "lightning_overhead_ms": paired("lightning", "pytorch", lambda a, b: 1000 * (a - b)),
        "pytorch_vs_reference": paired("pytorch", "reference", lambda a, b: a / b - 1) if reference else None,
    }


# ---- memory of a training step -------------------------------------------------------------------------


def step_memory(s: Settings, loss_chunk_tokens: int) -> float:
    """GB a training step of our model needs beyond what the process held before it (runs in a fresh process)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    module = LanguageModel(config=s.config, **s.module_args).to(device)
    module.model.loss_chunk_tokens = loss_chunk_tokens
    batches = iter(synthetic_batches(2, s, pin=device.type == "cuda"))
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device)
        train_plain(module.model, list(module.model.parameters()), module.build_optimizer(), batches, s, device, 1, 1)
        return (torch.cuda.max_memory_allocated(device) - before) / 1e9
    before = resident_bytes()
    train_plain(module.model, list(module.model.parameters()), module.build_optimizer(), batches, s, device, 1, 1)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before) / 1e9


def resident_bytes() -> int:
    """This process's resident set size now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def memory_table(s: Settings) -> dict[str, float]:
    """step_memory with the whole batch's logits (loss_chunk_tokens 0) and chunked, each in a fresh process."""
    chunk = LOSS_CHUNK_TOKENS
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return {
            "full logits": pool.apply(step_memory, (s, 0)),
            f"chunks of {chunk} tokens": pool.apply(step_memory, (s, chunk)),
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


def find_max_batch(s: Settings, candidates: list[int] | None = None) -> int:
    """Largest micro-batch for which two training steps of our model (plain loop, config settings) fit on the GPU:
    searched from 1 up, or the largest of `candidates` that fits (0 if none does). On the CPU any size fits."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    free_memory(device)
    module = LanguageModel(config=s.config, **s.module_args).to(device)
    model = module.model
    forward = torch.compile(model.forward) if s.compile else model
    parameters, optimizer = list(model.parameters()), module.build_optimizer()

    def fits(batch_size: int) -> bool:
        batches = iter(synthetic_batches(2, dataclasses.replace(s, batch_size=batch_size), device.type == "cuda"))
        try:
            train_plain(forward, parameters, optimizer, batches, s, device, warmup=1, steps=1)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            optimizer.zero_grad(set_to_none=True)
            del batches
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    if candidates:
        return next((b for b in sorted(candidates, reverse=True) if fits(b)), 0)
    print(f"searching the largest micro-batch at seq_len {s.seq_len} ...")
    return largest_batch(fits)


# ---- report --------------------------------------------------------------------------------------------


def format_table(result: dict) -> str:
    def number(value, spec: str, width: int) -> str:
        return f"{'-' if value is None else format(value, spec):>{width}}"

    c = result["model"]
    repeats = f", median of {result['repeats']} interleaved repeats" if result["repeats"] > 1 else ""
    lines = [
        f"lm bench on {result['device']} (torch {result['torch']}, lightning {result['lightning']}): {c['block']} "
        f"{c['n_layer']} layers × {c['n_embd']}, micro-batch {result['batch_size']} × {result['seq_len']} tokens, "
        f"{result['precision']}, compile {'on' if result['compile'] else 'off'}, "
        f"{result['steps']} timed steps after {result['warmup']} warm-up{repeats}, {result['data']}",
        "",
        f"{'row':<10} {'params':>12} {'tokens/s':>12} {'MFU':>7} {'step ms':>9} {'warm-up s':>10} {'peak mem GB':>12}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['name']:<10} {r['params']:>12,} {r['tokens_per_sec']:>12,.0f} {number(r['mfu'], '.1%', 7)} "
            f"{r['step_ms']:>9.2f} {r['warmup_s']:>10.1f} {number(r['peak_memory_gb'], '.2f', 12)}"
        )
    lightning, peak = result["rows"][0], result["peak_bf16_flops"]
    reads = lightning["host_reads_in_timed_steps"]
    lines += [
        "",
        f"Lightning overhead (lightning / pytorch step time - 1): {result['lightning_overhead']:+.1%} "
        f"({result['lightning_overhead_ms']:+.2f} ms per step)",
        f"pytorch / reference step time - 1: {result['pytorch_vs_reference']:+.1%}",
        "MFU = tokens/s × GPT.flops_per_token (6 × matmul weights + 12·L·H·Q·T) / peak dense bf16 FLOP/s "
        + (f"({peak / 1e12:.0f} TFLOP/s)" if peak else "(none: not a GPU with a bf16 peak in the table)"),
        f"host reads in the lightning row's timed steps: {reads['between_logging_steps']} between logging steps, "
        f"{', '.join(map(str, reads['per_logging_step'])) or 'no logging step'} at each logging step",
    ]
    if lightning.get("host_syncs_in_timed_steps") is not None:
        syncs = lightning["host_syncs_in_timed_steps"]
        lines.append(f"CUDA synchronizing calls in the lightning row's timed steps: {syncs}")
    if result.get("max_batch_size") is not None:
        lines.append(f"largest micro-batch that fits at seq_len {result['seq_len']}: {result['max_batch_size']}")
    return "\n".join(lines)


def format_memory(result: dict) -> str:
    where = "CUDA max_memory_allocated" if result["device"] != "cpu" else "peak resident set size"
    lines = [
        f"memory of one training step on {result['device']} (plain loop, {where} above what the process held "
        f"before the step): {result['model']}, micro-batch {result['batch_size']} × {result['seq_len']}, "
        f"{result['precision']}"
    ]
    lines += [f"  loss from {name}: {gb:.2f} GB" for name, gb in result["step_memory_gb"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lm bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", required=True, action="append", help="a run config (model:, data:, trainer:); repeat to compose"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (torch.compile happens here)")
    parser.add_argument("--repeats", type=int, default=1, help="run the rows this many times, interleaved; medians")
    parser.add_argument("--batch_size", type=int, help="micro-batch (default: data.batch_size of the config)")
    parser.add_argument("--find_max_batch", action="store_true", help="also search the largest micro-batch (GPU)")
    parser.add_argument(
        "--memory", action="store_true", help="instead of the rows: the memory of a step, full logits vs chunked loss"
    )
    parser.add_argument("--out", help="JSON file for the table (default: runs/bench/<config name>.json)")
    args = parser.parse_args(argv)
    if args.find_max_batch and not torch.cuda.is_available():
        raise UserError("--find_max_batch needs a GPU: on the CPU memory is not the limit")
    settings = load_settings(args.config, args.batch_size)
    if args.memory:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        c = settings.config
        result = {
            "device": device,
            "model": f"{c.block} {c.n_layer} layers × {c.n_embd}",
            "batch_size": settings.batch_size,
            "seq_len": settings.seq_len,
            "precision": settings.precision,
            "step_memory_gb": memory_table(settings),
        }
        print(format_memory(result))
    else:
        result = bench(args.config, settings, args.steps, args.warmup, args.repeats)
        result["configs"] = args.config
        if args.find_max_batch:
            result["max_batch_size"] = find_max_batch(settings)
        print(format_table(result))
    suffix = "-memory" if args.memory else ""
    out = Path(args.out or f"runs/bench/{'+'.join(Path(c).stem for c in args.config)}{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
