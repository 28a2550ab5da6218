import os
from pathlib import Path

import lightning as L
import pytest
import torch

from lm.model import ModelConfig

# The GPT-2 BPE cannot be downloaded on CI or most compute nodes; use the shared cache when it is there.
_SHARED_CACHE = Path(__file__).resolve().parents[2] / "shared" / "tokenizer" / "tiktoken_cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _SHARED_CACHE.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_SHARED_CACHE)

torch.set_num_threads(min(2, os.cpu_count() or 1))


# Every Muon variant at once, as config keys (lm/optim/muon.py): plain Muon is torch's step, these lm's own.
MUON_VARIANTS = {
    "model.optim.muon.orthogonalization": "polar_express",
    "model.optim.muon.normuon": True,
    "model.optim.muon.cautious_weight_decay": True,
    "model.optim.muon.lr_scaling": "match_rms_adamw",
    "model.optim.muon.split_fused": True,
    "model.optim.adamw.cautious_weight_decay": True,
}


def tiny_config(block: str = "modern", **overrides) -> ModelConfig:
    return ModelConfig(**{"block": block, "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, **overrides})


def quiet_trainer(root, **settings) -> L.Trainer:
    """A CPU Trainer that writes only what a test asks for: no logger, progress bar or model summary."""
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    return L.Trainer(**{"accelerator": "cpu", "default_root_dir": root, **quiet, **settings})


@pytest.fixture(params=["classic", "modern"])
def block(request) -> str:
    return request.param


def stdlib_docs() -> list[str]:
    """Real English prose for end-to-end tests: docstrings of a few standard-library modules."""
    import argparse  # noqa: E401
    import collections
    import functools
    import inspect
    import json
    import pathlib
    import subprocess
    import typing

    docs = []
    for module in (argparse, collections, functools, json, pathlib, subprocess, typing):
        docs.append(inspect.getdoc(module) or "")
        docs += [inspect.getdoc(obj) or "" for _, obj in sorted(vars(module).items()) if callable(obj)]
    return [doc for doc in docs if len(doc) > 40]


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> str:
    """A prepared corpus (train + val shards) of real text, made by the real `prepare`."""
    import json

    from lm.data.prepare import prepare

    root = tmp_path_factory.mktemp("text_corpus")
    with open(root / "docs.jsonl", "w") as f:
        for doc in stdlib_docs():
            f.write(json.dumps({"text": doc}) + "\n")
    return str(
        prepare(source="local", out=str(root / "prepared"), path=str(root / "docs.jsonl"), val_fraction=0.1, num_proc=1)
    )


def write_config(path, data_dir: str, run_dir, **overrides) -> str:
    """A tiny full run config (YAML) for end-to-end CLI tests."""
    import yaml

    config = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(run_dir),
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 6,
            "val_check_interval": 3,
            "check_val_every_n_epoch": None,
            "limit_val_batches": 2,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {
            "config": {"block": "modern", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
            "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
        },
        "data": {"sources": data_dir, "seq_len": 32, "batch_size": 4, "num_workers": 0, "val_batches": 2},
    }
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = value
    path.write_text(yaml.safe_dump(config))
    return str(path)
