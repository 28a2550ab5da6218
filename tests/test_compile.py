"""`model.compile: true` through the CLI: the training graph is compiled once and never again."""

import functools

import torch
from torch._dynamo.utils import counters

from lm.cli import main
from tests.conftest import write_config


def test_training_compiles_once_across_validation_checkpoints_resume_and_lr_changes(text_corpus, tmp_path, monkeypatch):
    # aot_eager: dynamo's tracing, guards and graph breaks, and AOTAutograd's backward, without inductor's C++ build.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    run = tmp_path / "run"
    settings = {"model.compile": True, "trainer.max_steps": 6, "trainer.val_check_interval": 3}
    config = write_config(tmp_path / "run.yaml", text_corpus, run, **settings)  # warmup 2 + cosine: a new LR each step
    periodic = ["--periodic_checkpoint.every_n_train_steps", "2"]

    torch._dynamo.reset()
    counters.clear()
    main(["fit", "--config", config, "--trainer.max_steps", "4", *periodic])  # validation and checkpoints at 2, 3, 4
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert counters["frames"]["total"] == 1  # one frame went through dynamo: the training forward, once

    torch._dynamo.reset()  # a resumed run is a new process
    counters.clear()
    main(["fit", "--config", config, "--ckpt_path", "last", *periodic])  # steps 5 and 6, another validation at 6
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert counters["frames"]["total"] == 1


def test_a_seq_len_warmup_compiles_one_static_graph_per_length(text_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    settings = {"model.compile": True, "trainer.max_steps": 6, "data.seq_len_warmup": [[8, 256], [16, 512]]}
    config = write_config(tmp_path / "run.yaml", text_corpus, tmp_path / "run", **settings)  # 2 steps per length
    torch._dynamo.reset()
    counters.clear()
    main(["fit", "--config", config])
    # 3 static graphs; dynamo's automatic dynamic shapes would make 2: the first, then one dynamic for the rest
    assert counters["stats"]["unique_graphs"] == 3 and not counters["graph_break"]
