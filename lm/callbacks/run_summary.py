"""What a run did, in two files of its run directory that need no TensorBoard to read.

- metrics.jsonl: one JSON line per logging step (every `trainer.log_every_n_steps` optimizer steps) with
  the step, tokens seen, learning rate and every scalar logged in training (train/*, perf/*), and one line
  after each validation with val/* and eval/* metrics. Lines are appended, so a resumed run continues the
  file (steps replayed after a crash appear twice; `python -m lm plot` keeps the later ones).
- run_summary.json: parameters, steps and tokens trained, the step the newest checkpoint holds (`checkpoint_step`:
  where `--ckpt_path last` continues; behind `step` after a crash or a second Ctrl-C, null before the first
  checkpoint), best validation loss/ppl/bpb and its step, wall time, mean throughput, lineage (continued
  pretraining), the share of tokens BOS-aligned packing used and cropped, latest text samples, and everything that
  decides a CPU result: the resolved config, the git commit (and whether the tree had uncommitted changes), the
  versions of python, torch, lightning and lm, the device, the thread count and the deterministic-algorithms setting
  (lm.provenance).
  Rewritten atomically after each validation and at the end, so a crashed run still has one.

Rank 0 writes; the state needed to continue the summary (best, wall time) is saved in checkpoints.
"""

import json
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from lm.callbacks.samples import SampleCallback
from lm.files import write_atomic
from lm.provenance import environment, git_state


def scalars(metrics: dict, keep) -> dict[str, float]:
    """The single-number metrics whose names pass `keep`, as floats."""
    return {
        name: float(value)
        for name, value in metrics.items()
        if keep(name) and (isinstance(value, int | float) or (torch.is_tensor(value) and value.numel() == 1))
    }


def packing(datamodule) -> dict:
    """{"data_packing": the share of training tokens rows use and crop} for BOS-aligned rows; {} otherwise."""
    stats = datamodule.packing_stats() if hasattr(datamodule, "packing_stats") else {}
    if not stats:
        return {}
    return {"data_packing": {name.removeprefix("data/packing/"): value for name, value in stats.items()}}


def is_eval_metric(name: str) -> bool:
    return name.startswith(("val/", "eval/"))


class RunSummaryCallback(L.Callback):
    """Writes metrics.jsonl and run_summary.json in the run directory (trainer.log_dir).

    Put it after ThroughputCallback in trainer.callbacks, so each line carries that step's perf/* metrics.
    """

    def __init__(self):
        self.best: dict | None = None  # {"step", "tokens", "val/loss", "val/ppl", "val/bpb"}
        self.earlier_seconds = 0.0  # wall time of earlier sessions of a resumed run
        self.throughput = [0.0, 0]  # sum and count of the logged perf/tokens_per_sec
        self.run_dir: Path | None = None
        self.start: float | None = None
        self.last_step = 0
        self.checkpoint_step: int | None = None  # the step the newest checkpoint holds
        self.before_validation: dict = {}
        self.provenance: dict = {}
        self.config: dict | None = None  # the resolved config of the run (config.yaml), when the CLI wrote one

    def state_dict(self) -> dict:
        return {"best": self.best, "wall_time_s": self.wall_time(), "throughput": self.throughput}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.earlier_seconds, self.throughput = state["best"], state["wall_time_s"], state["throughput"]

    def wall_time(self) -> float:
        return self.earlier_seconds + (time.time() - self.start if self.start else 0.0)

    def on_fit_start(self, trainer, pl_module):
        self.start = time.time()
        self.run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.provenance = {**git_state(), **environment(pl_module.device)}
            config = self.run_dir / "config.yaml"  # written by the CLI at setup, before this hook
            self.config = yaml.safe_load(config.read_text()) if config.is_file() else None

    def on_train_start(self, trainer, pl_module):
        self.last_step = trainer.global_step  # after a resume, the restored step
        self.checkpoint_step = trainer.global_step if trainer.ckpt_path else None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.checkpoint_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if not trainer.is_global_zero or step == self.last_step or step % trainer.log_every_n_steps:
            return
        self.last_step = step
        metrics = scalars(trainer.callback_metrics, keep=lambda name: name != "step" and not is_eval_metric(name))
        if "perf/tokens_per_sec" in metrics:
            self.throughput = [self.throughput[0] + metrics["perf/tokens_per_sec"], self.throughput[1] + 1]
        self.append_line(trainer, pl_module, metrics)

    def on_validation_start(self, trainer, pl_module):
        self.before_validation = dict(trainer.callback_metrics)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        # callback_metrics keeps values of earlier validations: a metric not logged this time is the same object.
        fresh = {k: v for k, v in trainer.callback_metrics.items() if v is not self.before_validation.get(k)}
        metrics = scalars(fresh, keep=is_eval_metric)
        line = self.append_line(trainer, pl_module, metrics)
        if "val/loss" in metrics and (self.best is None or metrics["val/loss"] < self.best["val/loss"]):
            self.best = {key: line.get(key) for key in ("step", "tokens", "val/loss", "val/ppl", "val/bpb")}
        self.write_summary(trainer, pl_module, finished=False)

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.write_summary(trainer, pl_module, finished=True)

    def on_exception(self, trainer, pl_module, exception):
        if trainer.is_global_zero and self.run_dir is not None:
            self.write_summary(trainer, pl_module, finished=False)

    def append_line(self, trainer, pl_module, metrics: dict) -> dict:
        line = {"step": trainer.global_step, "tokens": pl_module.tokens_seen(trainer.global_step), **metrics}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        return line

    def write_summary(self, trainer, pl_module, finished: bool) -> None:
        samples = next((cb.samples for cb in trainer.callbacks if isinstance(cb, SampleCallback)), [])
        total, count = self.throughput
        summary = {
            "finished": finished,
            "step": trainer.global_step,
            "checkpoint_step": self.checkpoint_step,
            "tokens_seen": pl_module.tokens_seen(trainer.global_step),
            "params": pl_module.model.num_params(),
            "non_embedding_params": pl_module.model.num_params(non_embedding=True),
            "flops": pl_module.tokens_seen(trainer.global_step) * pl_module.flops_per_token(),  # spent
            "best_val": self.best,
            "wall_time_s": round(self.wall_time(), 1),
            "mean_tokens_per_sec": total / count if count else None,
            "lineage": pl_module.lineage,
            **packing(trainer.datamodule),
            "final_samples": samples,
            "config": self.config,
            **self.provenance,
        }
        write_atomic(self.run_dir / "run_summary.json", (json.dumps(summary, indent=2) + "\n").encode())
