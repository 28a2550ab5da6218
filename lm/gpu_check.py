"""`python -m lm gpu-check` (`make gpu-check`): what only a GPU can show, measured in one command on one CUDA GPU.

A GPU is available to this project for minutes at a time, so everything worth measuring on one is prepared here, runs
in under 8 minutes (torch.compile warm-up included) and writes `gpu-check.md` (tables) and `gpu-check.json` into
`--out` ($OUT when set). Sections, in the issue's numbering:

0. environment: GPU, driver, torch / CUDA / Lightning versions, date, commit; the torch build must be the GPU
   machine's (`--expect_torch`) and the packages lm needs there (jsonargparse, datasets, the tokenizer cache) present.
1. throughput: tokens/s, MFU and peak memory of the 124M classic and modern bench configs (bf16-mixed, compile on)
   at the largest micro-batch of 64/32/16 × 1024 that fits, through `python -m lm fit` (Lightning) and a plain loop:
   `lm bench` without its reference row.
2. cases: the modern block under named config overrides (attention masks and backends, sliding windows, Muon
   variants): tokens/s, MFU and peak memory of the plain loop, and the optimizer step's time alone. CASES is a table
   to extend; a case whose keys this commit lacks is reported "not available in this commit", not run.
3. correctness: bf16-mixed vs fp32 loss, compiled vs eager loss and gradients, and named checks of features that may
   be missing (document masking = each document alone; each attention backend = the SDPA mask), skipped with the
   reason when their keys are missing.
4. sanity: 300 steps of the modern 124M AdamW recipe through `python -m lm fit` on a generated corpus: the loss must
   fall, and no host read may happen between logging steps (lm.callbacks.host_reads; CUDA's synchronizing calls too).

Design choices:
- The checks run first and the extendable cases last, each section with a time budget: an item starts only while its
  section has budget left, and the others are listed as skipped. Each section runs in its own try, and the files are
  rewritten after every section, so a failure or a killed command still leaves everything measured before it.
- It fails loudly, but at the end: a version mismatch, a failed check, a section's error or a case's error is one line
  each in `failures`, and the command exits non-zero with them (missed speed targets are reported, not failures).
- `--device cpu --tiny` runs every section on a 2-layer model in seconds (tests/test_gpu_check.py), so the script
  cannot rot before a GPU appears. There, compile checks use the `aot_eager` backend (inductor would build C++ for
  minutes) and the tiny configs train eagerly.
- The corpus is generated (lm.bench's random-word documents, prepared by `lm prepare`): no network, no shipped data.
"""

import argparse
import dataclasses
import datetime
import inspect
import json
import os
import platform
import subprocess
import tempfile
import time
import traceback
import typing
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import yaml

from lm.bench import (
    bench,
    benchmark_corpus,
    find_max_batch,
    fit_args,
    free_memory,
    load_settings,
    merged,
    our_plain_row,
    peak_flops,
    speed,
    train_lightning,
)
from lm.callbacks.throughput import synchronized_time
from lm.data.tokenizer import EOT, get_encoding
from lm.errors import UserError
from lm.model import GPT, ModelConfig
from lm.module import LanguageModel
from lm.provenance import CHECKOUT, git_state, package_version

DEVICE_TORCH = "2.11.0+cu130"  # the GPU machine's torch (shared/device/README.md)
CONFIGS = {
    "classic": "configs/bench/gpt2-124m-classic.yaml",
    "modern": "configs/bench/modern-124m.yaml",
    "sanity": "configs/recipes/modern-124m-adamw.yaml",
}
# --tiny: every config shrunk to 2 layers × 32 wide and a 32-token context, eager (no compile).
TINY = {
    "model": {
        "config": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
        "compile": False,
        "optim": {"lr": 1e-2},
    },
    "data": {"seq_len": 32, "num_workers": 0},
}
BLOCKS = ("classic", "modern")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much each section does; the defaults are the GPU's (planned for under 8 minutes on an H100)."""

    batch_sizes: tuple[int, ...] = (64, 32, 16)  # 1: the largest that fits is measured
    warmup: int = 3  # 1: untimed steps first (torch.compile happens here)
    steps: int = 20  # 1: timed steps per row
    case_batch: int = 16  # 2: one micro-batch for every case, so that the cases compare with each other
    case_warmup: int = 3
    case_steps: int = 10
    optimizer_steps: int = 10  # 2: timed optimizer steps alone
    check_batch: int = 4  # 3
    check_layers: int = 2  # 3: a 2-layer model compiles the same kernels as 12 layers, in a fraction of the time
    sanity_steps: int = 300  # 4
    sanity_warmup: int = 10  # 4: steps before the host reads are counted and the clock starts
    sanity_batch: int = 16
    log_every: int = 10  # 4: trainer.log_every_n_steps
    budgets: dict = dataclasses.field(  # seconds per section: an item starts only while its section has some left
        default_factory=lambda: {"correctness": 75, "sanity": 90, "throughput": 160, "cases": 120}
    )


TINY_PLAN = Plan(
    batch_sizes=(2,),
    warmup=1,
    steps=2,
    case_batch=2,
    case_warmup=1,
    case_steps=2,
    optimizer_steps=2,
    check_batch=2,
    check_layers=1,
    sanity_steps=12,
    sanity_warmup=3,
    sanity_batch=2,
    log_every=4,
    # The dry run must reach every item (its test checks each was measured): budgets that only stop a hang, also on
    # a CPU shared with other work (the cases section took over 120 s on 2 busy cores).
    budgets={"correctness": 300, "sanity": 300, "throughput": 400, "cases": 600},
)


# ---- named cases and checks ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """The modern block under `overrides`: dotted `model.` keys, as on the `python -m lm fit` command line."""

    name: str
    overrides: dict = dataclasses.field(default_factory=dict)
    cuda_only: str | None = None  # why it cannot run on the CPU, if it cannot


DOCUMENT = {"model.config.attention_mask": "document"}
SSSL = {"model.config.window_pattern": "SSSL", "model.config.sliding_window": 512}  # nanochat's: S = half the context
SDPA, FLEX = ({"model.config.attention_backend": name} for name in ("sdpa", "flex"))
FLEX_CPU = "FlexAttention has no backward on the CPU"
MUON = {"model.optim.name": "muon"}

# Section 2. The lead extends this table as features land (keys as their issues name them).
CASES = [
    Case("causal, default backend", {}),
    Case("causal, sdpa", SDPA),
    Case("causal, flex", FLEX, FLEX_CPU),
    Case("document, sdpa mask", {**DOCUMENT, **SDPA}),
    Case("document, flex", {**DOCUMENT, **FLEX}, FLEX_CPU),
    Case("sliding window SSSL 512, default backend", SSSL),
    Case("document + sliding window SSSL 512, flex", {**DOCUMENT, **SSSL, **FLEX}, FLEX_CPU),
    Case("muon newton_schulz", MUON),
    Case("muon newton_schulz float32", {**MUON, "model.optim.muon.orthogonalization_dtype": "float32"}),
    Case("muon polar_express", {**MUON, "model.optim.muon.orthogonalization": "polar_express"}),
    Case("muon normuon", {**MUON, "model.optim.muon.normuon": True}),
    Case("muon cautious weight decay", {**MUON, "model.optim.muon.cautious_weight_decay": True}),
    Case("muon match_rms_adamw", {**MUON, "model.optim.muon.lr_scaling": "match_rms_adamw"}),
]


@dataclasses.dataclass(frozen=True)
class Check:
    """A correctness check: `test(run, config_overrides)` returns what it measured and whether that passed."""

    name: str
    test: Callable[["Run", dict], dict]
    overrides: dict = dataclasses.field(default_factory=dict)
    cuda_only: str | None = None


def why_not(item: "Case | Check", run: "Run", deadline: "Deadline") -> str | None:
    """Why a case or check is not run here and now (a key missing in this commit, no GPU, no time left), or None."""
    missing = available(item.overrides)
    if missing:
        return f"not available in this commit ({missing})"
    if item.cuda_only and run.device.type != "cuda":
        return f"skipped on the CPU: {item.cuda_only}"
    if deadline.spent():
        return deadline.skipped()
    return None


def available(overrides: dict) -> str | None:
    """None when every key exists in this commit, else the first missing key."""
    return next((key for key in overrides if not key_exists(key)), None)


def key_exists(key: str) -> bool:
    """Whether a dotted `model.` key names an argument of LanguageModel, or a field of the dataclass one holds (as
    `model.config.block` does). Below a key that is not a dataclass (a dict) it cannot tell, and says yes."""
    section, *path = key.split(".")
    if section != "model" or not path or path[0] not in inspect.signature(LanguageModel).parameters:
        return False
    annotation = typing.get_type_hints(LanguageModel.__init__).get(path[0])
    for name in path[1:]:
        cls = next((c for c in (*typing.get_args(annotation), annotation) if dataclasses.is_dataclass(c)), None)
        if cls is None:
            return True
        if name not in {f.name for f in dataclasses.fields(cls)}:
            return False
        annotation = typing.get_type_hints(cls)[name]
    return True


def nested(overrides: dict) -> dict:
    """{"model.config.x": 1} -> {"model": {"config": {"x": 1}}}."""
    out: dict = {}
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = value
    return out


def config_overrides(overrides: dict) -> dict:
    """The `model.config.` part of dotted overrides, as ModelConfig fields."""
    return {key.removeprefix("model.config."): v for key, v in overrides.items() if key.startswith("model.config.")}


# ---- the run -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    device: torch.device
    plan: Plan
    tiny: bool
    work: Path  # configs, corpora, run directories: never in --out (checkpoints of 124M are GBs)
    out: Path
    result: dict
    corpus_dir: str | None = None

    @property
    def peak_flops(self) -> float | None:
        """The GPU's peak dense bf16 FLOP/s (None on the CPU or a GPU missing from lm's table): MFU's denominator."""
        return peak_flops(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None

    @property
    def compile_backend(self) -> str:
        return "inductor" if self.device.type == "cuda" else "aot_eager"

    def config(self, name: str, overrides: dict | None = None) -> dict:
        """A shipped run config (CONFIGS[name]), shrunk with --tiny, under dotted overrides."""
        raw = yaml.safe_load((CHECKOUT / CONFIGS[name]).read_text())
        raw = merged(raw, TINY) if self.tiny else raw
        return merged(raw, nested(overrides or {}))

    def write(self, name: str, raw: dict) -> str:
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return str(path)

    def model_config(self, block: str, overrides: dict | None = None, **fields) -> ModelConfig:
        raw = self.config(block)["model"]["config"]
        return ModelConfig(**{**raw, **fields, **config_overrides(overrides or {})})

    def corpus(self) -> str:
        """One generated corpus for the cases and the sanity run, made once (the loader of a case reads one epoch)."""
        if self.corpus_dir is None:
            p, seq_len = self.plan, self.config("modern")["data"]["seq_len"]
            tokens = 2 * (p.case_warmup + p.case_steps + 1) * p.case_batch * (seq_len + 1)
            (self.work / "corpus").mkdir()
            self.corpus_dir = benchmark_corpus(self.work / "corpus", max(tokens, 10**5))
        return self.corpus_dir


class Deadline:
    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()

    def spent(self) -> bool:
        return time.perf_counter() - self.start > self.seconds

    def skipped(self) -> str:
        return f"skipped: the section's {self.seconds:.0f} s budget was spent"


# ---- 0. environment ------------------------------------------------------------------------------------


def driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def environment(device: torch.device, tiny: bool) -> dict:
    """What the numbers depend on: the GPU, its driver, the versions, the date and the commit."""
    cuda, state = device.type == "cuda", git_state()
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = peak_flops(name) if cuda else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": state["git_commit"] or os.environ.get("LM_COMMIT"),  # the GPU machine's copy has no .git
        "uncommitted changes": state["git_dirty"],
        "device": name,
        "gpu memory GB": round(torch.cuda.get_device_properties(device).total_memory / 1e9, 1) if cuda else None,
        "peak bf16 TFLOP/s": peak / 1e12 if peak else None,
        "driver": driver_version() if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "lightning": L.__version__,
        **{package: package_version(package) for package in ("jsonargparse", "datasets", "tiktoken", "triton")},
        "plan": "tiny" if tiny else "full",
    }


def mismatches(info: dict, expect_torch: str) -> list[str]:
    """What makes the numbers meaningless or the run impossible, one line each: on a GPU another torch build than
    the GPU machine's, and anywhere a package or the tokenizer that lm needs there."""
    problems = []
    if info["device"] != "cpu" and expect_torch and info["torch"] != expect_torch:
        problems.append(f"torch {info['torch']}, expected {expect_torch} (--expect_torch '' accepts any)")
    for package in ("jsonargparse", "datasets"):
        if info[package] is None:
            problems.append(f"{package} is missing: send the wheels of ../shared/device/fetch-wheels.sh (.whl)")
    try:
        get_encoding()
    except UserError as err:
        problems.append(str(err))
    return problems


# ---- 1. throughput -------------------------------------------------------------------------------------


def throughput(run: Run, deadline: Deadline) -> dict:
    """Lightning path and plain loop of each 124M config, at the largest micro-batch of the plan that fits."""
    rows, failures = [], []
    for name in ("classic", "modern"):
        if deadline.spent():
            rows.append({"config": name, "status": deadline.skipped()})
            continue
        path = run.write(name, run.config(name))
        s = load_settings([path])
        # Tried eagerly: compiled, a step needs less memory, and the search costs no compilation.
        eager = dataclasses.replace(s, module_args={**s.module_args, "compile": False})
        batch = find_max_batch(eager, list(run.plan.batch_sizes))
        if not batch:
            message = f"out of memory at every micro-batch of {run.plan.batch_sizes} × {s.seq_len}"
            rows.append({"config": name, "status": message})
            failures.append(f"throughput {name}: {message}")
            continue
        s = dataclasses.replace(s, batch_size=batch)
        result = bench([path], s, run.plan.steps, run.plan.warmup, repeats=1, reference=False)
        lightning, plain = result["rows"]
        rows.append(
            {
                "config": name,
                "status": "measured",
                "params": lightning["params"],
                "batch_size": batch,
                "seq_len": s.seq_len,
                "precision": s.precision,
                "compile": s.compile,
                "lightning": lightning,
                "pytorch": plain,
                "lightning_overhead": result["lightning_overhead"],
                "lightning_overhead_ms": result["lightning_overhead_ms"],
            }
        )
    return {"rows": rows, "failures": failures, "targets": targets(run, rows)}


def targets(run: Run, rows: list[dict]) -> list[dict]:
    """The issue's targets for one H100 against what was measured (reported, not failures)."""
    measured = {row["config"]: row for row in rows if row["status"] == "measured"}

    def value(config: str, *keys: str) -> float | None:
        row = measured.get(config)
        for key in keys:
            row = row and row[key]
        return row

    out = [
        ("classic 124M ≥ 500K tokens/s", value("classic", "lightning", "tokens_per_sec"), lambda v: v >= 5e5),
        ("modern 124M ≥ 45% MFU", value("modern", "lightning", "mfu"), lambda v: v >= 0.45),
        *(
            (f"{c}: Lightning within 2% of the plain loop", value(c, "lightning_overhead"), lambda v: v <= 0.02)
            for c in BLOCKS
        ),
    ]
    gpu = run.device.type == "cuda"
    return [{"target": t, "measured": v, "met": met(v) if gpu and v is not None else None} for t, v, met in out]


# ---- 2. cases ------------------------------------------------------------------------------------------


def optimizer_step_ms(s, device: torch.device, warmup: int, steps: int) -> float:
    """Milliseconds of one optimizer step alone (random gradients: the step's time does not depend on them)."""
    torch.manual_seed(0)
    module = LanguageModel(config=s.config, **s.module_args).to(device)
    for p in module.model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = module.build_optimizer()
    for _ in range(warmup):
        optimizer.step()
    start = synchronized_time(device)
    for _ in range(steps):
        optimizer.step()
    return 1000 * (synchronized_time(device) - start) / steps


def cases(run: Run, deadline: Deadline) -> dict:
    """Each case of CASES through the plain loop at one micro-batch, and its optimizer step alone."""
    rows, failures = [], []
    for case in CASES:
        row = {"case": case.name, "overrides": case.overrides}
        rows.append(row)
        row["status"] = why_not(case, run, deadline)
        if not row["status"]:
            try:
                row.update(measure_case(run, case))
            except Exception as err:  # one case's failure must not lose the others
                row["status"] = f"error: {one_line(err)}"
                failures.append(f"case {case.name!r}: {one_line(err)}")
    return {"rows": rows, "failures": failures, "batch_size": run.plan.case_batch}


def measure_case(run: Run, case: Case) -> dict:
    slug = "case-" + "".join(c if c.isalnum() else "-" for c in case.name)
    s = load_settings([run.write(slug, run.config("modern", case.overrides))], run.plan.case_batch)
    corpus, p = run.corpus(), run.plan
    free_memory(run.device)
    timing = our_plain_row(s, corpus, run.device, p.case_warmup, p.case_steps)
    with torch.device("meta"):
        tokens_per_sec, mfu = speed(timing.step_s, s, GPT(s.config), run.peak_flops)
    free_memory(run.device)
    return {
        "status": "measured",
        "tokens_per_sec": tokens_per_sec,
        "mfu": mfu,
        "step_ms": 1000 * timing.step_s,
        "warmup_s": timing.warmup_s,
        "peak_memory_gb": timing.peak_memory_gb,
        "optimizer_step_ms": optimizer_step_ms(s, run.device, 2, p.optimizer_steps),
    }


# ---- 3. correctness ------------------------------------------------------------------------------------


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def gradient_error(a: dict, b: dict) -> float:
    """The largest relative error over the parameters' gradients."""
    return max(relative_error(a[name], b[name]) for name in b)


def loss_and_grads(model: GPT, forward, x, y, bf16: bool) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
        loss = forward(x, y)
    loss.backward()
    return loss.detach().float(), {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def tokens(run: Run, config: ModelConfig, batch: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, seq_len), generator=generator).to(run.device)


def result(measured: dict, tolerances: dict) -> dict:
    """Passed when every measured error is within its tolerance."""
    return {
        "measured": measured,
        "tolerance": tolerances,
        "passed": all(measured[k] <= tolerances[k] for k in tolerances),
    }


def bf16_matches_fp32(run: Run, overrides: dict) -> dict:
    """The loss of one batch under bf16 autocast and in fp32, same weights, both blocks at full depth (eager)."""
    measured = {}
    for block in BLOCKS:
        torch.manual_seed(0)
        config = run.model_config(block, overrides)
        model = GPT(config).to(run.device)
        x = tokens(run, config, run.plan.check_batch, config.block_size + 1)
        losses = [loss_and_grads(model, model, x[:, :-1], x[:, 1:], bf16)[0] for bf16 in (False, True)]
        measured[f"{block} loss"] = relative_error(losses[1], losses[0])
    return result(measured, {name: 1e-2 for name in measured})


def compiled_matches_eager(bf16: bool, blocks: tuple[str, ...]) -> Callable[[Run, dict], dict]:
    """Loss and gradients of torch.compile(GPT.forward) (inductor on CUDA) against eager, same weights and batch."""
    tolerance = {"loss": 1e-2, "gradients": 5e-2} if bf16 else {"loss": 1e-5, "gradients": 1e-4}

    def test(run: Run, overrides: dict) -> dict:
        measured = {}
        for block in blocks:
            torch._dynamo.reset()
            torch.manual_seed(0)
            config = run.model_config(block, overrides, n_layer=run.plan.check_layers)
            model = GPT(config).to(run.device)
            x = tokens(run, config, run.plan.check_batch, config.block_size + 1)
            x, y = x[:, :-1], x[:, 1:]
            compiled = torch.compile(model.forward, backend=run.compile_backend)
            (eager_loss, eager_grads), (loss, grads) = (loss_and_grads(model, f, x, y, bf16) for f in (model, compiled))
            measured[f"{block} loss"] = relative_error(loss, eager_loss)
            measured[f"{block} gradients"] = gradient_error(grads, eager_grads)
        return result(measured, {name: tolerance[name.split()[-1]] for name in measured})

    return test


def packed_rows(run: Run, config: ModelConfig, rows: int) -> list[list[torch.Tensor]]:
    """Rows of whole documents (each starting with EOT, as prepare writes them), a different layout in each row."""
    generator, T = torch.Generator().manual_seed(0), config.block_size
    layouts = [[T // 4, T // 2, T - T // 4 - T // 2], [T // 3, T - T // 3]]
    out = []
    for lengths in layouts[:rows]:
        docs = [torch.randint(0, EOT, (n,), generator=generator) for n in lengths]
        for doc in docs:
            doc[0] = EOT
        out.append([doc.to(run.device) for doc in docs])
    return out


def summed_loss(model: GPT, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of idx and the summed cross-entropy against fixed targets (sums add up across documents)."""
    logits = model(idx)
    return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")


def documents_alone(run: Run, overrides: dict) -> dict:
    """Document masking: a packed row's logits and gradients equal those of its documents each run alone (fp32)."""
    measured = {}
    for block in BLOCKS:
        torch.manual_seed(0)
        model = GPT(run.model_config(block, overrides, n_layer=run.plan.check_layers)).to(run.device)
        params = list(model.parameters())
        rows = packed_rows(run, model.config, 2)
        idx = torch.stack([torch.cat(docs) for docs in rows])
        targets = tokens(run, model.config, *idx.shape, seed=1)
        packed_logits, loss = summed_loss(model, idx, targets)
        packed_grads = torch.autograd.grad(loss, params)
        alone_logits, alone_grads = [], [torch.zeros_like(p) for p in params]
        for r, docs in enumerate(rows):
            start, row_logits = 0, []
            for doc in docs:
                logits, loss = summed_loss(model, doc[None], targets[r : r + 1, start : start + len(doc)])
                row_logits.append(logits[0])
                alone_grads = [a + g for a, g in zip(alone_grads, torch.autograd.grad(loss, params))]
                start += len(doc)
            alone_logits.append(torch.cat(row_logits))
        measured[f"{block} logits"] = relative_error(packed_logits, torch.stack(alone_logits))
        measured[f"{block} gradients"] = max(relative_error(a, b) for a, b in zip(packed_grads, alone_grads))
    return result(measured, {name: 1e-5 if name.endswith("logits") else 1e-4 for name in measured})


def backend_matches_sdpa(run: Run, overrides: dict) -> dict:
    """Logits and gradients of an attention backend against the SDPA mask, same weights and rows (bf16 autocast)."""
    torch.manual_seed(0)
    model, reference = (
        GPT(run.model_config("modern", o, n_layer=run.plan.check_layers)).to(run.device)
        for o in (overrides, {**overrides, **SDPA})
    )
    reference.load_state_dict(model.state_dict())
    idx = torch.stack([torch.cat(docs) for docs in packed_rows(run, model.config, 2)])
    targets = tokens(run, model.config, *idx.shape, seed=1)
    out = {}
    for name, m in (("backend", model), ("sdpa", reference)):
        with torch.autocast(run.device.type, torch.bfloat16):
            logits, loss = summed_loss(m, idx, targets)
        out[name] = logits, torch.autograd.grad(loss, list(m.parameters()))
    measured = {
        "logits": relative_error(out["backend"][0], out["sdpa"][0]),
        "gradients": max(relative_error(a, b) for a, b in zip(*(out[n][1] for n in ("backend", "sdpa")))),
    }
    return result(measured, {"logits": 2e-2, "gradients": 5e-2})


CHECKS = [
    Check("bf16-mixed loss = fp32 loss (classic, modern)", bf16_matches_fp32),
    Check("compiled = eager, fp32: loss and gradients (classic, modern)", compiled_matches_eager(False, BLOCKS)),
    Check("compiled = eager, bf16-mixed: loss and gradients (modern)", compiled_matches_eager(True, ("modern",))),
    Check("document masking = each document alone, fp32 (classic, modern)", documents_alone, DOCUMENT),
    Check("flex = sdpa mask (document)", backend_matches_sdpa, {**DOCUMENT, **FLEX}, FLEX_CPU),
    Check("flex = sdpa mask (document + window SSSL)", backend_matches_sdpa, {**DOCUMENT, **SSSL, **FLEX}, FLEX_CPU),
]


def correctness(run: Run, deadline: Deadline) -> dict:
    """Each check of CHECKS, in fp32 without TF32 (the fp32 tolerances are float32 rounding, not TF32's)."""
    rows, failures = [], []
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for check in CHECKS:
            row = {"check": check.name, "overrides": check.overrides}
            rows.append(row)
            row["status"] = why_not(check, run, deadline)
            if not row["status"]:
                try:
                    row.update(check.test(run, check.overrides))
                    row["status"] = "passed" if row["passed"] else "FAILED"
                except Exception as err:  # one check's failure must not lose the others
                    row["status"] = f"error: {one_line(err)}"
                if row["status"] != "passed":
                    failures.append(f"check {check.name!r}: {row['status']} {row.get('measured', '')}".strip())
                free_memory(run.device)
    finally:
        torch.set_float32_matmul_precision(precision)
        torch._dynamo.reset()
    return {"rows": rows, "failures": failures}


# ---- 4. sanity -----------------------------------------------------------------------------------------


def sanity(run: Run, deadline: Deadline) -> dict:
    """The modern 124M AdamW recipe for sanity_steps steps through `python -m lm fit` on the generated corpus: the
    loss must fall by 10% of its first logged value, with no host read between logging steps."""
    p = run.plan
    overrides = {"model.optim.warmup_steps": max(p.sanity_steps // 10, 1), "trainer.log_every_n_steps": p.log_every}
    path = run.write("sanity", run.config("sanity", overrides))
    s = load_settings([path], p.sanity_batch)
    run_dir = run.work / "sanity"
    free_memory(run.device)
    args = fit_args([path], s, run.corpus(), run_dir, run.device, p.sanity_steps)
    log = run.out / "sanity-fit.log"
    timing, reads, syncs = train_lightning(args, p.sanity_warmup, p.sanity_steps - p.sanity_warmup, log)
    free_memory(run.device)
    from lm.plot import read_metrics  # imports jsonargparse, as the Lightning path does

    losses = [(line["step"], line["train/loss"]) for line in read_metrics(run_dir) if "train/loss" in line]
    with torch.device("meta"):
        tokens_per_sec, mfu = speed(timing.step_s, s, GPT(s.config), run.peak_flops)
    falls = len(losses) >= 2 and losses[-1][1] <= 0.9 * losses[0][1]
    failures = []
    if not falls:
        failures.append(f"sanity: the loss did not fall by 10% in {p.sanity_steps} steps ({losses})")
    if reads["between_logging_steps"]:
        failures.append(f"sanity: {reads['between_logging_steps']} host reads between logging steps (0 expected)")
    return {
        "steps": p.sanity_steps,
        "batch_size": s.batch_size,
        "seq_len": s.seq_len,
        "losses": losses,
        "loss_falls": falls,
        "host_reads": reads,
        "cuda_syncs": syncs,
        "tokens_per_sec": tokens_per_sec,
        "mfu": mfu,
        "peak_memory_gb": timing.peak_memory_gb,
        "warmup_s": timing.warmup_s,
        "failures": failures,
    }


# ---- report --------------------------------------------------------------------------------------------

SECTIONS = {  # in the order they run: the checks first, the extendable cases last
    "correctness": ("3. Correctness on the device", correctness),
    "sanity": ("4. Training sanity run", sanity),
    "throughput": ("1. Throughput of the 124M configs", throughput),
    "cases": ("2. The modern block under named cases (plain loop)", cases),
}


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"


def number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(result: dict) -> str:
    """The markdown report: environment, then the sections in the issue's order."""
    env, sections = result["environment"], result["sections"]
    lines = [f"# lm gpu-check: {env['device']}, {env['date']}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value if value is not None else '-'} |" for key, value in env.items()]
    for key in ("throughput", "cases", "correctness", "sanity"):
        title = SECTIONS[key][0]
        section = sections.get(key)
        lines += ["", f"## {title}", ""]
        if section is None:
            lines.append("not run (left out with --only, or the command ended before it)")
            continue
        lines.append(f"{section['status']}, {section['seconds']:.0f} s of a {section['budget_s']} s budget")
        if "error" in section:
            lines += ["", f"error: {section['error']}"]
        else:
            lines += [""] + RENDERERS[key](section)
    lines += ["", "## Failures", ""]
    lines += [f"- {failure}" for failure in result["failures"]] or ["none"]
    lines += ["", f"{result['seconds']:.0f} s in all"]
    return "\n".join(lines) + "\n"


def render_throughput(section: dict) -> list[str]:
    lines = [
        "| config | micro-batch | path | tokens/s | MFU | step ms | peak mem GB | warm-up s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in section["rows"]:
        if row["status"] != "measured":
            lines.append(f"| {row['config']} | {row['status']} | | | | | | |")
            continue
        for path in ("lightning", "pytorch"):
            r = row[path]
            lines.append(
                f"| {row['config']} | {row['batch_size']} × {row['seq_len']} | {path} | {r['tokens_per_sec']:,.0f} | "
                f"{number(r['mfu'], '.1%')} | {r['step_ms']:.1f} | {number(r['peak_memory_gb'], '.1f')} | "
                f"{r['warmup_s']:.0f} |"
            )
    lines.append("")
    for row in section["rows"]:
        if row["status"] == "measured":
            reads = row["lightning"]["host_reads_in_timed_steps"]
            syncs = number(row["lightning"]["host_syncs_in_timed_steps"], "d")
            lines.append(
                f"- {row['config']}: Lightning overhead {row['lightning_overhead']:+.1%} "
                f"({row['lightning_overhead_ms']:+.2f} ms a step); host reads between logging steps "
                f"{reads['between_logging_steps']}, CUDA syncs {syncs}"
            )
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for t in section["targets"]:
        value = t["measured"]
        shown = "-" if value is None else f"{value:,.0f}" if value > 1 else f"{value:.1%}"
        lines.append(f"| {t['target']} | {shown} | {'-' if t['met'] is None else 'yes' if t['met'] else 'NO'} |")
    return lines


def render_cases(section: dict) -> list[str]:
    lines = [
        f"micro-batch {section['batch_size']} (one for every case)",
        "",
        "| case | status | tokens/s | MFU | step ms | optimizer step ms | peak mem GB | overrides |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in section["rows"]:
        overrides = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(none)"
        lines.append(
            f"| {r['case']} | {r['status']} | {number(r.get('tokens_per_sec'), ',.0f')} | "
            f"{number(r.get('mfu'), '.1%')} | {number(r.get('step_ms'), '.1f')} | "
            f"{number(r.get('optimizer_step_ms'), '.2f')} | {number(r.get('peak_memory_gb'), '.1f')} | {overrides} |"
        )
    return lines


def render_correctness(section: dict) -> list[str]:
    lines = ["| check | status | measured (relative error) | tolerance |", "|---|---|---|---|"]
    for r in section["rows"]:
        measured = ", ".join(f"{k} {v:.1e}" for k, v in r.get("measured", {}).items()) or "-"
        tolerance = ", ".join(f"{k} {v:.0e}" for k, v in r.get("tolerance", {}).items()) or "-"
        lines.append(f"| {r['check']} | {r['status']} | {measured} | {tolerance} |")
    return lines


def render_sanity(section: dict) -> list[str]:
    reads, losses = section["host_reads"], section["losses"]
    shown = losses[:: max(len(losses) // 10, 1)] + losses[-1:]  # about ten points and the last
    curve = ", ".join(f"{step}: {loss:.2f}" for step, loss in dict(shown).items())
    return [
        f"- {section['steps']} steps of {section['batch_size']} × {section['seq_len']} tokens; train/loss at "
        f"{curve or 'no step'}: {'falls' if section['loss_falls'] else 'DOES NOT FALL'} by 10%",
        f"- host reads between logging steps {reads['between_logging_steps']}, at each logging step "
        f"{', '.join(map(str, reads['per_logging_step'])) or '-'}; CUDA syncs in the timed steps "
        f"{number(section['cuda_syncs'], 'd')}",
        f"- {section['tokens_per_sec']:,.0f} tokens/s, MFU {number(section['mfu'], '.1%')}, peak memory "
        f"{number(section['peak_memory_gb'], '.1f')} GB, warm-up {section['warmup_s']:.0f} s",
    ]


RENDERERS = {
    "throughput": render_throughput,
    "cases": render_cases,
    "correctness": render_correctness,
    "sanity": render_sanity,
}


def write(run: Run, start: float) -> None:
    run.result["seconds"] = time.perf_counter() - start
    (run.out / "gpu-check.json").write_text(json.dumps(run.result, indent=2, default=str) + "\n")
    (run.out / "gpu-check.md").write_text(render(run.result))


# ---- the command ---------------------------------------------------------------------------------------


def check(device: str, tiny: bool, out: Path, expect_torch: str, only: list[str] | None = None) -> dict:
    """Every section (or `only` those), the files rewritten after each; the result, with its failures."""
    start = time.perf_counter()
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    out.mkdir(parents=True, exist_ok=True)
    plan = TINY_PLAN if tiny else Plan()
    with tempfile.TemporaryDirectory(prefix="lm-gpu-check-") as work:
        run = Run(torch_device, plan, tiny, Path(work), out, {"sections": {}, "failures": []})
        info = environment(torch_device, tiny)
        run.result.update(environment=info, failures=mismatches(info, expect_torch))
        write(run, start)
        for key, (title, section) in SECTIONS.items():
            if only and key not in only:
                continue
            print(f"gpu-check: {title} ...", flush=True)
            budget = plan.budgets[key]
            began = time.perf_counter()
            try:
                measured = section(run, Deadline(budget))
                status = "failed" if measured["failures"] else "ok"
            except Exception as err:  # a section's error must not lose the other sections
                traceback.print_exc()
                measured = {"error": one_line(err), "failures": [f"{key}: {one_line(err)}"]}
                status = "error"
            seconds = time.perf_counter() - began
            run.result["sections"][key] = {"status": status, "seconds": seconds, "budget_s": budget, **measured}
            run.result["failures"] += measured["failures"]
            write(run, start)
            print(f"gpu-check: {title}: {status} in {seconds:.0f} s", flush=True)
    return run.result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lm gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run (with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model and a few steps: every section, fast")
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu-check", help="folder for the results")
    parser.add_argument(
        "--expect_torch", default=DEVICE_TORCH, help="the torch build the GPU must run ('' accepts any)"
    )
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run only these sections")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initializes CUDA: every lm path then runs on the CPU
    out = Path(args.out)
    result = check(args.device, args.tiny, out, args.expect_torch, args.only)
    print(render(result))
    if result["failures"]:
        failures = " | ".join(result["failures"])
        raise UserError(f"gpu-check: {len(result['failures'])} failure(s): {failures} (see {out}/gpu-check.md)")
    print(f"gpu-check: all checks passed; wrote {out}/gpu-check.md and gpu-check.json")
