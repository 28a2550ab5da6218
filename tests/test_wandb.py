"""--wandb_project: Weights & Biases beside TensorBoard, offline (WANDB_MODE=offline needs no network)."""

import json
import sys

import pytest

from lm.cli import main
from tests.conftest import write_config
from tests.reliability.helpers import train_lines


class Recorded:
    """What lm hands W&B: each log_metrics call of the WandbLogger and each update of the W&B run's summary."""

    def __init__(self, monkeypatch):
        from lightning.pytorch.loggers import WandbLogger
        from wandb.sdk.wandb_summary import Summary

        self.metrics, self.summary = {}, {}
        log_metrics, update = WandbLogger.log_metrics, Summary.update

        def record_metrics(logger, metrics, step=None):
            self.metrics.setdefault(step, {}).update(metrics)
            return log_metrics(logger, metrics, step)

        def record_summary(summary, values):
            self.summary.update(values)
            return update(summary, values)

        monkeypatch.setattr(WandbLogger, "log_metrics", record_metrics)
        monkeypatch.setattr(Summary, "update", record_summary)


def test_wandb_beside_tensorboard_and_a_resume_continues_the_same_run(text_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    recorded = Recorded(monkeypatch)
    run = tmp_path / "run"
    short = {"trainer.max_steps": 2, "trainer.val_check_interval": 2}
    config = write_config(tmp_path / "run.yaml", text_corpus, run, **short)
    main(["fit", "--config", config, "--wandb_project", "lm-test"])
    assert list(run.glob("events.out.tfevents.*"))  # TensorBoard still
    run_id = (run / "wandb_id").read_text()
    for line in train_lines(run):  # the same metrics at the same steps as metrics.jsonl (and TensorBoard)
        assert recorded.metrics[line["step"]]["train/loss"] == pytest.approx(line["train/loss"])
    assert recorded.summary["run_summary"]["best_val"]["step"] == 2
    assert json.loads((run / "run_summary.json").read_text())["step"] == recorded.summary["run_summary"]["step"]

    main(["fit", "--config", config, "--wandb_project", "lm-test", "--trainer.max_steps", "4", "--ckpt_path", "last"])
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(path.name.endswith(f"-{run_id}") for path in runs)  # one W&B run, continued
    assert recorded.summary["run_summary"]["step"] == 4 and 4 in recorded.metrics


def test_without_wandb_installed_it_is_one_line(text_corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    config = write_config(tmp_path / "run.yaml", text_corpus, tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--wandb_project", "x"])
    assert (
        exit_info.value.code == 'error: --wandb_project needs wandb: pip install -e ".[wandb]" (or pip install wandb)'
    )
