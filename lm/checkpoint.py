"""Reading checkpoints safely, and rebuilding a model from one file or a Hugging Face directory.

Every load uses `weights_only=True`: a checkpoint from a stranger cannot run code. Ours hold only tensors
and plain Python values (the model config is stored as a dict), so they load that way.

A checkpoint of a run with weight averaging (lm/callbacks/averaging.py) also holds the averaged weights under
AVERAGED; `weights="ema"` loads those instead of the trained ones.
"""

import hashlib
import pickle
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
