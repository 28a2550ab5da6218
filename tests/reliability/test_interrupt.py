"""Ctrl-C during fit: the first saves like a preemption, a second aborts at once; the run summary never claims
a step that no checkpoint holds."""

import json
import os
import signal

from lm.callbacks.preemption import EXIT_PREEMPTED
from lm.checkpoint import load_checkpoint
from tests.reliability.helpers import exit_code, last_step, run_config, start, train_lines, wait_until


def ctrl_c(process) -> None:
    """What a terminal sends: SIGINT to the whole process group (the DataLoader's workers too)."""
    os.killpg(process.pid, signal.SIGINT)


def summary(run) -> dict:
    return json.loads((run / "run_summary.json").read_text())


def test_ctrl_c_saves_and_exits_like_a_preemption_then_resumes(text_corpus, tmp_path):
    config, run = run_config(tmp_path, text_corpus, "run", **{"data.num_workers": 2})  # lm's default workers
    log = tmp_path / "fit.log"
    process = start(["fit", "--config", config], log)
    wait_until(lambda: last_step(run) >= 2, process, log)
    ctrl_c(process)
    assert exit_code(process, log) == EXIT_PREEMPTED, log.read_text()[-3000:]
    stopped_at = last_step(run)
    saved = run / "checkpoints" / "last.ckpt"
    assert load_checkpoint(saved)["global_step"] == stopped_at < 12
    assert summary(run)["step"] == summary(run)["checkpoint_step"] == stopped_at
    console = log.read_text()
    assert not [text for text in ("Traceback", "KeyboardInterrupt", "SIGTERM") if text in console], console
    said = [line for line in console.splitlines() if "Ctrl-C" in line]
    assert said == [
        "Ctrl-C: saving last.ckpt after this optimizer step; Ctrl-C again aborts without saving",
        f"interrupted (Ctrl-C) at step {stopped_at}: saved {saved}; continue with --ckpt_path last",
    ]

    resumed = start(["fit", "--config", config, "--ckpt_path", "last"], tmp_path / "resume.log")
    assert exit_code(resumed, tmp_path / "resume.log") == 0
    assert [line["step"] for line in train_lines(run)] == list(range(1, 13))  # each step once: none lost or redone
    assert summary(run)["finished"] and summary(run)["checkpoint_step"] == 12


def test_a_second_ctrl_c_aborts_at_once_and_the_summary_says_what_was_saved(text_corpus, tmp_path):
    slow = [{"class_path": "tests.reliability.helpers.SlowSteps", "init_args": {"from_step": 3, "seconds": 5.0}}]
    config, run = run_config(
        tmp_path, text_corpus, "run", **{"trainer.val_check_interval": 2}, **{"trainer.callbacks": slow}
    )
    log = tmp_path / "fit.log"
    process = start(["fit", "--config", config], log)
    wait_until(lambda: last_step(run) >= 3, process, log)
    ctrl_c(process)
    wait_until(lambda: "Ctrl-C again" in log.read_text(), process, log)
    ctrl_c(process)
    assert exit_code(process, log, timeout=60) == 1, log.read_text()[-3000:]
    console = log.read_text()
    assert "Traceback" not in console and "graceful" not in console, console
    held = load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    assert held == 2  # the validation at step 2 saved it; the run was aborted in step 4
    assert summary(run)["step"] == 3 and summary(run)["checkpoint_step"] == held
    assert (
        "aborted at step 3 without saving: the newest checkpoint holds step 2; continue with --ckpt_path last"
        in console
    )
