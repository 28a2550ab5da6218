"""Every fit ends with a validation of its final weights, also when its last step is not a validation step."""

import json

import pytest

from lm.cli import main
from tests.conftest import write_config


@pytest.mark.parametrize("max_steps, validated", [(5, [2, 4, 5]), (4, [2, 4])], ids=["off-interval", "on-interval"])
def test_the_last_step_is_validated_once(max_steps, validated, text_corpus, tmp_path):
    run = tmp_path / "run"
    settings = {"trainer.max_steps": max_steps, "trainer.val_check_interval": 2}
    main(["fit", "--config", write_config(tmp_path / "run.yaml", text_corpus, run, **settings)])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "val/loss" in line] == validated
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["finished"] and summary["step"] == max_steps
