"""The optimizer's settings, one nested dataclass (`model.optim`), as ModelConfig is the architecture's.

    model:
      optim:
        name: muon            # adamw | muon
        lr: 1.5e-3            # AdamW's peak rate; the schedule (warmup, decay, min_lr) is written in its units
        min_lr: 1.5e-4
        warmup_steps: 200
        lr_schedule: wsd      # cosine | wsd | constant
        adamw: {weight_decay: 0.1, betas: [0.9, 0.95]}
        muon: {lr: 0.02, orthogonalization: polar_express, normuon: true, split_fused: true}

Every key's default is lm's behaviour before the key existed, so a config reproduces bit-for-bit. Which paper each
Muon key follows, its formula and its cost: docs/optimization.md.
"""

import re
from dataclasses import dataclass, field
from typing import Literal

from lm.errors import UserError


@dataclass
class AdamWConfig:
    """AdamW (torch.optim.AdamW, fused): every parameter under `name: adamw`; under `name: muon` the embeddings,
    output layer, norms and biases.

    Args:
        betas: AdamW's betas.
        weight_decay: Decoupled decay, applied to ≥2-D weight matrices only (never biases or norm gains).
        decay_embeddings: Whether the token/position embeddings (and a tied output layer) are decayed too.
        cautious_weight_decay: Decay a coordinate only where the update and the weight agree in sign (Chen et al.
            2025, "Cautious Weight Decay"): the decay then never pushes a weight against its own update.
    """

    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    decay_embeddings: bool = True
    cautious_weight_decay: bool = False


@dataclass
class MuonConfig:
    """Muon for the 2-D weight matrices inside the blocks (with `name: muon`); see docs/optimization.md.

    Args:
        lr: Muon's peak rate; it follows the schedule of `model.optim.lr` (scaled by muon.lr / optim.lr).
        momentum: (Nesterov) momentum.
        weight_decay: Decoupled weight decay of the block matrices: w ← w · (1 − lr · λ) each step. 0, as in the
            GPT-2 speedrun's Muon.
        orthogonalization: "newton_schulz": Jordan et al. 2024's quintic iteration, 5 steps of one fixed
            polynomial (torch.optim.Muon's); "polar_express": Amsel et al. 2025's 5 per-iteration polynomials.
        normuon: Normalize each neuron's (row's) orthogonalized update by a running RMS, keeping the update's norm
            (Li et al. 2025, NorMuon, as its reference code scales it).
        cautious_weight_decay: Decay only where the update and the weight agree in sign (Chen et al. 2025).
        lr_scaling: The rate each matrix gets from `lr`: "original" lr · √max(1, rows / cols) (Jordan et al.);
            "match_rms_adamw" lr · 0.2 · √max(rows, cols) (Liu et al. 2025, Moonlight: the update's RMS is AdamW's,
            so one rate serves both and every width).
        orthogonalization_dtype: The dtype the orthogonalization runs in: "bfloat16" (torch.optim.Muon's, the
            papers'; fast on GPUs) or "float32", for CPUs without bfloat16 matrix units, where bfloat16 matmuls are
            emulated (a width-256 Muon step 54× slower here: docs/performance.md). The two differ by bfloat16's
            rounding only; the iteration and its coefficients are the same.
        split_fused: Treat the fused Q, K, V (attn.c_attn) and SwiGLU gate and up (mlp.c_fc) as the separate
            matrices they are: their update is orthogonalized, normalized and scaled per part. Weights and
            checkpoints keep the fused layout. The recipes turn it on; false is lm's behaviour before the key.
    """

    lr: float = 0.02
    momentum: float = 0.95
    weight_decay: float = 0.0
    orthogonalization: Literal["newton_schulz", "polar_express"] = "newton_schulz"
    normuon: bool = False
    cautious_weight_decay: bool = False
    lr_scaling: Literal["original", "match_rms_adamw"] = "original"
    orthogonalization_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    split_fused: bool = False

    def is_torch_muon(self) -> bool:
        """Whether torch.optim.Muon runs these settings itself (lm's own Muon step is needed for the rest)."""
        return (
            self.orthogonalization == "newton_schulz"
            and self.orthogonalization_dtype == "bfloat16"
            and not (self.normuon or self.cautious_weight_decay or self.split_fused)
        )


@dataclass
class OptimConfig:
    """The optimizer and its learning-rate schedule.

    Args:
        name: "adamw": AdamW for every parameter. "muon": Muon for the 2-D weight matrices inside the blocks, AdamW
            for the rest (embeddings, output layer, norms, biases).
        lr: AdamW's peak learning rate, reached after `warmup_steps`; Muon's rate follows the same schedule.
        min_lr: Final learning rate of the cosine / WSD decay.
        warmup_steps: Linear warmup from ~0 to `lr`.
        lr_schedule: "cosine" decays to `min_lr` over the run; "wsd" holds `lr`, then decays linearly over the
            last `decay_fraction` of steps; "constant" holds `lr` after warmup.
        decay_fraction: Share of the run spent decaying under "wsd".
        lr_width: The width (n_embd) the rates were tuned at: the rates then follow the model's width, every AdamW
            rate (and `min_lr`) × lr_width / n_embd — Adam's rule for hidden weights in µP (Yang et al. 2022), here on
            every AdamW parameter, a simplification — and Muon's under `muon.lr_scaling: match_rms_adamw` too (its
            update's RMS is AdamW's); under "original" Muon's rate already depends on each matrix's shape and is left
            as it is. null: the rates as written, at every width (lm's behaviour before the key).
        adamw: AdamW's settings.
        muon: Muon's settings (read with name: muon).
    """

    name: Literal["adamw", "muon"] = "adamw"
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 2000
    lr_schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = 0.2
    lr_width: int | None = None
    adamw: AdamWConfig = field(default_factory=AdamWConfig)
    muon: MuonConfig = field(default_factory=MuonConfig)

    @classmethod
    def from_dict(cls, values: dict) -> "OptimConfig":
        """The config a checkpoint's hyper-parameters hold (plain dicts, so they load with weights_only=True)."""
        values = dict(values)
        adamw, muon = dict(values.pop("adamw", {})), values.pop("muon", {})
        if "betas" in adamw:
            adamw["betas"] = tuple(adamw["betas"])
        return cls(**values, adamw=AdamWConfig(**adamw), muon=MuonConfig(**muon))

    def check(self) -> None:
        """One line for a negative rate, step count or decay, before anything is built."""
        for key, value in (
            ("lr", self.lr),
            ("min_lr", self.min_lr),
            ("warmup_steps", self.warmup_steps),
            ("adamw.weight_decay", self.adamw.weight_decay),
            ("muon.lr", self.muon.lr),
            ("muon.weight_decay", self.muon.weight_decay),
            ("muon.momentum", self.muon.momentum),
        ):
            if value < 0:
                raise UserError(f"model.optim.{key} must be ≥ 0, got {value}")
        if self.lr_width is not None and self.lr_width <= 0:
            raise UserError(f"model.optim.lr_width must be a positive width (or null), got {self.lr_width}")


# LanguageModel's flat optimizer arguments before model.optim existed, and where each one lives now.
RENAMED = {
    "optimizer": "optim.name",
    "lr": "optim.lr",
    "min_lr": "optim.min_lr",
    "warmup_steps": "optim.warmup_steps",
    "lr_schedule": "optim.lr_schedule",
    "decay_fraction": "optim.decay_fraction",
    "weight_decay": "optim.adamw.weight_decay",
    "betas": "optim.adamw.betas",
    "decay_embeddings": "optim.adamw.decay_embeddings",
    "muon_lr": "optim.muon.lr",
    "muon_weight_decay": "optim.muon.weight_decay",
    "muon_momentum": "optim.muon.momentum",
}


def migrate_hparams(hparams: dict) -> dict:
    """A checkpoint's hyper-parameters with the flat optimizer keys of lm before model.optim moved into `optim`
    (a checkpoint written since is returned as it is)."""
    if not RENAMED.keys() & hparams.keys():
        return hparams
    hparams, optim = dict(hparams), {}
    for old, new in RENAMED.items():
        if old in hparams:
            *parents, leaf = new.split(".")[1:]
            node = optim
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = hparams.pop(old)
    hparams["optim"] = optim
    return hparams


def renamed_key_error(message: str) -> UserError | None:
    """A one-line error naming the new key, when a config parser's `message` rejects an old flat key."""
    for old in re.findall(r"\bmodel\.(\w+)\b(?!\.)", message):
        if old in RENAMED:
            return UserError(
                f"model.{old} is now model.{RENAMED[old]} (the optimizer's settings moved under model.optim)"
            )
    return None
