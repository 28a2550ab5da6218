"""Which keys each query may attend to, and the kernels that compute attention under that mask.

Design choices:
- One rule for every mask: query i of a row attends to key j when `start[i] <= j <= i` and `i - j < window`.
  `start[i]` is where i's document begins (0 under plain causal masking), so a token sees only earlier tokens of
  its own document; `window` (a layer's sliding window, in tokens, the query itself included) lets it see at most
  the `window` most recent of them. Documents are contiguous, so "same document" needs no per-key document id.
- <|endoftext|> (EOT) *starts* the document that follows it: it is that document's first token (position 0), as
  a BOS is, so a row the BOS-aligned packer starts with EOT holds whole documents, and the last token of a
  document predicts the EOT that ends it from inside its own document. Tokens before a row's first EOT (a stream
  window cut mid-document) are one document that starts at the row's first token.
- Document starts come from the input ids on the device (a cumulative max), so no host sync is needed.
- `Layout` is computed once per forward pass: each token's position in its document (RoPE and learned positions
  restart at every document) and one mask per distinct window, shared by every layer that has that window.
- Backends: plain causal attention without windows keeps SDPA's `is_causal=True` kernels. Other masks use
  FlexAttention on CUDA (a block mask per batch, built with the batch size: a block mask built with B=None would
  give every row the first row's documents) and SDPA with a boolean mask elsewhere (FlexAttention has no backward
  on a CPU). `torch.nn.attention.varlen.varlen_attn` is not used: its `cu_seqlens` change length with the number of
  documents in a batch, which costs a host sync or a recompilation per batch (see docs/performance.md).
- KV-cache decoding uses SDPA boolean masks on every backend (one query row per step), with the document start of
  each row carried from step to step.
"""

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from lm.errors import UserError

Mask = torch.Tensor | BlockMask | None  # None: plain causal (SDPA's is_causal)


@dataclass
class Layout:
    """What every layer of one forward pass shares: token positions and one attention mask per window."""

    positions: torch.Tensor  # (T,) or, with document masking, (B, T): each token's position in its document
    doc_start: torch.Tensor | None  # (B, T): index where each token's document starts; None under plain causal
    masks: dict[int | None, Mask]  # window (None: full context) → mask


def document_starts(idx: torch.Tensor, eot: int, pos: int = 0, carried: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) index at which each token's document starts; idx[:, 0] sits at index `pos` (KV-cache decoding), and
    `carried` (B,) is where the document open before idx started (0 if none)."""
    index = torch.arange(pos, pos + idx.size(1), device=idx.device)
    starts = torch.where(idx == eot, index, 0).cummax(dim=1).values
    return starts if carried is None else torch.maximum(starts, carried[:, None])


def allowed(doc_start: torch.Tensor | None, window: int | None, q_index: torch.Tensor, k_index: torch.Tensor):
    """Boolean mask (…, T, S): may query q_index[i] attend to key k_index[j]? `doc_start` is (B, T) or None."""
    q, k = q_index[:, None], k_index[None, :]
    keep = k <= q
    if window is not None:
        keep = keep & (q - k < window)
    if doc_start is not None:
        keep = keep & (k >= doc_start[:, :, None])  # (B, T, S)
    return keep


def resolve_backend(requested: str, device: torch.device, dropout: float) -> str:
    """ "auto" → FlexAttention on CUDA (without attention dropout, which it lacks), SDPA elsewhere."""
    if requested == "auto":
        return "flex" if device.type == "cuda" and dropout == 0 else "sdpa"
    return requested


def layout(
    idx: torch.Tensor,
    pos: int,
    windows: list[int | None],
    eot: int | None,
    backend: str,
    carried: torch.Tensor | None = None,
) -> Layout:
    """Positions and masks of a forward pass over idx (B, T) whose first token sits at index `pos`.

    `windows` lists each layer's window (None: full); `eot` is the document separator under document masking, None
    under plain causal masking; `carried` (B,) is the start of the document open in the KV cache, if any.
    """
    B, T = idx.shape
    S = pos + T  # keys: the cached ones and these
    index = torch.arange(pos, S, device=idx.device)
    doc_start = None if eot is None else document_starts(idx, eot, pos, carried)
    positions = index if doc_start is None else index - doc_start
    masks = {}
    for window in set(windows):
        effective = None if window is None or window >= S else window  # a window holding every key is full
        if effective is None and doc_start is None and backend == "sdpa":
            masks[window] = None
        elif backend == "flex" and pos == 0:
            masks[window] = block_mask(doc_start, effective, B, T, idx.device)
        else:
            masks[window] = allowed(doc_start, effective, index, torch.arange(S, device=idx.device)).unsqueeze(-3)
    return Layout(positions, doc_start, masks)


def block_mask(doc_start: torch.Tensor | None, window: int | None, B: int, T: int, device) -> BlockMask:
    """A FlexAttention block mask of the same rule as `allowed`, one per row when documents differ between rows."""

    def mask_mod(b, h, q, k):
        keep = k <= q
        if window is not None:
            keep = keep & (q - k < window)
        if doc_start is not None:
            keep = keep & (k >= doc_start[b, q])
        return keep

    rows = None if doc_start is None else B  # B=None would broadcast row 0's documents to every row
    return create_mask(device.type)(mask_mod, rows, None, T, T, device=device)


@functools.cache
def create_mask(device_type: str):
    """create_block_mask, compiled on CUDA (eager it evaluates the mask densely, in Python-level vmap)."""
    return torch.compile(create_block_mask) if device_type == "cuda" else create_block_mask


@functools.cache
def flex(device_type: str):
    """flex_attention, compiled on CUDA (the fused kernel; eager flex_attention is an unfused reference)."""
    return torch.compile(flex_attention) if device_type == "cuda" else flex_attention


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask, dropout: float) -> torch.Tensor:
    """Attention of q (B, nh, T, hs) over k, v (B, n_kv, S, hs) under `mask`; with fewer key/value heads than query
    heads (grouped-query attention), each serves nh / n_kv consecutive query heads (the kernels' enable_gqa)."""
    gqa = q.size(1) != k.size(1)  # only then: every kernel keeps its multi-head path
    if mask is None:  # plain causal; one new token (T = 1) attends to every cached key
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=q.size(2) > 1, enable_gqa=gqa)
    if isinstance(mask, BlockMask):
        if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
            raise UserError(
                "model.config.attention_backend: flex cannot train on a CPU (FlexAttention has no backward there): "
                "use auto or sdpa"
            )
        return flex(q.device.type)(q, k, v, block_mask=mask, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=gqa)
