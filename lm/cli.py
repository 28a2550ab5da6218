"""`python -m lm <command>`: Lightning's CLI for training commands, plain functions for the rest.

fit / validate / test go through LightningCLI, so every Trainer, model and data setting is a config key
(`--print_config` shows them all). The other commands are one module each, with a `main(argv)`.
"""

import importlib
import sys

from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from lm.errors import UserError

COMMANDS = {
    "prepare": "lm.data.prepare",
    "generate": "lm.generate",
    "hellaswag": "lm.eval.hellaswag",
    "export": "lm.interop.export",
    "plot": "lm.plot",
    "bench": "lm.bench",
}


class LMCLI(LightningCLI):
    """Adds the run-directory conventions: everything a run writes lives under trainer.default_root_dir."""

    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.filename": "best",
                "checkpoint.save_last": True,
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def before_instantiate_classes(self):
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.logger in (None, True):
            # TensorBoard events, checkpoints/ and config.yaml all land directly in runs/<name>/.
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=config.trainer.default_root_dir or "runs/default", name="", version=""),
            )


def run_lightning(args: list[str] | None) -> None:
    from lm.callbacks import default_callbacks
    from lm.data.datamodule import MixtureLogger, TokenDataModule
    from lm.module import LanguageModel

    LMCLI(
        LanguageModel,
        TokenDataModule,
        args=args,
        trainer_defaults={
            "callbacks": [LearningRateMonitor(logging_interval="step"), MixtureLogger(), *default_callbacks()]
        },
        save_config_kwargs={"overwrite": True},
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args and args[0] in COMMANDS:
            importlib.import_module(COMMANDS[args[0]]).main(args[1:])
        else:
            run_lightning(argv)  # None: LightningCLI reads sys.argv itself
    except UserError as err:
        sys.exit(f"error: {err}")
