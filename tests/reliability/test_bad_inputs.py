"""Bad inputs end with one `error:` line and a non-zero exit, before any compute, and leave existing runs alone."""

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch

from lm.checkpoint import load_checkpoint
from lm.cli import main
from tests.reliability.helpers import ROOT, run_config, train_lines


def error_of(argv: list[str]) -> str:
    """The one-line message `python -m lm ARGV` ends with (SystemExit's code is what Python prints to stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


def snapshot(run: Path) -> dict:
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def existing(text_corpus, tmp_path_factory):
    """A finished classic-block run: (config, run dir)."""
    settings = {"trainer.max_steps": 2, "trainer.val_check_interval": 2, "model.config.block": "classic"}
    config, run = run_config(tmp_path_factory.mktemp("existing"), text_corpus, "classic", **settings)
    main(["fit", "--config", config])
    return config, run


def corpus_copy(corpus: str, tmp_path: Path, damage) -> str:
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    damage(copy)
    return str(copy)


def truncate(d: Path):
    shard = d / "train_00000.bin"
    shard.write_bytes(shard.read_bytes()[:1000])


def flip_a_byte(d: Path):
    shard = d / "train_00000.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))


def edit_manifest(change):
    def damage(d: Path):
        manifest = json.loads((d / "manifest.json").read_text())
        change(manifest)
        (d / "manifest.json").write_text(json.dumps(manifest))

    return damage


DATA_DAMAGE = {
    "missing shard": (lambda d: (d / "train_00000.bin").unlink(), "is missing"),
    "truncated shard": (truncate, "has 1000 bytes"),
    "corrupt shard": (flip_a_byte, "fails its checksum"),
    "manifest mismatch": (
        edit_manifest(lambda m: m["splits"]["train"]["shards"][0].update(tokens=10**6)),
        "manifest says 1000000 tokens",
    ),
    "wrong tokenizer": (edit_manifest(lambda m: m["tokenizer"].update(hash="0" * 64)), "made with tokenizer"),
}


@pytest.mark.parametrize("case", list(DATA_DAMAGE))
def test_bad_data_resuming_an_existing_run_touches_nothing(case, existing, text_corpus, tmp_path):
    config, run = existing
    damage, expected = DATA_DAMAGE[case]
    before = snapshot(run)
    corpus = corpus_copy(text_corpus, tmp_path, damage)
    message = error_of(["fit", "--config", config, "--data.sources", corpus, "--ckpt_path", "last"])
    assert expected in message
    assert snapshot(run) == before


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model.config.n_layr", "3"], "n_layr"),
        (["--model.optim.lr", "-1"], "model.optim.lr must be ≥ 0"),
        (["--model.lr", "1e-3"], "model.lr is now model.optim.lr"),
        (["--model.muon_lr", "0.01"], "model.muon_lr is now model.optim.muon.lr"),
        (["--data.seq_len", "64"], "larger than the model's context"),
        (["--nonfinite.max_consecutive", "0"], "max_consecutive"),
        (["--ckpt_path", "nowhere.ckpt"], "checkpoint not found: nowhere.ckpt"),
        (
            ["--model.optim.lr", "-1e-3"],
            "model.optim.lr must be ≥ 0, got -0.001",
        ),  # parsed, though argparse reads -1e-3 as an option
        (["--model.optim.min_lr", "-.5e-4"], "model.optim.min_lr must be ≥ 0, got -5e-05"),
        (["--data.weights", '{"nope": 1}'], "data.weights names unknown source 'nope'"),
        (["--data.weights", '{"nope": 1}', "--data.weights", "{}"], "data.weights has no weight for source"),
        # Lightning's "fsdp requires a GPU accelerator" traceback would come first on a CPU
        (["--model.optim.name", "muon", "--trainer.strategy", "fsdp"], "model.optim.name: muon cannot run under FSDP"),
        (
            ["--model.optim.name", "muon", "--config", str(ROOT / "configs/trainer/fsdp.yaml")],
            "muon cannot run under FSDP",
        ),
    ],
)
def test_bad_config_values(args, expected, text_corpus, tmp_path):
    config, run = run_config(tmp_path, text_corpus, "run")
    assert expected in error_of(["fit", "--config", config, *args])
    assert not run.exists()


def test_typo_in_a_config_file(text_corpus, tmp_path):
    config, _ = run_config(tmp_path, text_corpus, "run")
    (tmp_path / "typo.yaml").write_text("trainer:\n  max_step: 3\n")
    assert "trainer.max_step" in error_of(["fit", "--config", config, "--config", str(tmp_path / "typo.yaml")])


def test_batch_size_zero(text_corpus, tmp_path):
    config, run = run_config(tmp_path, text_corpus, "run")
    assert "batch_size" in error_of(["fit", "--config", config, "--data.batch_size", "0"])


def test_unreadable_checkpoints(existing, tmp_path):
    config, run = existing
    garbage, truncated = tmp_path / "garbage.ckpt", tmp_path / "truncated.ckpt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    last = (run / "checkpoints" / "last.ckpt").read_bytes()
    truncated.write_bytes(last[: len(last) // 2])
    for path, reason in ((garbage, "not a torch checkpoint"), (truncated, "truncated or corrupt")):
        message = error_of(["validate", "--config", config, "--ckpt_path", str(path)])
        assert (
            message.startswith(f"error: cannot read checkpoint {path}: {reason}")
            and len(message) < len(str(path)) + 120
        )


def test_resuming_with_no_checkpoint_says_it_starts_from_scratch(text_corpus, tmp_path, capfd):
    """`--ckpt_path last` in a fresh run directory (the requeue script's command) trains from the start, with lm's
    line instead of Lightning's warning and its HINT about save_last, which lm sets."""
    config, run = run_config(tmp_path, text_corpus, "run", **{"trainer.max_steps": 2, "trainer.val_check_interval": 2})
    main(["fit", "--config", config, "--ckpt_path", "last"])
    err = capfd.readouterr().err
    assert f"no checkpoint in {run / 'checkpoints'}: starting from scratch" in err
    assert "HINT" not in err and "save_last" not in err
    assert [line["step"] for line in train_lines(run)] == [1, 2]


def test_a_classic_checkpoint_brings_its_architecture(existing, text_corpus, tmp_path, capsys):
    """validate/fit --ckpt_path take the model's hyper-parameters from the checkpoint (LightningCLI), so a
    classic checkpoint validates as classic under a modern config: what was trained is what is measured."""
    _, run = existing
    modern, _ = run_config(tmp_path, text_corpus, "modern")
    main(["validate", "--config", modern, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert "val/loss" in capsys.readouterr().out


def test_a_directory_holding_another_run_is_refused_unless_overwrite(existing, text_corpus, tmp_path):
    _, run = existing
    before = snapshot(run)
    short = {"trainer.max_steps": 2, "trainer.val_check_interval": 2}
    config, _ = run_config(tmp_path, text_corpus, "other", **short, **{"trainer.default_root_dir": str(run)})
    assert "already holds a run" in error_of(["fit", "--config", config])
    assert snapshot(run) == before

    scratch = tmp_path / "scratch"
    shutil.copytree(run, scratch)
    main(["fit", "--config", config, "--trainer.default_root_dir", str(scratch), "--overwrite", "true"])
    assert [line["step"] for line in train_lines(scratch)] == [1, 2]  # a fresh run, not a continuation
    assert load_checkpoint(scratch / "checkpoints" / "last.ckpt")["hyper_parameters"]["config"]["block"] == "modern"


def test_disk_full_while_saving_keeps_the_previous_checkpoint(text_corpus, tmp_path, monkeypatch):
    config, run = run_config(tmp_path, text_corpus, "run", **{"trainer.max_steps": 4, "trainer.val_check_interval": 2})
    real_save, saves = torch.save, []

    def save_until_full(obj, f, *args, **kwargs):
        saves.append(f.name)
        if len(saves) < 3:  # best.ckpt and last.ckpt at step 2 fit; best.ckpt at step 4 does not
            return real_save(obj, f, *args, **kwargs)
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_full)
    message = error_of(["fit", "--config", config])
    assert "No space left on device" in message and "the previous best.ckpt is intact" in message
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoints" / "best.ckpt")["global_step"] == 2
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_resuming_with_another_data_mixture_is_refused(existing, text_corpus):
    config, run = existing
    before = snapshot(run)
    sources = json.dumps({"prepared": text_corpus, "more": text_corpus})
    resume = ["fit", "--config", config, "--trainer.max_steps", "4", "--ckpt_path", "last"]
    message = error_of([*resume, "--data.sources", sources])
    assert "the data mixture differs from the checkpoint's (data.sources added ['more'])" in message
    assert "data.allow_mixture_change: true" in message
    assert snapshot(run) == before  # refused before the Trainer wrote config.yaml or events
