"""Every YAML in configs/ parses through the real CLI, so shipped configs never rot."""

from pathlib import Path

import pytest
import yaml

from lm.cli import main

CONFIGS = Path(__file__).parents[1] / "configs"
FULL = sorted([*CONFIGS.glob("*.yaml"), *CONFIGS.glob("bench/*.yaml")])
PIECES = sorted(p for part in ("model", "data", "trainer") for p in CONFIGS.glob(f"{part}/*.yaml"))


def print_config(capsys, *files: Path) -> dict:
    args = ["fit"] + [arg for f in files for arg in ("--config", str(f))] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (None, 0)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("path", FULL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_full_config_parses(path, capsys):
    resolved = print_config(capsys, path)
    if path.parent == CONFIGS:  # run configs name their run directory
        assert resolved["trainer"]["default_root_dir"].startswith("runs/")


@pytest.mark.parametrize("path", PIECES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_piece_composes_onto_the_demo(path, capsys):
    piece = yaml.safe_load(path.read_text())
    resolved = print_config(capsys, CONFIGS / "demo.yaml", path)
    for section, values in piece.items():
        for key, value in values.items():
            if not isinstance(value, dict):
                assert resolved[section][key] == value, f"{path}: {section}.{key}"


def test_124m_configs_follow_the_seed_run():
    for name in ("gpt2-124m-classic.yaml", "modern-124m.yaml"):
        config = yaml.safe_load((CONFIGS / name).read_text())
        model, trainer = config["model"], config["trainer"]
        assert (model["lr"], model["min_lr"], model["warmup_steps"], model["weight_decay"]) == (3e-4, 3e-5, 2000, 0.1)
        assert trainer["gradient_clip_val"] == 1.0 and trainer["precision"] == "bf16-mixed"
        assert model["config"]["block_size"] == config["data"]["seq_len"] == 1024
