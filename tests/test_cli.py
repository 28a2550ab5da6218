"""End to end through `python -m lm` (in process): fit a tiny model on real text, validate, reload."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lm.checkpoint import load_checkpoint, load_model
from lm.cli import main
from lm.module import LanguageModel
from tests.conftest import write_config


def test_fit_then_validate(text_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", text_corpus, run)
    main(["fit", "--config", config])
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert list(run.glob("events.out.tfevents.*"))

    capsys.readouterr()
    main(["validate", "--config", config, "--ckpt_path", str(run / "checkpoints" / "best.ckpt")])
    out = capsys.readouterr().out
    assert "val/loss" in out and "val/ppl" in out and "val/bpb" in out
    by_path = json.loads((run / "validate" / "best" / "metrics.json").read_text())
    for name in ("best", "last"):  # the run's own files, in a new Trainer (Lightning knows "best" only after fit)
        main(["validate", "--config", config, "--ckpt_path", name])
        results = json.loads((run / "validate" / name / "metrics.json").read_text())
        assert results["ckpt_path"] == str(run / "checkpoints" / f"{name}.ckpt")
        assert results["metrics"]["val/loss"] == by_path["metrics"]["val/loss"] or name == "last"
    with pytest.raises(SystemExit, match="--ckpt_path best: no best.ckpt in .*elsewhere"):
        main(
            [
                "validate",
                "--config",
                config,
                "--ckpt_path",
                "best",
                "--trainer.default_root_dir",
                str(tmp_path / "elsewhere"),
            ]
        )

    # The checkpoint alone rebuilds the model: same logits and greedy generation both ways of loading.
    module = LanguageModel.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True).eval()
    model, ckpt = load_model(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6 and ckpt["tokens_seen"] == 6 * 4 * 32
    idx = torch.randint(0, 50257, (1, 8))
    torch.testing.assert_close(module.model(idx), model(idx), rtol=0, atol=0)
    greedy = [torch.stack(list(m.generate(idx, 10, temperature=0))) for m in (module.model, model)]
    assert torch.equal(*greedy)


def test_best_checkpoint_holds_the_lowest_val_loss(text_corpus, tmp_path):
    """best.ckpt is the checkpoint of the step with the lowest val/loss in metrics.jsonl, and its own score is that
    loss. A learning rate far too high makes the curve go down and up again, so the best is not the last."""
    run = tmp_path / "run"
    settings = {
        "trainer.max_steps": 8,
        "trainer.val_check_interval": 2,
        "model.optim.lr": 1.0,
        "model.optim.warmup_steps": 1,
    }
    main(["fit", "--config", write_config(tmp_path / "run.yaml", text_corpus, run, **settings)])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = {line["step"]: line["val/loss"] for line in lines if "val/loss" in line}
    lowest = min(val, key=val.get)
    assert sorted(val) == [2, 4, 6, 8] and lowest != 8
    best = load_checkpoint(run / "checkpoints" / "best.ckpt")
    (score,) = [s["best_model_score"] for s in best["callbacks"].values() if s.get("monitor") == "val/loss"]
    assert best["global_step"] == lowest
    assert score.item() == pytest.approx(val[lowest])


def test_print_config_composes_files(text_corpus, tmp_path, capsys):
    base = write_config(tmp_path / "run.yaml", text_corpus, tmp_path / "run")
    override = tmp_path / "classic.yaml"
    override.write_text("model:\n  config:\n    block: classic\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", base, "--config", str(override), "--print_config"])
    assert exit_info.value.code in (None, 0)
    out = capsys.readouterr().out
    assert "block: classic" in out and "n_embd: 32" in out


def error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = exit_info.value.code if isinstance(exit_info.value.code, str) else capsys.readouterr().err
    assert exit_info.value.code != 0
    return message.strip().splitlines()[-1] if "error:" not in message else message[message.index("error:") :]


def test_missing_data_path_is_one_line_and_creates_no_run(text_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", str(tmp_path / "nowhere"), run)
    message = error_line(capsys, ["fit", "--config", config])
    assert message.startswith("error:") and "nowhere" in message and "prepare" in message
    assert not run.exists()


def test_config_typo_names_the_key(text_corpus, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", text_corpus, tmp_path / "run")
    message = error_line(capsys, ["fit", "--config", config, "--model.config.n_layr", "3"])
    assert "n_layr" in message


def test_empty_corpus_is_refused(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    message = error_line(
        capsys, ["prepare", "--source", "local", "--path", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "out")]
    )
    assert message.startswith("error:") and not (tmp_path / "out").exists()


def test_checkpoint_that_does_not_fit_the_config(text_corpus, tmp_path, capsys):
    run = tmp_path / "base"
    main(["fit", "--config", write_config(tmp_path / "base.yaml", text_corpus, run, **{"trainer.max_steps": 1})])
    wider = write_config(tmp_path / "wide.yaml", text_corpus, tmp_path / "cpt", **{"model.config.n_embd": 64})
    message = error_line(capsys, ["fit", "--config", wider, "--model.init_from", str(run / "checkpoints/last.ckpt")])
    assert "n_embd" in message and "last.ckpt" in message
    assert not Path(tmp_path / "cpt").exists()


EVERY_COMMAND = ["prepare", "fit", "validate", "test", "generate", "eval", "hellaswag", "export", "plot", "experiment"]
EVERY_COMMAND += ["bench", "gpu-check"]


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"]])
def test_the_command_list_names_every_command_on_one_line_each(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert [words[0] for words in lines] == EVERY_COMMAND
    assert all(len(words) > 2 for words in lines)  # each with what it does
    assert "predict" not in out


def test_fit_help_begins_with_print_config_and_the_docs(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    first = "\n".join(capsys.readouterr().out.splitlines()[:8])
    assert "--print_config" in first and "README.md" in first


def test_an_unknown_command_is_one_line(capsys):
    assert error_line(capsys, ["trian"]) == "error: unknown command 'trian' (python -m lm lists the commands)"


def test_test_command_says_there_is_no_test_split(text_corpus, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", text_corpus, tmp_path / "run")
    message = error_line(capsys, ["test", "--config", config])
    assert message.startswith("error:") and "validate" in message


def test_a_normal_fit_and_validate_print_no_warning(text_corpus, tmp_path, capfd):
    """A run with the progress bar and a two-source mixture: nothing on the console warns about Lightning's or
    torch's internals (model summary FLOPs, hp_metric, weights_only, per-dataloader result columns)."""
    run = tmp_path / "run"
    sources = json.dumps({"a": text_corpus, "b": text_corpus})
    settings = {"trainer.enable_progress_bar": True, "data.num_workers": 1}
    config = write_config(tmp_path / "run.yaml", text_corpus, run, **settings)
    without_summary = yaml.safe_load(Path(config).read_text())
    del without_summary["trainer"]["enable_model_summary"]  # lm's default
    Path(config).write_text(yaml.safe_dump(without_summary))
    main(["fit", "--config", config, "--data.sources", sources])
    main(["validate", "--config", config, "--data.sources", sources, "--ckpt_path", str(run / "checkpoints/best.ckpt")])
    console = capfd.readouterr()
    text = console.out + console.err
    noisy = r"warn|FLOPs|┃.*DataLoader|weights_only|HINT"  # FLOPs: Lightning's model summary ("0 FLOPs" on a CPU)
    noise = [line for line in text.splitlines() if re.search(noisy, line, re.I) and not line.startswith("training ")]
    assert noise == []
    assert re.search(r"^val/loss +\d", console.out, re.M) and "val/a/loss" in console.out
    tags = EventAccumulator(str(run)).Reload().Tags()["scalars"]
    assert "val/loss" in tags and "hp_metric" not in tags
