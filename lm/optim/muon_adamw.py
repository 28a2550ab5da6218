"""Muon for the blocks' weight matrices and AdamW for everything else, as one optimizer.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers") orthogonalizes each weight matrix's momentum with
a few Newton-Schulz iterations (lm.optim.muon adds its variants); it is defined for 2-D matrices, so the embeddings,
the output layer, norms and biases stay with AdamW (as in the GPT-2 speedrun, nanochat and torchtitan). torch ships
both optimizers; what this module adds is only what Lightning needs and torch does not have:

- One optimizer object: Lightning's automatic optimization (accumulation, clipping, precision, checkpoints) and the
  LR scheduler drive one. `MuonAdamW` holds a Muon and a fused AdamW and shares their parameter groups, so
  the scheduler's factor scales both learning rates, and its state dict holds both states.
- Skipping a non-finite step (lm.callbacks.nonfinite): fused AdamW takes `found_inf` on the device, torch's Muon
  (and lm's) takes none, so `MuonAdamW` reads the flag on the host, once per optimizer step (one sync per
  accumulation window; AdamW alone never syncs).

Under FSDP each rank holds a shard of every matrix while Muon needs whole ones: LanguageModel refuses that pair.
"""

import torch


class MuonAdamW(torch.optim.Optimizer):
    """A Muon over the blocks' matrices and a fused AdamW over the rest, stepped together."""

    accepts_found_inf = True  # NonFiniteGuard: set `found_inf` (0./1. on the device) and a flagged step is skipped

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.AdamW):
        """
        Args:
            muon: torch.optim.Muon, or lm.optim.muon.Muon for the variants, over the blocks' weight matrices.
            adamw: Fused torch.optim.AdamW (or lm.optim.adamw.CautiousAdamW) over everything else.
        """
        self.adamw, self.muon = adamw, muon
        # The same group dicts: what the LR scheduler writes into them, both optimizers read.
        super().__init__([*self.adamw.param_groups, *self.muon.param_groups], defaults={})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        if found_inf is None or not found_inf.item():  # the host read: torch's Muon cannot skip on the device
            self.adamw.step()
            self.muon.step()
        return loss

    def state_dict(self) -> dict:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.adamw.load_state_dict(state_dict["adamw"])
        self.muon.load_state_dict(state_dict["muon"])
        # Loading gives each optimizer new group dicts: share those from now on.
        self.param_groups = [*self.adamw.param_groups, *self.muon.param_groups]
