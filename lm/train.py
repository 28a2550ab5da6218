"""`python -m lm fit | validate | test`: LightningCLI with lm's run-directory, checkpoint and safety conventions.

Every Trainer, model and data setting is a config key (`--print_config` shows them all).

The run directory belongs to `fit`: its config.yaml, TensorBoard events, metrics.jsonl and checkpoints/.
`validate` and `test` of a checkpoint log into `<run>/<command>/<checkpoint name>/` (their own events, at the
checkpoint's step, their config.yaml and a metrics.json), so they never rewrite the fit's curves or the config
that reruns it.
"""

import json
import logging
import uuid
import warnings
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lm.callbacks import RunSummaryCallback, SampleCallback, ThroughputCallback
from lm.callbacks.averaging import ExponentialMovingAverage
from lm.callbacks.checkpointing import AtomicCheckpointIO, Checkpoint
from lm.callbacks.diagnostics import TrainingDiagnostics
from lm.callbacks.final_validation import FinalValidation
from lm.callbacks.nonfinite import NonFiniteGuard
from lm.callbacks.preemption import EXIT_PREEMPTED, PreemptionCheckpoint
from lm.callbacks.progress import StepProgressBar
from lm.callbacks.run_summary import scalars
from lm.callbacks.spikes import LossSpikeDetector
from lm.checkpoint import Weights, load_checkpoint
from lm.data.datamodule import MixtureLogger, TokenDataModule
from lm.errors import UserError
from lm.files import write_atomic
from lm.module import MUON_UNDER_FSDP, LanguageModel
from lm.optim.config import migrate_hparams

HELP = (
    "{what} More than 1,000 options follow: `python -m lm {command} --config X.yaml --print_config` prints "
    "the resolved config instead (every key with its value), configs/ holds examples, README.md (Training, "
    "The run directory, Troubleshooting) and docs/ explain them."
)
SUBCOMMANDS = {
    "fit": "Train a model, or resume one with --ckpt_path last.",
    "validate": "Val loss, ppl and bits-per-byte of a checkpoint (--ckpt_path) on the config's data.",
    "test": "Not available: lm's prepared data has no test split; python -m lm validate measures the val split.",
}


class LMCLI(LightningCLI):
    """Adds the run-directory conventions: everything a run writes lives under trainer.default_root_dir."""

    print_results = True  # validate/test: lm's table of the results (config.verbose), not Lightning's

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's, without `predict` (LanguageModel has no predict_step: `generate` is lm's inference)."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in SUBCOMMANDS}

    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        # Off unless every_n_train_steps > 0: step-<N>.ckpt every N steps (newest save_top_k kept), and last.ckpt.
        parser.add_lightning_class_args(Checkpoint, "periodic_checkpoint")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        # Off by default; after nonfinite (a skipped spike joins the guard's found_inf): --spikes.threshold 6 ...
        parser.add_lightning_class_args(LossSpikeDetector, "spikes")
        parser.add_lightning_class_args(ExponentialMovingAverage, "ema")  # off unless --ema.start_step is set
        parser.add_lightning_class_args(TrainingDiagnostics, "diagnostics")  # --diagnostics.enabled true
        parser.add_lightning_class_args(SampleCallback, "samples")  # --samples.every_n_steps, --samples.prompts ...
        parser.add_argument(
            "--wandb_project",
            type=str | None,
            default=None,
            help="fit: also log to Weights & Biases, into this project, beside TensorBoard (pip install -e "
            "'.[wandb]'; WANDB_MODE=offline needs no network). A resumed run continues the same W&B run.",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="Start afresh in a run directory that holds another run (its checkpoints, metrics and events go).",
        )
        parser.add_argument(
            "--weights",
            type=Weights,
            default="raw",
            help="validate/test: evaluate the checkpoint's trained weights (raw) or their moving average (ema).",
        )
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.filename": "best",
                "checkpoint.save_last": True,
                "checkpoint.auto_insert_metric_name": False,
                # Stable names (best.ckpt, last.ckpt): both callbacks write last.ckpt, neither as last-v1.ckpt.
                "checkpoint.enable_version_counter": False,
                "periodic_checkpoint.every_n_train_steps": 0,
                "periodic_checkpoint.monitor": "step",
                "periodic_checkpoint.mode": "max",
                "periodic_checkpoint.save_top_k": 3,
                "periodic_checkpoint.filename": "step-{step:07d}",
                "periodic_checkpoint.save_last": True,
                "periodic_checkpoint.auto_insert_metric_name": False,
                "periodic_checkpoint.enable_version_counter": False,
            }
        )

    def parse_arguments(self, parser, args):
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if subcommand in ("validate", "test") and ckpt_path in ("last", "best"):
            # Lightning knows "best" only within the process that ran fit: here both name the run's files.
            ckpt_path = self.config[subcommand].ckpt_path = str(named_checkpoint(self.config[subcommand], ckpt_path))
        if ckpt_path not in (None, "last", "best", "hpc"):
            load_checkpoint(ckpt_path)  # one line if missing, truncated or needing pickle; Lightning reads it next

    def _parse_ckpt_path(self):
        """Lightning's (the checkpoint's hyper-parameters become the model's config), for a checkpoint written before
        model.optim existed too: its flat optimizer keys are moved into model.optim first."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            hparams = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters")
            if hparams and migrate_hparams(hparams) is not hparams:
                model = {k: v for k, v in migrate_hparams(hparams).items() if k != "_instantiator"}
                self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)
                return
        super()._parse_ckpt_path()

    def before_instantiate_classes(self):
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "fit" and config.weights != "raw":
            raise UserError("--weights applies to validate and test; fit resumes from the trained weights")
        if config.trainer.plugins is None:
            config.trainer.plugins = Namespace(class_path="lm.callbacks.checkpointing.AtomicCheckpointIO")
        if config.get("weights_only") is None:
            config.weights_only = True  # also for --ckpt_path last/best/hpc, which Lightning resolves later
        if self.subcommand == "fit" and not config.ckpt_path:
            claim_run_dir(config)
        if self.subcommand in ("validate", "test"):
            # Lightning's table has a column per val dataloader (one per source of a mixture), each holding the same
            # mixture-wide values: write_results prints one column instead.
            self.print_results, config.verbose = config.verbose, False
        if self.subcommand == "fit" and config.ckpt_path == "last" and checkpoint_to_resume(config) is None:
            # The first start of a run that a requeue script resumes: Lightning would warn with a HINT about save_last.
            rank_zero_info(f"no checkpoint in {checkpoint_dir(config)}: starting from scratch")
            config.ckpt_path = None
        strategy = str(getattr(config.trainer.strategy, "class_path", config.trainer.strategy)).lower()
        if self.subcommand == "fit" and config.model.optim.name == "muon" and "fsdp" in strategy:
            raise UserError(MUON_UNDER_FSDP)  # before Lightning's own checks of the strategy (it needs GPUs)

    def instantiate_trainer(self, **kwargs):
        """The Trainer, with lm's defaults where the config leaves a choice open (and config.yaml keeps it open, so
        the saved config reruns in another directory too): TensorBoard logging into the run directory, and the
        step-counting progress bar unless the config brings its own or turns it off."""
        config = self.config_init[self.subcommand]
        if config.trainer.logger in (None, True):
            # fit: events, checkpoints/ and config.yaml land directly in runs/<name>/; validate and test in a
            # sub-directory (see the module docstring). Checkpoints stay in runs/<name>/checkpoints either way.
            run_dir, sub_dir = Path(config.trainer.default_root_dir or "runs/default"), None
            if self.subcommand in ("validate", "test"):
                run_dir, sub_dir = evaluation_dir(self.subcommand, config)
            # No hp_metric: the tag Lightning adds for a metric lm never logs into it.
            logger = TensorBoardLogger(save_dir=run_dir, name="", version="", sub_dir=sub_dir, default_hp_metric=False)
            wandb = wandb_logger(config, run_dir) if self.subcommand == "fit" and config.wandb_project else None
            kwargs.setdefault("logger", [logger, wandb] if wandb else logger)
        callbacks = config.trainer.callbacks or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if config.trainer.enable_progress_bar is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs.setdefault("callbacks", [*callbacks, StepProgressBar()])
        trainer = super().instantiate_trainer(**kwargs)
        # Off (the default): not even in the loop, where Lightning calls every callback's hooks at every step.
        off = [c for c in (config.spikes, config.ema, config.diagnostics) if not c.enabled]
        if not self.config[self.subcommand].periodic_checkpoint.every_n_train_steps:
            off.append(config.periodic_checkpoint)
        trainer.callbacks = [c for c in trainer.callbacks if not any(c is o for o in off)]
        weights = self.config[self.subcommand].weights
        if isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            trainer.strategy.checkpoint_io.weights = weights  # validate/test --weights ema: the average is loaded
        elif weights != "raw":
            raise UserError(
                "--weights ema needs lm's checkpoint plugin (lm.callbacks.checkpointing.AtomicCheckpointIO)"
            )
        return trainer

    def before_fit(self):
        self.check_inputs("fit")

    def after_fit(self):
        """The run's summary (run_summary.json) into the W&B run's summary, beside its last metrics; then the W&B run
        ends (a process that fits again, as the tests do, starts or resumes another)."""
        wandb = next((lg for lg in self.trainer.loggers if type(lg).__name__ == "WandbLogger"), None)
        if wandb is None or not self.trainer.is_global_zero:
            return
        summary = Path(self.trainer.default_root_dir) / "run_summary.json"
        if summary.is_file():
            wandb.experiment.summary.update({"run_summary": json.loads(summary.read_text())})
        wandb.experiment.finish()

    def before_validate(self):
        self.check_inputs("validate")

    def after_validate(self):
        self.write_results()

    def before_test(self):
        raise UserError(
            "python -m lm test needs a test split, which lm's prepared data does not have (prepare writes train and "
            "val): use python -m lm validate"
        )

    def after_test(self):
        self.write_results()

    def write_results(self) -> None:
        """metrics.json beside the events of a validate/test run: what it measured, of which checkpoint and step."""
        trainer = self.trainer
        if trainer.is_global_zero:
            config = self.config[self.subcommand]
            metrics = scalars(trainer.callback_metrics, keep=lambda name: name != "step")
            results = {"ckpt_path": config.ckpt_path, "step": self.model.checkpoint_step, "metrics": metrics}
            write_atomic(Path(trainer.log_dir) / "metrics.json", (json.dumps(results, indent=2) + "\n").encode())
            if self.print_results:
                width = max(map(len, metrics), default=0)
                print("\n".join(f"{name:<{width}}  {value:.6g}" for name, value in metrics.items()))

    def check_inputs(self, stage: str) -> None:
        """Open and check the data against the model, and a resumed run's data against its checkpoint, before the
        Trainer writes anything (events, config.yaml)."""
        self.datamodule.setup(stage)
        self.model.check_data(self.datamodule)
        resumed = checkpoint_to_resume(self.config[self.subcommand]) if stage == "fit" else None
        if resumed is not None and hasattr(self.datamodule, "check_resume"):
            self.datamodule.check_resume(load_checkpoint(resumed).get(type(self.datamodule).__qualname__))


def checkpoint_to_resume(config) -> Path | None:
    """The file fit's `--ckpt_path` resumes from: a path, or for "last" the newest last*.ckpt of the run (if any)."""
    if config.ckpt_path in (None, "best", "hpc"):
        return None
    if config.ckpt_path != "last":
        return Path(config.ckpt_path)
    found = checkpoint_dir(config).glob("last*.ckpt")
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


def named_checkpoint(config, name: str) -> Path:
    """The run's best.ckpt, or its newest last*.ckpt, for validate and test; one line if there is none."""
    folder = checkpoint_dir(config)
    found = [folder / "best.ckpt"] if name == "best" else list(folder.glob("last*.ckpt"))
    found = [path for path in found if path.is_file()]
    if not found:
        raise UserError(
            f"--ckpt_path {name}: no {name}.ckpt in {folder} (trainer.default_root_dir or checkpoint.dirpath names the "
            "run); pass the checkpoint's path instead"
        )
    return max(found, key=lambda path: path.stat().st_mtime)


def checkpoint_dir(config) -> Path:
    return Path(config.checkpoint.dirpath or Path(config.trainer.default_root_dir or "runs/default") / "checkpoints")


def claim_run_dir(config) -> None:
    """Refuse a fresh run in a directory that holds another one (before any compute), or clear it on --overwrite."""
    run_dir, ckpt_dir = Path(config.trainer.default_root_dir or "runs/default"), checkpoint_dir(config)
    found = sorted(ckpt_dir.glob("*.ckpt")) + [p for p in [run_dir / "metrics.jsonl"] if p.is_file()]
    if not found:
        return
    if not config.overwrite:
        raise UserError(
            f"{run_dir} already holds a run ({found[0]}): continue it with --ckpt_path last, choose another "
            "trainer.default_root_dir, or pass --overwrite true to replace it"
        )
    old = [*ckpt_dir.glob("*.ckpt*"), *run_dir.glob("events.out.tfevents.*")]
    for path in old + [run_dir / name for name in ("metrics.jsonl", "run_summary.json", "hparams.yaml", WANDB_ID)]:
        path.unlink(missing_ok=True)


WANDB_ID = "wandb_id"  # in the run directory: the W&B run a resumed fit continues


def wandb_logger(config, run_dir: Path):
    """Lightning's WandbLogger for fit (beside TensorBoard: the same metrics at the same steps), with the run's config;
    its W&B run id is kept in <run>/wandb_id, so a resume (--ckpt_path last) continues that W&B run."""
    try:
        import wandb  # noqa: F401  (WandbLogger imports it only once the run starts: fail here, before any work)
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:
        raise UserError('--wandb_project needs wandb: pip install -e ".[wandb]" (or pip install wandb)') from None
    id_file = run_dir / WANDB_ID
    if not id_file.is_file() and rank_zero_only.rank == 0:  # other ranks log nothing to W&B
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(id_file, uuid.uuid4().hex[:8].encode())  # a W&B run id: 8 lowercase letters and digits
    run_config = {key: value for key, value in config.as_dict().items() if key not in ("ckpt_path", "overwrite")}
    return WandbLogger(
        project=config.wandb_project,
        name=run_dir.name,
        id=id_file.read_text().strip() if id_file.is_file() else None,
        resume="allow",
        save_dir=str(run_dir),
        config=run_config,
    )


def evaluation_dir(subcommand: str, config) -> tuple[Path, str]:
    """(run directory, sub-directory) where `validate`/`test` log: <run>/<command>/<checkpoint name>.

    The run is the checkpoint's when it sits in a run's checkpoints/ folder, else trainer.default_root_dir;
    without a checkpoint (the initial or init_from weights) the name is "initial".
    """
    run_dir, ckpt = Path(config.trainer.default_root_dir or "runs/default"), config.ckpt_path
    if ckpt and Path(ckpt).parent.name == "checkpoints":
        run_dir = Path(ckpt).parent.parent
    return run_dir, f"{subcommand}/{Path(ckpt).stem if ckpt else 'initial'}"


class SaveRunConfig(SaveConfigCallback):
    """config.yaml of the run: what it trains, not how this session was started.

    `ckpt_path` and `overwrite` are left out, so `python -m lm fit --config runs/<name>/config.yaml` reruns the
    run from its start after a resume too (and `--ckpt_path last` continues it).
    """

    def __init__(self, parser, config, *args, **kwargs):
        config = config.clone()
        config.ckpt_path, config.overwrite = None, False
        super().__init__(parser, config, *args, **kwargs)


def quiet_console() -> None:
    """Drop the messages that lm's users would see on every command and cannot act on: Lightning's tips for its
    cloud services, a deprecation inside Lightning's own use of torch's pytree, and Lightning's warning that a
    resumed run's checkpoint directory is not empty (lm checks the run directory itself: see claim_run_dir); and
    Lightning's lines about signals, which PreemptionCheckpoint replaces: "Received SIGTERM" (also for a Ctrl-C or
    SIGUSR1, when the step is over) and "attempting graceful shutdown" on a second Ctrl-C; and LightningCLI's warning
    that it was given both `args` and a command line (lm.cli passes the command line as `args`), and torch's that the
    LR schedule stepped before the optimizer, which a 16-mixed GradScaler's skipped first steps cause."""
    dropped = ("💡 Tip:", "Received SIGTERM: ", "Detected KeyboardInterrupt")
    for handler in logging.getLogger("lightning.pytorch").handlers:
        handler.addFilter(lambda record: not any(text in record.getMessage() for text in dropped))
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # lm.cli hands LightningCLI the command line it read (negative numbers joined to their keys): not a mistake.
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    # fp16: the GradScaler skips the first steps while it finds its scale, and torch then warns the schedule ran ahead.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")


def main(args: list[str] | None) -> None:
    """Runs LightningCLI on `args` (None: sys.argv); a preempted run exits with EXIT_PREEMPTED."""
    try:
        run(args)
    except SIGTERMException:  # PreemptionCheckpoint saved last.ckpt (preemption or Ctrl-C); the run can continue
        raise SystemExit(EXIT_PREEMPTED) from None


def run(args: list[str] | None, callbacks: tuple = ()) -> LMCLI:
    """LightningCLI on `args`, with lm's default callbacks and any extra `callbacks` (the benchmark's timer)."""
    quiet_console()
    # PreemptionCheckpoint before RunSummaryCallback: on a preemption the summary is written after last.ckpt.
    defaults = [MixtureLogger(), ThroughputCallback(), FinalValidation(), PreemptionCheckpoint(), RunSummaryCallback()]
    defaults += callbacks
    return LMCLI(
        LanguageModel,
        TokenDataModule,
        args=args,
        # No model summary: its FLOPs column is 0 without an example input (and it warns under 16-mixed); the
        # module prints the parameter count and token budget instead.
        trainer_defaults={"callbacks": defaults, "enable_model_summary": False},
        save_config_callback=SaveRunConfig,
        auto_configure_optimizers=False,  # the optimizer is model.optim, not LightningCLI's --optimizer
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "prog": "python -m lm",
            "exit_on_error": False,  # errors raise ArgumentError: one line in main
            **{  # `--help` of each: a short usage and where to look first, before the 1,000 options
                command: {
                    "usage": f"python -m lm {command} [--config X.yaml] [options]",
                    "description": HELP.format(what=what, command=command),
                }
                for command, what in SUBCOMMANDS.items()
            },
        },
    )
