"""The demo's promise (slow: minutes on 2 cores): real learning on the built-in corpus, and a readable sample."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lm.cli import main
from lm.data.prepare import prepare

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_demo_learns_and_samples_words(tmp_path):
    data = prepare(source="python-docs", out=str(tmp_path / "python-docs"), val_fraction=0.02)
    run = tmp_path / "demo"
    overrides = ["--data.sources", str(data), "--trainer.default_root_dir", str(run)]
    main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), *overrides])

    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["best_val"]["val/loss"] <= 0.7 * math.log(50257)

    sample = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm",
            "generate",
            "--ckpt_path",
            str(run / "checkpoints" / "best.ckpt"),
            "--prompt",
            "The module",
            "--max_new_tokens",
            "60",
            "--seed",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    characters = [c for c in sample if not c.isspace()]
    assert len(sample.split()) >= 10
    assert sum(c.isalpha() for c in characters) / len(characters) >= 0.6
