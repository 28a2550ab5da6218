"""AdamW with cautious weight decay (Chen et al. 2025, "Cautious Weight Decay"), which torch's AdamW lacks.

Decoupled decay shrinks every decayed weight, w ← w − η λ w, also where the Adam update is pushing that weight
away from zero. Cautious decay applies it only where the update u (w ← w − η u) and the weight agree in sign:

    w ← w − η u − η λ w ⊙ 1(u ⊙ w > 0)

torch's (fused) AdamW computes u inside its kernel, so the step here runs it with the decay off and reads the sign
of u from the weight's change, w_after − w_before = −η u. The cost: a copy of the decayed weights during the step.
A step the kernel skips (found_inf, lm.callbacks.nonfinite) changes no weight, so it decays none either.
"""

import torch


class CautiousAdamW(torch.optim.AdamW):
    """torch.optim.AdamW whose groups' `weight_decay` is applied cautiously (module docstring)."""

    @torch.no_grad()
    def step(self, closure=None):
        decays = [group["weight_decay"] for group in self.param_groups]
        before = [
            [p.clone() for p in group["params"]] if decay else [] for group, decay in zip(self.param_groups, decays)
        ]
        for group in self.param_groups:
            group["weight_decay"] = 0.0
        try:
            loss = super().step(closure)
        finally:
            for group, decay in zip(self.param_groups, decays):
                group["weight_decay"] = decay
        for group, decay, weights in zip(self.param_groups, decays, before):
            for p, w in zip(group["params"], weights):
                agree = (p - w) * w < 0  # −η u ⊙ w < 0: u and w agree in sign
                p.addcmul_(w, agree.to(w.dtype), value=-group["lr"] * decay)
        return loss
