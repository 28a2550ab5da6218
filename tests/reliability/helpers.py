"""Running `python -m lm` in a child process (to kill it), and reading what a run left behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch

from tests.conftest import write_config

ROOT = Path(__file__).resolve().parents[2]


def run_config(tmp_path: Path, corpus: str, name: str, **overrides) -> tuple[str, Path]:
    """(config path, run dir) of a 12-step tiny run: validation every 6 steps, a checkpoint every 3."""
    run = tmp_path / name
    settings = {"trainer.max_steps": 12, "trainer.val_check_interval": 6, "data.batch_size": 2, **overrides}
    config = write_config(tmp_path / f"{name}.yaml", corpus, run, **settings)
    return config, run


PERIODIC = ["--periodic_checkpoint.every_n_train_steps", "3"]


class SignalAt(L.Callback):
    """Sends this process SIGTERM as training micro-batch `micro_batch` (0-based) starts, or with `validation_at_step`
    as the validation of that optimizer step starts its second batch: a signal at a known point."""

    def __init__(self, micro_batch: int | None = None, validation_at_step: int | None = None):
        self.micro_batch, self.validation_at_step = micro_batch, validation_at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.micro_batch:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking and trainer.global_step == self.validation_at_step and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)


class SlowSteps(L.Callback):
    """Sleeps before each training micro-batch from optimizer step `from_step` on: time to send a second signal."""

    def __init__(self, from_step: int, seconds: float):
        self.from_step, self.seconds = from_step, seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.from_step:
            time.sleep(self.seconds)


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(torch.get_num_threads()))
    env.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT.parent / "shared" / "tokenizer" / "tiktoken_cache"))
    return env


def as_a_terminal_job() -> None:
    """In the child, before exec: SIGINT as a terminal's foreground job has it. A test suite started with `&` from a
    script ignores SIGINT, a child would inherit that, and lm keeps ignoring a SIGINT its parent ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], log: Path, script: str | None = None, **env: str) -> subprocess.Popen:
    """`python -m lm ARGS` (or `python SCRIPT ARGS`) in the background, output to `log`, in a process group of its
    own (a terminal's Ctrl-C signals a whole group: os.killpg)."""
    command = [sys.executable, script] if script else [sys.executable, "-m", "lm"]
    with open(log, "wb") as out:
        return subprocess.Popen(
            command + args,
            cwd=ROOT,
            env={**child_env(), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=as_a_terminal_job,
        )


def wait_until(condition, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (code {process.returncode}) too early:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)


def exit_code(process: subprocess.Popen, log: Path, timeout: float = 120) -> int:
    """The code `process` exits with; killed (with its process group) if it runs past `timeout` seconds."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"still running after {timeout} s:\n{log.read_text()[-3000:]}") from None


def train_lines(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    text = path.read_text() if path.is_file() else ""
    lines = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]  # complete lines only
    return [line for line in lines if "train/loss" in line]


def validations(run: Path) -> list[tuple[int, float]]:
    """(step, val/loss) of every validation the run's sessions logged, in order."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(line["step"], line["val/loss"]) for line in lines if "val/loss" in line]


def losses(run: Path) -> dict[int, float]:
    """Step -> train/loss; a step replayed after a resume counts with its latest value."""
    return {line["step"]: line["train/loss"] for line in train_lines(run)}


def last_step(run: Path) -> int:
    lines = train_lines(run)
    return lines[-1]["step"] if lines else 0


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_run(run: Path, reference: Path) -> None:
    """Every step's loss and the final weights are exactly those of the reference run."""
    assert losses(run) == losses(reference)
    mine, theirs = weights(run / "checkpoints" / "last.ckpt"), weights(reference / "checkpoints" / "last.ckpt")
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name
