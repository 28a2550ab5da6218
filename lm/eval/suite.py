"""`python -m lm eval`: lm-evaluation-harness tasks on a checkpoint, and HarnessCallback, the same during training.

Design choices:
- lm-evaluation-harness is an optional extra: this module imports it (through lm.eval.harness) only when a command
  or callback runs, and its absence is one line saying how to install it.
- Results are the harness's own results dict (its table is printed), written as JSON to
  runs/<name>/eval/<checkpoint stem>.json for a checkpoint inside a run directory, else beside the checkpoint
  (`<path>.eval.json`), or to --out. A run's fit files are never touched, and an earlier result is never
  replaced without --overwrite; all of this is checked before the model is loaded.
- The callback runs the same function as the command (same tasks, limit, seeds), on the live model, splitting the
  requests across DDP ranks (see lm.eval.harness), with the global random state restored afterwards, so
  training continues exactly as it would have without it.
"""

import importlib
import time
from pathlib import Path
from types import ModuleType

import lightning as L
from jsonargparse import CLI
from lightning.pytorch.utilities.seed import isolate_rng

from lm.checkpoint import Weights
from lm.errors import UserError
from lm.eval.results import mean_accuracy, metric_values
from lm.files import write_atomic

INSTALL = 'lm-evaluation-harness is not installed: pip install -e ".[eval]"'


def import_harness() -> ModuleType:
    """lm.eval.harness (which registers the "lm" model), or a UserError saying how to install the harness."""
    try:
        return importlib.import_module("lm.eval.harness")
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] == "lm_eval":
            raise UserError(INSTALL) from None
        raise


def split_tasks(tasks: str | list[str]) -> list[str]:
    names = tasks.split(",") if isinstance(tasks, str) else tasks
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise UserError("--tasks names no task (e.g. --tasks hellaswag,arc_easy)")
    return names


def default_out(ckpt_path: str, weights: Weights = "raw") -> Path:
    """runs/<name>/eval/<stem>.json for runs/<name>/checkpoints/<stem>.ckpt, else <checkpoint>.eval.json beside it
    (<stem>.ema.json and <checkpoint>.ema.eval.json for the averaged weights)."""
    path, suffix = Path(ckpt_path), ".ema" if weights == "ema" else ""
    if path.parent.name == "checkpoints":
        return path.parent.parent / "eval" / f"{path.stem}{suffix}.json"
    return path.parent / f"{path.stem if path.is_file() else path.name}{suffix}.eval.json"


def evaluate(
    ckpt_path: str,
    tasks: str,
    limit: int | float | None = None,
    batch_size: int = 16,
    device: str | None = None,
    include_path: str | None = None,
    num_fewshot: int | None = None,
    dtype: str = "float32",
    out: str | None = None,
    overwrite: bool = False,
    weights: Weights = "raw",
) -> dict:
    """Score a checkpoint on lm-evaluation-harness tasks; print the harness's table and write its results as JSON.

    Args:
        ckpt_path: An lm checkpoint (.ckpt) or a Hugging Face model directory.
        tasks: Comma-separated harness task (or group) names, e.g. hellaswag,arc_easy,arc_challenge,piqa.
        limit: Only the first N examples of each task (a number below 1: that fraction of each task).
        batch_size: Sequences per forward pass.
        device: cuda, cuda:1, cpu... (default: cuda if available).
        include_path: A directory of your own task YAML files (e.g. tasks reading local data files).
        num_fewshot: Examples shown before each question (default: each task's own setting, mostly 0).
        dtype: float32, or bfloat16 / float16 (autocast; faster on GPUs, not bit-comparable).
        out: Where to write the JSON (default: runs/<name>/eval/<checkpoint stem>.json for a checkpoint of a run).
        overwrite: Replace an existing result file.
        weights: raw: the trained weights; ema: their moving average (a checkpoint of a run with ema.start_step).
    """
    harness = import_harness()
    names = split_tasks(tasks)
    if not Path(ckpt_path).exists():
        raise UserError(f"checkpoint not found: {ckpt_path}")
    out_path = Path(out) if out else default_out(ckpt_path, weights)
    if out_path.exists() and not overwrite:
        raise UserError(f"{out_path} exists (an earlier evaluation): pass --out elsewhere or --overwrite true")
    manager = harness.task_manager(names, include_path)
    lm = harness.HarnessModel(ckpt_path=ckpt_path, batch_size=batch_size, device=device, dtype=dtype, weights=weights)
    start = time.perf_counter()
    results = harness.run_tasks(lm, names, manager, limit=limit, num_fewshot=num_fewshot)
    results["total_evaluation_time_seconds"] = round(time.perf_counter() - start, 1)
    print(harness.results_table(results))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_path, harness.results_json(results).encode())
    print(f"wrote {out_path} ({results['total_evaluation_time_seconds']} s)")
    return results


class HarnessCallback(L.Callback):
    """Runs lm-evaluation-harness tasks at the end of every `every_n_validations`-th validation.

    Logs `eval/<task>/<metric>` (a filter other than "none" is appended: `eval/gsm8k/exact_match/strict-match`),
    `eval/mean_acc` (mean over tasks of acc_norm where a task reports it, else acc) and `eval/seconds` (the
    wall time of the call) next to val/loss: TensorBoard, metrics.jsonl, and ModelCheckpoint's `monitor`.
    Under DDP and FSDP each rank scores an equal share of the requests and all ranks gather every score, so the
    values equal a single-process `python -m lm eval` of the same weights; under FSDP the ranks first gather the
    whole model (`LanguageModel.full_model`).
    """

    def __init__(
        self,
        tasks: list[str],
        every_n_validations: int = 1,
        limit: int | float | None = 500,
        batch_size: int = 16,
        include_path: str | None = None,
        num_fewshot: int | None = None,
    ):
        """
        Args:
            tasks: Harness task (or group) names.
            every_n_validations: Run at every N-th validation of a fit (always in `validate`).
            limit: Only the first N examples of each task (null: all of them).
            batch_size: Sequences per forward pass.
            include_path: A directory of your own task YAML files (e.g. tasks reading local data files).
            num_fewshot: Examples shown before each question (default: each task's own setting).
        """
        if every_n_validations < 1:
            raise UserError(f"HarnessCallback every_n_validations must be ≥ 1, got {every_n_validations}")
        self.tasks, self.every_n_validations, self.limit = split_tasks(tasks), every_n_validations, limit
        self.batch_size, self.include_path, self.num_fewshot = batch_size, include_path, num_fewshot
        self.validations = 0
        self.harness: ModuleType | None = None
        self.manager = None

    def state_dict(self) -> dict:
        return {"validations": self.validations}

    def load_state_dict(self, state: dict) -> None:
        self.validations = state["validations"]

    def setup(self, trainer, pl_module, stage):
        self.harness = import_harness()
        self.manager = self.harness.task_manager(self.tasks, self.include_path)  # unknown tasks fail here

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self.validations += 1
        if trainer.state.fn == "fit" and self.validations % self.every_n_validations:
            return
        start = time.perf_counter()
        lm = self.harness.HarnessModel(
            model=pl_module.full_model(trainer.strategy),  # under FSDP the gathered weights (a collective)
            batch_size=self.batch_size,
            shard=(trainer.global_rank, trainer.world_size),
            progress=False,
        )
        with isolate_rng():
            results = self.harness.run_tasks(
                lm, self.tasks, self.manager, limit=self.limit, num_fewshot=self.num_fewshot, bootstrap_iters=0
            )
        metrics = None
        if results is not None:  # the harness returns results on local rank 0 only; every rank computed the same
            metrics = metric_values(results)
            if (mean := mean_accuracy(results)) is not None:
                metrics["mean_acc"] = mean
        metrics = trainer.strategy.broadcast(metrics, src=0)
        metrics["seconds"] = time.perf_counter() - start
        for name, value in metrics.items():  # equal on all ranks (the seconds nearly): the mean changes nothing
            pl_module.log(f"eval/{name}", value, sync_dist=True)


def main(argv: list[str]) -> dict:
    return CLI(evaluate, args=argv, as_positional=False, prog="python -m lm eval")
