"""Which parameter each optimizer takes, and the optimizer `model.optim` names.

- AdamW decays ≥2-D weights only (the embeddings and a tied output layer if adamw.decay_embeddings), never biases,
  norm gains or residual scalars: groups "decay" and "no_decay". Embeddings are the token, position and value
  embeddings (lookup tables, never Muon's).
- With name: muon, the 2-D weight matrices inside the blocks go to Muon (group "muon"), the rest to AdamW. With
  muon.split_fused, the fused matrices get groups of their own whose `split` lists the rows of each projection they
  hold: attn.c_attn (Q, K, V; K and V narrower under grouped-query attention) and a SwiGLU mlp.c_fc (gate, up).
"""

import torch

from lm.model import GPT
from lm.optim.adamw import CautiousAdamW
from lm.optim.config import OptimConfig
from lm.optim.muon import Muon
from lm.optim.muon_adamw import MuonAdamW


def fused_projections(model: GPT) -> dict[int, tuple[int, ...]]:
    """id of each fused weight matrix → the rows of each projection it stacks, in order."""
    fused = {}
    for block in model.transformer.h:
        fused[id(block.attn.c_attn.weight)] = block.attn.qkv_rows
        if block.mlp.activation == "swiglu":
            hidden = block.mlp.c_proj.in_features
            fused[id(block.mlp.c_fc.weight)] = (hidden, hidden)
    return fused


def parameter_groups(model: GPT, optim: OptimConfig) -> tuple[list[dict], list[dict]]:
    """(Muon's groups, AdamW's groups): every trainable parameter in exactly one; Muon's are empty for adamw."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    to_muon = lambda name, p: optim.name == "muon" and name.startswith("transformer.h.") and p.dim() == 2
    tables = ("transformer.wte.", "transformer.wpe.", "transformer.ve.")  # token, position and value embeddings
    embeddings = {id(p) for name, p in named if name.startswith(tables)}
    decay, no_decay = [], []
    for name, p in named:
        if not to_muon(name, p):
            decayed = p.dim() >= 2 and (optim.adamw.decay_embeddings or id(p) not in embeddings)
            (decay if decayed else no_decay).append(p)
    adamw_groups = [
        {"name": "decay", "params": decay, "weight_decay": optim.adamw.weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    splits = fused_projections(model) if optim.muon.split_fused else {}
    matrices = [p for name, p in named if to_muon(name, p)]
    muon_groups = [{"name": "muon", "params": [p for p in matrices if id(p) not in splits]}]
    for split in dict.fromkeys(splits.values()):  # one group per distinct split, in the order of the layers
        muon_groups.append(
            {"name": "muon", "params": [p for p in matrices if splits.get(id(p)) == split], "split": split}
        )
    return [group for group in muon_groups if group["params"]], adamw_groups


def build_optimizer(model: GPT, optim: OptimConfig, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW over every parameter, or with name: muon a MuonAdamW: torch.optim.Muon where it runs the settings,
    lm.optim.muon.Muon for its variants. Fused AdamW skips a step on the device when NonFiniteGuard sets
    optimizer.found_inf. `fused=False` for a GradScaler (16-mixed), which must unscale the gradients before clipping:
    fused AdamW alone would do that only inside its step."""
    muon_groups, adamw_groups = parameter_groups(model, optim)
    adamw_class = CautiousAdamW if optim.adamw.cautious_weight_decay else torch.optim.AdamW
    width = optim.lr_width / model.config.n_embd if optim.lr_width else 1.0  # the rates follow the width
    if optim.name == "adamw":
        return adamw_class(adamw_groups, lr=optim.lr * width, betas=tuple(optim.adamw.betas), fused=fused)
    # Always fused inside MuonAdamW: a GradScaler unscales the gradients before MuonAdamW's step (which does not take
    # a scaler's state), so the kernel never sees scaled ones.
    adamw = adamw_class(adamw_groups, lr=optim.lr * width, betas=tuple(optim.adamw.betas), fused=True)
    m = optim.muon
    muon_lr = m.lr * width if m.lr_scaling == "match_rms_adamw" else m.lr
    if m.is_torch_muon():
        adjust_lr_fn = None if m.lr_scaling == "original" else m.lr_scaling
        muon = torch.optim.Muon(
            muon_groups, lr=muon_lr, weight_decay=m.weight_decay, momentum=m.momentum, adjust_lr_fn=adjust_lr_fn
        )
    else:
        muon = Muon(
            muon_groups,
            lr=muon_lr,
            momentum=m.momentum,
            weight_decay=m.weight_decay,
            orthogonalization=m.orthogonalization,
            normuon=m.normuon,
            cautious_weight_decay=m.cautious_weight_decay,
            lr_scaling=m.lr_scaling,
            orthogonalization_dtype=getattr(torch, m.orthogonalization_dtype),
        )
    return MuonAdamW(muon, adamw)
