"""The optimizer LanguageModel asks for by name (`model.optim`): parameter groups, AdamW, Muon and its variants, and
the learning-rate schedule.

- config.py: OptimConfig, the nested settings (`model.optim.name`, `.lr`, `.adamw.*`, `.muon.*`).
- build.py: parameter groups and build_optimizer.
- muon.py: Muon's step with the variants torch.optim.Muon lacks (Polar Express, NorMuon, cautious weight decay,
  one matrix per projection); adamw.py: AdamW with cautious weight decay.
- muon_adamw.py: MuonAdamW, both as one optimizer for Lightning.
- schedule.py: warmup, then cosine / WSD / constant.
"""

from lm.optim.build import build_optimizer, parameter_groups
from lm.optim.config import AdamWConfig, MuonConfig, OptimConfig
from lm.optim.muon_adamw import MuonAdamW
from lm.optim.schedule import check_warmup, lr_at

__all__ = [
    "AdamWConfig",
    "MuonAdamW",
    "MuonConfig",
    "OptimConfig",
    "build_optimizer",
    "check_warmup",
    "lr_at",
    "parameter_groups",
]
