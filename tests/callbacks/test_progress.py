"""The console's training bar, captured from real fits: lm's step bar only, fresh and after a resume."""

import re

from lm.cli import main
from tests.conftest import write_config


def bar_states(console: str) -> list[str]:
    """Every state the console's bars were drawn in (tqdm redraws its line after a carriage return)."""
    return [state.strip() for state in re.split(r"[\r\n]", console) if state.strip()]


def training_bar(console: str) -> list[tuple[int, int]]:
    """(step, max_steps) of each state of the training bar; asserts that no other bar counted training."""
    states = bar_states(console)
    assert not [s for s in states if s.startswith(("Training", "Epoch", "Sanity Checking"))], states
    bar = [re.match(r"train: .*\| (\d+)/(\d+) \[.*step/s", s) for s in states if s.startswith("train:")]
    assert all(bar), states
    return [(int(m[1]), int(m[2])) for m in bar]


def test_one_training_bar_in_steps_fresh_and_resumed(text_corpus, tmp_path, capsys):
    settings = {"trainer.max_steps": 3, "trainer.enable_progress_bar": True}
    config = write_config(tmp_path / "run.yaml", text_corpus, tmp_path / "run", **settings)
    main(["fit", "--config", config])
    fresh = training_bar(capsys.readouterr().out)
    assert fresh[0] == (0, 3) and fresh[-1] == (3, 3)

    main(["fit", "--config", config, "--trainer.max_steps", "6", "--ckpt_path", "last"])
    resumed = training_bar(capsys.readouterr().out)
    assert resumed[0] == (3, 6) and resumed[-1] == (6, 6)
