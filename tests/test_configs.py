"""Every YAML in configs/ parses through the real CLI, so shipped configs never rot."""

import json
import math
from pathlib import Path

import pytest
import yaml

from lm.cli import main

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"
FULL = sorted(p for part in ("", "bench/", "recipes/", "seed-runs/") for p in CONFIGS.glob(f"{part}*.yaml"))
PIECES = sorted(p for part in ("model", "data", "trainer") for p in CONFIGS.glob(f"{part}/*.yaml"))


def print_config(capsys, *items: Path | str) -> dict:
    """The config `lm fit` resolves from config files and `--key=value` flags, in order."""
    args = ["fit"] + [arg for x in items for arg in ([x] if str(x).startswith("--") else ["--config", str(x)])]
    args += ["--print_config"]
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


def test_the_frontier_demo_recipe_composes_onto_the_demo_and_keeps_its_data_shape(capsys):
    demo = print_config(capsys, CONFIGS / "demo.yaml")
    resolved = print_config(capsys, CONFIGS / "demo.yaml", CONFIGS / "recipes" / "frontier-demo.yaml")
    assert (resolved["data"]["seq_len"], resolved["data"]["batch_size"]) == (128, 16)
    assert resolved["trainer"]["max_steps"] == demo["trainer"]["max_steps"]
    config, demo_config = resolved["model"]["config"], demo["model"]["config"]
    assert (config["n_layer"], config["n_embd"]) == (demo_config["n_layer"], demo_config["n_embd"])
    assert resolved["model"]["optim"]["name"] == "muon" and config["value_embeddings"] == "alternating"


def test_the_frontier_demo_recipe_is_the_stack_variant_the_experiment_chose(capsys):
    """The recipe is experiments/frontier-demo's stack less what cost nothing to remove there (packing and document
    masking): exactly its `no-packing` variant, so that row of the committed table measures the recipe."""
    spec = yaml.safe_load((ROOT / "experiments" / "frontier-demo" / "experiment.yaml").read_text())
    in_repo = lambda items: [item if item.startswith("--") else ROOT / item for item in items]
    measured = print_config(capsys, *in_repo(spec["configs"] + spec["variants"]["no-packing"]))
    recipe = print_config(capsys, *in_repo(spec["configs"]), CONFIGS / "recipes" / "frontier-demo.yaml")
    assert recipe == measured
    assert recipe["model"]["config"]["attention_mask"] == "causal" and recipe["data"]["packing"] == "stream"


def test_seed_run_e_moves_its_mixture_gradually_and_keeps_three_checkpoints(capsys):
    resolved = print_config(capsys, CONFIGS / "seed-runs" / "e-classic-124m-colab.yaml")
    assert resolved["model"]["batch_tokens"] == 6 * 1024 * 21 and resolved["trainer"]["precision"] == "16-mixed"
    schedule = resolved["data"]["schedule"]
    assert schedule["end_tokens"] - schedule["start_tokens"] == pytest.approx(2000 * 129024, rel=1e-4)
    assert resolved["periodic_checkpoint"]["save_top_k"] == 3 and resolved["samples"]["every_n_steps"] == 100


FP16 = [p for p in FULL if yaml.safe_load(p.read_text()).get("trainer", {}).get("precision") == "16-mixed"]
CPU_FP16 = {  # what Lightning builds for 16-mixed on a GPU (GradScaler and all), on the CPU
    "class_path": "lightning.pytorch.plugins.precision.MixedPrecision",
    "init_args": {
        "precision": "16-mixed",
        "device": "cpu",
        "scaler": {"class_path": "torch.amp.GradScaler", "init_args": {"device": "cpu"}},
    },
}


@pytest.mark.parametrize("path", FP16, ids=lambda p: p.name)
def test_fp16_config_trains(path, text_corpus, tmp_path):
    """A config made for GPUs without bf16 (seed run E: a T4) trains with its own optimizer, clipping and guard
    under fp16 loss scaling, with a tiny model and data in its place."""
    run = tmp_path / "run"
    tiny = {"block": "classic", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32}
    overrides = {
        "trainer.accelerator": "cpu",
        "trainer.precision": "null",
        "trainer.plugins": json.dumps(CPU_FP16),
        "trainer.default_root_dir": str(run),
        "trainer.max_steps": "2",
        "trainer.val_check_interval": "2",
        "trainer.limit_val_batches": "1",
        "model.config": json.dumps(tiny),
        "model.optim.warmup_steps": "1",
        "model.batch_tokens": "128",  # accumulation 2
        "data.sources": text_corpus,
        "data.weights": "null",
        "data.schedule": "null",
        "data.seq_len": "32",
        "data.batch_size": "2",
        "data.num_workers": "0",
        "data.val_batches": "1",
    }
    main(["fit", "--config", str(path), *(arg for key, value in overrides.items() for arg in (f"--{key}", value))])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "val/loss" in line] == [2]
    assert all(math.isfinite(line["val/loss"]) for line in lines if "val/loss" in line)
