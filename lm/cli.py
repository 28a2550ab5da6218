"""`python -m lm <command>`: one module per command, each with a `main(argv)`, imported only when used.

fit / validate / test go through LightningCLI (lm/train.py); the other commands do not import Lightning.
`python -m lm` (or `--help`) lists the commands, one line each.
"""

import importlib
import re
import sys
from argparse import ArgumentError

from lm.errors import UserError

LIGHTNING = ("fit", "validate", "test")  # LightningCLI's subcommands, all in lm.train
COMMANDS = {  # name: (module, what it does)
    "prepare": ("lm.data.prepare", "text (hub corpora, local files, python-docs) → token shards + manifest.json"),
    "fit": ("lm.train", "train or resume a model; every Trainer, model and data setting is a config key"),
    "validate": ("lm.train", "val loss / ppl / bits-per-byte of a checkpoint"),
    "test": ("lm.train", "not available: prepared data has a train and a val split only (use validate)"),
    "generate": ("lm.generate", "stream text from a checkpoint or Hugging Face directory (KV cache)"),
    "eval": ("lm.eval.suite", "lm-evaluation-harness tasks on a checkpoint: table + JSON"),
    "hellaswag": ("lm.eval.hellaswag", "HellaSwag acc / acc_norm with lm's own scorer"),
    "export": ("lm.interop.export", "a checkpoint → a Hugging Face transformers directory"),
    "plot": ("lm.plot", "loss / LR / throughput of runs against tokens"),
    "experiment": ("lm.experiment", "run, report or verify an experiment of experiments/"),
    "bench": ("lm.bench", "tokens/s, MFU, memory: lm's fit vs a plain loop vs a reference"),
    "gpu-check": ("lm.gpu_check", "everything only a GPU can show (speed, memory, CUDA correctness), as one command"),
}
NEGATIVE_NUMBER = r"-(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][-+]?\d+)?"
USAGE = (
    "usage: python -m lm <command> [options]    (python -m lm <command> --help: its options)\n\ncommands:\n"
    + "".join(f"  {name:<11} {line}\n" for name, (_, line) in COMMANDS.items())
    + "\nREADME.md has a table of the commands with examples; docs/ the details."
)


def one_line(message: str) -> str:
    """jsonargparse's multi-line explanation of a bad key or value, without the type dumps, on one line."""
    noise = ("Subtypes:", "Given value", "Errors:", "- Expected a <class 'NoneType'>")
    return " ".join(line.strip() for line in message.splitlines() if not line.strip().startswith(noise))


def negative_values_joined(args: list[str]) -> list[str]:
    """`--model.optim.lr -1e-3` as `--model.optim.lr=-1e-3`: argparse takes only -1 and -.5 for numbers, and reads
    any other argument that starts with "-" (-1e-3, -1_000) as an option."""
    joined: list[str] = []
    for arg in args:
        previous = joined[-1] if joined else ""
        if previous.startswith("--") and "=" not in previous and re.fullmatch(NEGATIVE_NUMBER, arg):
            joined[-1] = f"{previous}={arg}"
        else:
            joined.append(arg)
    return joined


def main(argv: list[str] | None = None) -> None:
    args = negative_values_joined(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if args else 1)
    try:
        if args[0] in LIGHTNING or args[0].startswith("-"):  # LightningCLI's own options may come first
            importlib.import_module("lm.train").main(args)
        elif args[0] in COMMANDS:
            importlib.import_module(COMMANDS[args[0]][0]).main(args[1:])
        else:
            raise UserError(f"unknown command {args[0]!r} (python -m lm lists the commands)")
    except UserError as err:
        sys.exit(f"error: {err}")
    except ArgumentError as err:
        from lm.optim.config import renamed_key_error  # here: the commands that do not parse configs skip torch

        renamed = renamed_key_error(str(err))
        sys.exit(f"error: {renamed}" if renamed else f"error: {one_line(str(err))} (--help lists the options)")
