"""Reading checkpoints safely, and rebuilding a model from one file or a Hugging Face directory.

Every load uses `weights_only=True`: a checkpoint from a stranger cannot run code. Ours hold only tensors
and plain Python values (the model config is stored as a dict), so they load that way.

A checkpoint of a run with weight averaging (lm/callbacks/averaging.py) also holds the averaged weights under
AVERAGED; `weights="ema"` loads those instead of the trained ones.
"""

import hashlib
import pickle
from dataclasses import fields
from pathlib import Path
from typing import Literal

import torch

from lm.errors import UserError
from lm.model import GPT, ModelConfig

AVERAGED = "averaged_weights"  # the checkpoint key of the weight average's state (its GPT state dict, its counters)
Weights = Literal["raw", "ema"]  # the trained weights, or their exponential moving average


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"refusing to load {path}: it needs pickle to rebuild arbitrary objects, which could run code "
            f"({str(err).splitlines()[0][:200]})"
        ) from None
    except (RuntimeError, EOFError, OSError):
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
        reason = "truncated or corrupt (an interrupted copy?)" if zipped else "not a torch checkpoint"
        raise UserError(f"cannot read checkpoint {path}: {reason}; use another one") from None


def config_and_weights(
    source: str | Path, weights: Weights = "raw"
) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, GPT state dict, checkpoint) from an lm checkpoint or a Hugging Face model directory; with
    weights="ema" the state dict holds the checkpoint's averaged weights."""
    if Path(source).is_dir():
        if weights != "raw":
            raise UserError(f"{source} is a Hugging Face directory: it holds one set of weights, use --weights raw")
        from lm.interop.hf import load_hf_dir

        config, state = load_hf_dir(source)
        return config, state, {}
    ckpt = load_checkpoint(source)
    hparams = ckpt.get("hyper_parameters", {})
    if "config" not in hparams or "state_dict" not in ckpt:
        raise UserError(f"{source} is not an lm checkpoint (no model config or state_dict inside)")
    if weights == "ema":
        ckpt = with_averaged_weights(ckpt, source)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return ModelConfig(**hparams["config"]), state, ckpt


def with_averaged_weights(ckpt: dict, source: str | Path) -> dict:
    """The checkpoint with its averaged weights in place of the trained ones in `state_dict` (a shallow copy)."""
    averaged = ckpt.get(AVERAGED)
    if averaged is None:
        raise UserError(
            f"{source} holds no averaged weights: its run had no weight averaging (ema.start_step), or had not reached "
            "its start step; use --weights raw"
        )
    state = {**ckpt["state_dict"], **{f"model.{k}": v for k, v in averaged["state_dict"].items()}}
    return {**ckpt, "state_dict": state}


def load_weights(model: GPT, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Strict load with a one-line error that names the first mismatching tensor."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise UserError(f"{source} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise UserError(
                f"{source} does not fit the model: '{k}' is {tuple(v.shape)}, model has {tuple(own[k].shape)}"
            )
    model.load_state_dict(state)


def load_model(source: str | Path, weights: Weights = "raw") -> tuple[GPT, dict]:
    """A GPT ready for inference, and the checkpoint it came from ({} for a Hugging Face directory); `weights`:
    the trained weights ("raw") or their average ("ema", for a checkpoint of a run with weight averaging)."""
    config, state, ckpt = config_and_weights(source, weights)
    model = GPT(config)
    load_weights(model, state, source)
    return model.eval(), ckpt


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


# Settings of how a model is trained or run, not of what it computes: a continuation may change them.
NOT_ARCHITECTURE = ("dropout", "attention_backend")


def base_config_and_weights(init_from: str, config: ModelConfig | None) -> tuple[ModelConfig, dict, dict]:
    """(config, weights, checkpoint) of the base a continued pretraining starts from (`model.init_from`): the
    architecture is the base's, so a `model.config` that differs from it is refused, naming the keys; only dropout
    and the attention backend may change."""
    base_config, state, ckpt = config_and_weights(init_from)
    if config is not None:
        conflicts = [
            f.name
            for f in fields(ModelConfig)
            if f.name not in NOT_ARCHITECTURE and getattr(config, f.name) != getattr(base_config, f.name)
        ]
        if conflicts:
            raise UserError(
                f"model.config conflicts with the base checkpoint {init_from} on {conflicts}: the architecture "
                "comes from the base, so drop model.config (or these keys) from the config"
            )
        for name in NOT_ARCHITECTURE:
            setattr(base_config, name, getattr(config, name))
    return base_config, state, ckpt


def lineage_of(init_from: str, ckpt: dict) -> dict:
    """Where a continued pretraining began: the base's path, and for an lm checkpoint its sha256, tokens and step
    and its own lineage."""
    base = {"path": str(Path(init_from).resolve())}
    if ckpt:
        base["sha256"] = file_sha256(init_from)
        base["tokens_seen"] = ckpt.get("tokens_seen")
        base["global_step"] = ckpt.get("global_step")
        base["base_lineage"] = ckpt.get("lineage")
    return base
