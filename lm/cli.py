"""`python -m lm <command>`: one module per command, each with a `main(argv)`, imported only when used.

fit / validate / test go through LightningCLI (lm/train.py); the other commands do not import Lightning.
"""

import importlib
import sys
from argparse import ArgumentError

from lm.errors import UserError

COMMANDS = {
    "prepare": "lm.data.prepare",
    "generate": "lm.generate",
    "hellaswag": "lm.eval.hellaswag",
    "eval": "lm.eval.suite",
    "export": "lm.interop.export",
    "plot": "lm.plot",
    "bench": "lm.bench",
    "experiment": "lm.experiment",
}


def one_line(message: str) -> str:
    """jsonargparse's multi-line explanation of a bad key or value, without the type dumps, on one line."""
    noise = ("Subtypes:", "Given value", "Errors:", "- Expected a <class 'NoneType'>")
    return " ".join(line.strip() for line in message.splitlines() if not line.strip().startswith(noise))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args and args[0] in COMMANDS:
            importlib.import_module(COMMANDS[args[0]]).main(args[1:])
        else:
            importlib.import_module("lm.train").main(argv)  # None: LightningCLI reads sys.argv itself
    except UserError as err:
        sys.exit(f"error: {err}")
    except ArgumentError as err:
        from lm.optim.config import renamed_key_error  # here: the commands that do not parse configs skip torch

        renamed = renamed_key_error(str(err))
        sys.exit(f"error: {renamed}" if renamed else f"error: {one_line(str(err))} (--help lists the options)")
