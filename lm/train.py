"""`python -m lm fit | validate | test`: LightningCLI with lm's run-directory, checkpoint and safety conventions.

Every Trainer, model and data setting is a config key (`--print_config` shows them all).
"""

from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lm.callbacks import default_callbacks
from lm.callbacks.checkpointing import Checkpoint
from lm.callbacks.nonfinite import NonFiniteGuard
from lm.callbacks.preemption import EXIT_PREEMPTED, PreemptionCheckpoint
from lm.checkpoint import load_checkpoint
from lm.data.datamodule import MixtureLogger, TokenDataModule
from lm.errors import UserError
from lm.module import LanguageModel


class LMCLI(LightningCLI):
    """Adds the run-directory conventions: everything a run writes lives under trainer.default_root_dir."""

    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        # Off unless every_n_train_steps > 0: step-<N>.ckpt every N steps (newest save_top_k kept), and last.ckpt.
        parser.add_lightning_class_args(Checkpoint, "periodic_checkpoint")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="Start afresh in a run directory that holds another run (its checkpoints, metrics and events go).",
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
        if ckpt_path not in (None, "last", "best", "hpc"):
            load_checkpoint(ckpt_path)  # one line if missing, truncated or needing pickle; Lightning reads it next

    def before_instantiate_classes(self):
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.logger in (None, True):
            # TensorBoard events, checkpoints/ and config.yaml all land directly in runs/<name>/.
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=config.trainer.default_root_dir or "runs/default", name="", version=""),
            )
        if config.trainer.plugins is None:
            config.trainer.plugins = Namespace(class_path="lm.callbacks.checkpointing.AtomicCheckpointIO")
        if config.get("weights_only") is None:
            config.weights_only = True  # also for --ckpt_path last/best/hpc, which Lightning resolves later
        if self.subcommand == "fit" and not config.ckpt_path:
            claim_run_dir(config)

    def before_fit(self):
        self.check_inputs("fit")

    def before_validate(self):
        self.check_inputs("validate")

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
    run_dir = Path(config.trainer.default_root_dir or "runs/default")
    found = Path(config.checkpoint.dirpath or run_dir / "checkpoints").glob("last*.ckpt")
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


def claim_run_dir(config) -> None:
    """Refuse a fresh run in a directory that holds another one (before any compute), or clear it on --overwrite."""
    run_dir = Path(config.trainer.default_root_dir or "runs/default")
    ckpt_dir = Path(config.checkpoint.dirpath or run_dir / "checkpoints")
    found = sorted(ckpt_dir.glob("*.ckpt")) + [p for p in [run_dir / "metrics.jsonl"] if p.is_file()]
    if not found:
        return
    if not config.overwrite:
        raise UserError(
            f"{run_dir} already holds a run ({found[0]}): continue it with --ckpt_path last, choose another "
            "trainer.default_root_dir, or pass --overwrite true to replace it"
        )
    old = [*ckpt_dir.glob("*.ckpt*"), *run_dir.glob("events.out.tfevents.*")]
    for path in old + [run_dir / name for name in ("metrics.jsonl", "run_summary.json", "hparams.yaml")]:
        path.unlink(missing_ok=True)


def main(args: list[str] | None) -> None:
    """Runs LightningCLI on `args` (None: sys.argv); a preempted run exits with EXIT_PREEMPTED."""
    try:
        run(args)
    except SIGTERMException:  # PreemptionCheckpoint saved last.ckpt; tell a requeue script to run us again
        raise SystemExit(EXIT_PREEMPTED) from None


def run(args: list[str] | None) -> None:
    LMCLI(
        LanguageModel,
        TokenDataModule,
        args=args,
        trainer_defaults={
            "callbacks": [
                LearningRateMonitor(logging_interval="step"),
                MixtureLogger(),
                *default_callbacks(),
                PreemptionCheckpoint(),
            ]
        },
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False},  # config errors raise ArgumentError: main prints them as one line
    )
