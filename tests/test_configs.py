"""Every YAML in configs/ parses through the real CLI, so shipped configs never rot."""

from pathlib import Path

import pytest
import yaml

from lm.cli import main

CONFIGS = Path(__file__).parents[1] / "configs"
FULL = sorted(p for part in ("", "bench/", "recipes/", "seed-runs/") for p in CONFIGS.glob(f"{part}*.yaml"))
PIECES = sorted(p for part in ("model", "data", "trainer") for p in CONFIGS.glob(f"{part}/*.yaml"))


def print_config(capsys, *files: Path) -> dict:
    args = ["fit"] + [arg for f in files for arg in ("--config", str(f))] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (None, 0)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("path", FULL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_full_config_parses(path, capsys):
    base = [CONFIGS / "seed-runs" / "d-gpt2-small-3090.yaml"] if path.name.endswith("fineweb-edu.yaml") else []
    resolved = print_config(capsys, *base, path)  # (D's FineWeb-Edu model composes onto D)
    if path.parent != CONFIGS / "bench":  # run configs name their run directory
        assert resolved["trainer"]["default_root_dir"].startswith("runs/")


@pytest.mark.parametrize("path", PIECES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_piece_composes_onto_the_demo(path, capsys):
    piece = yaml.safe_load(path.read_text())
    resolved = print_config(capsys, CONFIGS / "demo.yaml", path)
    for section, values in piece.items():
        for key, value in values.items():
            if not isinstance(value, dict):
                assert resolved[section][key] == value, f"{path}: {section}.{key}"


def test_seed_run_a_keeps_its_optimisation(capsys):
    resolved = print_config(capsys, CONFIGS / "seed-runs" / "a-modern-124m.yaml")
    model, trainer, data = resolved["model"], resolved["trainer"], resolved["data"]
    optim = model["optim"]
    assert (optim["lr"], optim["min_lr"], optim["warmup_steps"]) == (3e-4, 3e-5, 2000)
    assert optim["adamw"]["weight_decay"] == 0.1
    assert trainer["gradient_clip_val"] == 1.0 and trainer["precision"] == "bf16-mixed"
    assert 244_000 < model["max_tokens"] / (data["batch_size"] * data["seq_len"]) < 245_000  # 244K steps


def test_the_recipes_share_the_gpt2_reproductions_batch_and_budget(capsys):
    for name in ("gpt2-124m-classic", "modern-124m-adamw", "modern-124m-muon"):
        model = print_config(capsys, CONFIGS / "recipes" / f"{name}.yaml")["model"]
        assert (model["batch_tokens"], model["max_tokens"], model["config"]["n_embd"]) == (524288, 10e9, 768), name
    assert model["optim"]["name"] == "muon" and model["optim"]["muon"]["lr"] == 0.02


def test_seed_run_e_moves_its_mixture_gradually_and_keeps_three_checkpoints(capsys):
    resolved = print_config(capsys, CONFIGS / "seed-runs" / "e-classic-124m-colab.yaml")
    assert resolved["model"]["batch_tokens"] == 6 * 1024 * 21 and resolved["trainer"]["precision"] == "16-mixed"
    schedule = resolved["data"]["schedule"]
    assert schedule["end_tokens"] - schedule["start_tokens"] == pytest.approx(2000 * 129024, rel=1e-4)
    assert resolved["periodic_checkpoint"]["save_top_k"] == 3 and resolved["samples"]["every_n_steps"] == 100
