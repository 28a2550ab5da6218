"""The output layer and its cross-entropy, a chunk of tokens at a time: the logits of a whole batch never exist at once.

For GPT-2's 50304-wide output layer the logits dominate a training step's memory: B·T × 50304 values in the
autocast dtype, their fp32 copy, the log-softmax autograd keeps, and its gradient, about 26 GB for 32 × 1024 tokens
(against ~2 GB for the 124M model's weights, gradients and AdamW state). Here the tokens go through the output layer
`chunk` rows at a time; each chunk's softmax gives its loss and, in the same pass, the gradients of the hidden
states and of the weight (softmax − one-hot, times the other operand), so backward only scales what forward
computed and no matmul is done twice. Peak memory for the loss is one chunk's logits (chunk × vocab).

Padded vocabulary rows (50257 → 50304) take part in the matmuls, whose shapes stay multiples of 64, but their logits
are cut off before the softmax: they are never predicted and get zero gradient.

z-loss (PaLM, Chowdhery et al. 2022, section 5): `z_loss · mean(log Z²)`, log Z the log-sum-exp of a token's logits,
added to the loss keeps the softmax normalizer near 1 and the output logits from drifting (a stability aid). Its
gradient with respect to the logits is `z_loss · 2 log Z · softmax / n`, so it joins the cross-entropy's in the same
pass: softmax · (1 + 2 · z_loss · log Z) − one-hot, divided by n. A coefficient of 0 runs exactly today's operations.
"""

import torch


def log_probs(hidden: torch.Tensor, weight: torch.Tensor, vocab_size: int, softcap: float | None, z_loss: float):
    """A chunk's fp32 log-probabilities (rows, padded vocab), the padded columns -inf (probability 0); with a soft
    cap the tanh(logits / cap) it was computed from (the cap's gradient needs it), else None; with z-loss each row's
    log Z (log-sum-exp of its logits), else None."""
    logits = (hidden @ weight.t()).float()
    capped = None
    if softcap:
        capped = logits.div_(softcap).tanh_()
        logits = capped * softcap
    logits[:, vocab_size:] = float("-inf")
    logp = logits.log_softmax(dim=-1)
    # log Z = logit − log-probability, of any real token: token 0's, with no second pass over the logits.
    log_z = logits[:, 0] - logp[:, 0] if z_loss else None
    return logp, capped, log_z


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, plus the z-loss; gradients computed in forward,
    chunk by chunk. Returns (loss, z-loss part of it); the second output is for logging (no gradient flows from it).

    The operations are those autograd runs for `F.cross_entropy(logits[:, :vocab].float(), targets)` (log-softmax;
    its gradient exp(log-softmax) − one-hot, zero in the padding, times 1 − tanh² under a soft cap; the two
    matmuls), so the results agree with it to rounding.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size: int, chunk: int, softcap: float | None, z_loss: float):
        n = targets.numel()
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        z_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        for start in range(0, n, chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]
            logp, capped, log_z = log_probs(h, weight, vocab_size, softcap, z_loss)
            loss -= logp.gather(1, t[:, None]).sum()
            grad = logp.exp_()  # the softmax, in place: its gradient is softmax − one-hot, divided by n
            if log_z is not None:  # and the z-loss's: softmax · 2 · z_loss · log Z
                z_sum += log_z.square().sum()
                grad.mul_(log_z.mul_(2 * z_loss).add_(1.0)[:, None])
            grad[torch.arange(len(t), device=t.device), t] -= 1.0
            grad.div_(n)
            if capped is not None:  # through c · tanh(x / c): times 1 − tanh²
                grad.mul_(capped.square_().neg_().add_(1.0))
            grad = grad.to(weight.dtype)
            grad_hidden[start : start + chunk] = grad @ weight
            grad_weight += grad.t() @ h
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        z = z_sum.mul_(z_loss / n)
        ctx.mark_non_differentiable(z)
        return loss / n + z if z_loss else loss / n, z

    @staticmethod
    def backward(ctx, grad_loss, grad_z):
        grad_hidden, grad_weight = ctx.saved_tensors  # used once: scaled in place
        return grad_hidden.mul_(grad_loss), grad_weight.mul_(grad_loss), None, None, None, None, None


def cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    chunk: int,
    softcap: float | None = None,
    z_loss: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, z-loss) of hidden states (N, C) through the output layer `weight` (V, C): the loss is the mean
    next-token cross-entropy (fp32) plus the z-loss `z_loss · mean(log Z²)`, which is also returned alone (0 when
    `z_loss` is 0) for logging."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return ChunkedCrossEntropy.apply(hidden, weight, targets, vocab_size, chunk, softcap, z_loss)
    n, losses, z_sums = targets.numel(), [], []
    for h, t in zip(hidden.split(chunk), targets.split(chunk)):
        logp, _, log_z = log_probs(h, weight, vocab_size, softcap, z_loss)
        losses.append(-logp.gather(1, t[:, None]).sum())
        if log_z is not None:
            z_sums.append(log_z.square().sum())
    loss = torch.stack(losses).sum() / n
    if not z_loss:
        return loss, torch.zeros_like(loss)
    z = torch.stack(z_sums).sum() * (z_loss / n)
    return loss + z, z
