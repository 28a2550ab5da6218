"""Per parameter group: the gradient norm, the update norm and the update/weight ratio, at logging steps only.

What researchers read when a run misbehaves (torchtitan, OLMo, gpt-neox log the same): a group whose gradient norm
jumps, or whose updates grow against its weights (update/weight ratios of ~1e-3 per step are typical for AdamW),
points at the layers and the rate to look at. The groups are the optimizer's, by their "name" (AdamW's `decay`
and `no_decay`, Muon's `muon`), so the numbers follow the optimizer's own split.

Only at the steps the logger writes (one in trainer.log_every_n_steps): there the weights of each group are copied
before the optimizer step (transient memory: one copy of the weights) and subtracted after it; the gradient norm
is taken before clipping (as `train/grad_norm`). Everything is computed on the device and read by the logger with
the other metrics: no host read between logging steps. A skipped step (non-finite, or a loss spike) shows an
update of 0. Under FSDP the squared norms of each rank's shards are summed by one all-reduce. Logged as
`diag/<group>/grad_norm`, `diag/<group>/update_norm` and `diag/<group>/update_ratio` (update norm / weight norm).
"""

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy


class TrainingDiagnostics(L.Callback):
    def __init__(self, enabled: bool = False):
        """
        Args:
            enabled: Log the gradient norm, update norm and update/weight ratio of every parameter group at the
                logging steps. Off by default.
        """
        self.enabled = enabled
        self.groups: list[tuple[str, list[torch.Tensor]]] = []  # (name, parameters) of the step being made
        self.before: list[list[torch.Tensor]] = []  # their weights before it, then minus their weights after it
        self.grad_squares: list[torch.Tensor] = []  # each group's squared gradient norm

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if (trainer.global_step + 1) % trainer.log_every_n_steps:  # not a step the logger writes
            return
        self.groups = [
            (group.get("name", f"group{i}"), group["params"]) for i, group in enumerate(optimizer.param_groups)
        ]
        self.before = [[p.detach().clone() for p in params] for _, params in self.groups]
        self.grad_squares = [
            torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).square()
            for _, params in self.groups
        ]

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.groups:
            return
        squares = []
        for (_, params), before, grad_square in zip(self.groups, self.before, self.grad_squares):
            torch._foreach_sub_(before, [p.detach() for p in params])  # −update
            update_square = torch.nn.utils.get_total_norm(before).square()
            weight_square = torch.nn.utils.get_total_norm(params).square()
            squares.append(torch.stack([grad_square, update_square, weight_square]))
        squares = torch.stack(squares)
        if isinstance(trainer.strategy, FSDPStrategy):  # each rank holds shards: sum the squares over ranks
            torch.distributed.all_reduce(squares)
        norms = squares.sqrt()
        metrics = {}
        for (name, _), (grad, update, weight) in zip(self.groups, norms):
            metrics |= {
                f"diag/{name}/grad_norm": grad,
                f"diag/{name}/update_norm": update,
                f"diag/{name}/update_ratio": update / weight,
            }
        pl_module.log_dict(metrics)
        self.groups, self.before, self.grad_squares = [], [], []
