"""Muon's step with the variants torch.optim.Muon lacks: Polar Express, NorMuon, cautious weight decay, and one
orthogonalization per projection of a fused matrix.

torch's Muon runs the plain settings (lm.optim.build picks it then); this step runs the others. With every variant
off it is torch's step, operation for operation (tests/optim/test_muon.py checks the weights bit for bit): the
Newton-Schulz iteration and the rate scaling are torch's own functions. torch orthogonalizes in bfloat16 only; the
float32 iteration here is for CPUs without bfloat16 matrix units (13× faster at width 320: docs/performance.md).

Per matrix W (rows × cols) with gradient G, momentum buffer B, rate η and decay λ:

    B ← μ B + (1 − μ) G;  U = (1 − μ) G + μ B                     (Nesterov, torch's lerp form)
    for each part U_i of U (a block of rows: Q, K, V of c_attn, gate and up of c_fc; U itself unless split):
        O_i = orth(U_i)                                         newton_schulz | polar_express, bfloat16 | float32
        O_i ← NorMuon(O_i)                                      if normuon
        W_i ← W_i − η λ W_i [⊙ 1(O_i ⊙ W_i > 0) if cautious]
        W_i ← W_i − scale(η, shape of U_i) O_i                  original | match_rms_adamw
"""

import torch
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, DEFAULT_NS_STEPS, EPS, _adjust_lr
from torch.optim._muon import _zeropower_via_newtonschulz as newton_schulz

NEWTON_SCHULZ = ((DEFAULT_A, DEFAULT_B, DEFAULT_C),) * DEFAULT_NS_STEPS  # Jordan et al. 2024: one quintic, 5 times
# Amsel et al. 2025, "The Polar Express: Optimal Matrix Sign Methods and Their Application to the Muon Algorithm",
# Algorithm 1: the degree-5 polynomial a x + b x³ + c x⁵ of each iteration (minimax-optimal on [1e-3, 1]), divided
# by the safety factor 1.01 (x ↦ p(x / 1.01)) for bfloat16 rounding. Muon runs the first five.
POLAR_EXPRESS_TABLE = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
)
POLAR_EXPRESS_SAFETY = 1.01
POLAR_EXPRESS = tuple(
    (a / POLAR_EXPRESS_SAFETY, b / POLAR_EXPRESS_SAFETY**3, c / POLAR_EXPRESS_SAFETY**5)
    for a, b, c in POLAR_EXPRESS_TABLE
)
NORMUON_BETA2 = 0.95  # NorMuon's second-moment decay (the paper's and its reference code's default)
NORMUON_EPS = 1e-10


def odd_quintic_iteration(
    update: torch.Tensor, polynomials: tuple[tuple[float, float, float], ...], dtype: torch.dtype, margin: float
) -> torch.Tensor:
    """The orthogonal polar factor of `update`, approximately, by iterating odd quintics on its singular values.

    The input is scaled to spectral norm < 1 by its Frobenius norm (× `margin`), then iteration i applies
    its polynomial a x + b x³ + c x⁵ to every singular value: X ← a X + (b A + c A²) X with A = X Xᵀ, on the short
    side (3 matrix products an iteration)."""
    x = update.to(dtype)
    tall = update.size(0) > update.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() * margin + EPS)
    for a, b, c in polynomials:
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def orthogonalize(update: torch.Tensor, method: str, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Newton-Schulz (Jordan et al. 2024: one quintic, 5 times) or Polar Express (Amsel et al. 2025: 5 quintics,
    the 1.01 margin), in `dtype`. Newton-Schulz in bfloat16 is torch.optim.Muon's own function."""
    if method == "polar_express":
        return odd_quintic_iteration(update, POLAR_EXPRESS, dtype, margin=POLAR_EXPRESS_SAFETY)
    if dtype == torch.bfloat16:
        return newton_schulz(update, (DEFAULT_A, DEFAULT_B, DEFAULT_C), DEFAULT_NS_STEPS, EPS)
    return odd_quintic_iteration(update, NEWTON_SCHULZ, dtype, margin=1.0)


def normuon(update: torch.Tensor, second_moment: torch.Tensor) -> torch.Tensor:
    """NorMuon (Li et al. 2025): each row (output neuron) of the orthogonalized update divided by the running RMS
    of its entries, then the whole rescaled to the Frobenius norm it had, as NorMuon's reference code does (its
    paper instead sets the norm to 0.2 · √(rows · cols), AdamW's RMS: lr_scaling match_rms_adamw gives that for
    an exactly orthogonal update). The rescaling also makes a bias correction of `second_moment` unnecessary.
    `second_moment` (rows × 1, float32) is updated in place."""
    update = update.float()
    norm = update.norm()
    second_moment.lerp_(update.square().mean(dim=1, keepdim=True), 1 - NORMUON_BETA2)
    update = update / (second_moment.sqrt() + NORMUON_EPS)
    return update * (norm / (update.norm() + NORMUON_EPS))


class Muon(torch.optim.Optimizer):
    """Muon with lm's variants (module docstring); a group's `split` (default None: whole) lists the rows of each
    block of rows its matrices hold (q, k, v of c_attn), each updated as a matrix of its own."""

    def __init__(
        self,
        params,
        lr: float,
        momentum: float,
        weight_decay: float,
        orthogonalization: str = "newton_schulz",
        normuon: bool = False,
        cautious_weight_decay: bool = False,
        lr_scaling: str = "original",
        orthogonalization_dtype: torch.dtype = torch.bfloat16,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            orthogonalization=orthogonalization,
            normuon=normuon,
            cautious_weight_decay=cautious_weight_decay,
            lr_scaling=lr_scaling,
            orthogonalization_dtype=orthogonalization_dtype,
            split=None,
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        """Groups of optimizer states saved before `orthogonalization_dtype` existed ran in bfloat16."""
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("orthogonalization_dtype", torch.bfloat16)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p, group)
        return loss

    def update(self, p: torch.Tensor, group: dict) -> None:
        state, lr, decay = self.state[p], group["lr"], group["lr"] * group["weight_decay"]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
            if group["normuon"]:
                state["second_moment"] = torch.zeros(p.size(0), 1, device=p.device)
        buffer = state["momentum_buffer"]
        buffer.lerp_(p.grad, 1 - group["momentum"])
        update = p.grad.lerp(buffer, group["momentum"])
        rows = row_blocks(group["split"], p.size(0))
        moments = state["second_moment"].split(rows) if group["normuon"] else [None] * len(rows)
        for weight, part, moment in zip(p.split(rows), update.split(rows), moments):
            direction = orthogonalize(part, group["orthogonalization"], group["orthogonalization_dtype"])
            if moment is not None:
                direction = normuon(direction, moment)
            if group["cautious_weight_decay"]:
                weight.addcmul_(weight, (direction * weight > 0).to(weight.dtype), value=-decay)
            else:
                weight.mul_(1 - decay)
            weight.add_(direction, alpha=-_adjust_lr(lr, group["lr_scaling"], part.shape))


def row_blocks(split: tuple[int, ...] | int | None, rows: int) -> tuple[int, ...]:
    """A group's `split` as the rows of each block: None is the whole matrix; an int n (what checkpoints saved before
    grouped-query attention, whose optimizer state restores the groups' settings) is n blocks of equal size."""
    if split is None or isinstance(split, int):
        return (rows // (split or 1),) * (split or 1)
    return tuple(split)
