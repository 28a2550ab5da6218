"""One GPT, two block flavours, read top to bottom.

Design choices:
- "classic" is GPT-2: learned positions, pre-norm LayerNorm with bias, GELU (tanh) MLP, biases everywhere.
  "modern" swaps in RoPE, RMSNorm, a SwiGLU MLP and drops biases. Parameter names are shared, so the
  training module, checkpoints and the Hugging Face adapters do not care which flavour they hold. Knobs of the
  config change a block further: the MLP's activation, QK-norm, a soft cap on the output logits, learnable
  residual scalars (x ← λ_resid · x + λ_x0 · x0 before each block), zero-initialised output projections and
  value embeddings (per-layer token tables added to the attention values, gated per head; resolved at build time
  to each layer's table, as windows are).
- Attention is torch's scaled_dot_product_attention (flash / memory-efficient kernels where available) under a
  plain causal mask. Document masking and sliding windows (config knobs, resolved at build time to each layer's
  window) build one mask per forward pass, shared by the layers, in lm/model/attention.py, which also picks the
  kernel (FlexAttention on CUDA, SDPA with a boolean mask elsewhere).
- The vocabulary may be padded (50257 → 50304) for faster matmuls; logits are cut back to the real
  vocabulary before the loss and sampling, so padded ids can never be predicted.
- A preallocated KV cache makes generation linear in its length.
- `activation_checkpointing` (a training setting, not architecture) recomputes each block in the backward pass.
"""

import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lm.data.tokenizer import EOT
from lm.errors import UserError
from lm.model.attention import Mask, attend, layout, resolve_backend
from lm.model.config import ModelConfig
from lm.model.loss import cross_entropy

LOSS_CHUNK_TOKENS = 4096  # tokens per pass through the output layer in the loss (see lm/model/loss.py)
VE_GATE_CHANNELS = 32  # a value embedding's gate reads the first channels of the block's input (nanochat's)


def rope_cache(config: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (block_size, head_dim) in the rotate-half layout (the one Llama checkpoints use)."""
    inv_freq = 1.0 / (
        config.rope_theta ** (torch.arange(0, config.head_dim, 2, device=device).float() / config.head_dim)
    )
    freqs = torch.outer(torch.arange(config.block_size, device=device).float(), inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x (B, nh, T, hs) by cos/sin of (T, hs), or (B, 1, T, hs) when positions differ between rows."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).type_as(x)


class KVCache(nn.Module):
    """Keys and values of past positions, preallocated for `max_len` tokens."""

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch_size, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.size(2)
        self.k[:, :, pos : pos + T] = k
        self.v[:, :, pos : pos + T] = v
        return self.k[:, :, : pos + T], self.v[:, :, : pos + T]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, value_embedding: bool = False):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.dropout = config.dropout
        self.qkv_rows = (config.n_embd, config.kv_dim, config.kv_dim)  # c_attn's output rows: q, k, v
        self.c_attn = nn.Linear(config.n_embd, sum(self.qkv_rows), bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        if value_embedding:  # one gate per key/value head, from the first channels of the input
            self.ve_gate = nn.Linear(min(VE_GATE_CHANNELS, config.n_embd), config.kv_heads, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:
            self.q_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps)
            self.k_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps)
        self.qk_norm = config.qk_norm
        self.cache: KVCache | None = None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        pos: int,
        mask: Mask,
        ve: torch.Tensor | None = None,
    ):
        """`ve` (B, T, kv width): this layer's value embedding of the tokens, added to the values before caching."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.qkv_rows, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim)  # (B, T, nh, hs)
        k, v = (t.view(B, T, self.n_kv_head, self.head_dim) for t in (k, v))  # (B, T, n_kv, hs)
        if ve is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate.in_features]))  # (B, T, n_kv); 1 at init
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs), k and v (B, n_kv, T, hs)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.cache is not None:
            if pos > 0 and T > 1:
                raise ValueError("the KV cache takes a prompt at position 0, then one token at a time")
            k, v = self.cache.update(pos, k, v)  # (B, n_kv, pos + T, hs)
        y = attend(q, k, v, mask, self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """SwiGLU (gate and up projections fused into c_fc), or two layers with GELU (tanh) or squared ReLU between."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.activation = config.activation
        fc_out = 2 * config.hidden_size if self.activation == "swiglu" else config.hidden_size
        self.c_fc = nn.Linear(config.n_embd, fc_out, bias=config.bias)
        self.c_proj = nn.Linear(config.hidden_size, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c_fc(x)
        if self.activation == "swiglu":
            gate, up = x.chunk(2, dim=-1)
            x = F.silu(gate) * up
        elif self.activation == "gelu":
            x = F.gelu(x, approximate="tanh")
        else:
            x = F.relu(x).square()
        return self.dropout(self.c_proj(x))


def norm(config: ModelConfig) -> nn.Module:
    if config.block == "classic":
        return nn.LayerNorm(config.n_embd, eps=config.norm_eps)
    return nn.RMSNorm(config.n_embd, eps=config.norm_eps)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, value_embedding: bool = False):
        super().__init__()
        self.ln_1 = norm(config)
        self.attn = CausalSelfAttention(config, value_embedding)
        self.ln_2 = norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope, pos, mask, ve=None):
        x = x + self.attn(self.ln_1(x), rope, pos, mask, ve)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.layer_value_embeds = config.layer_value_embeddings()  # each layer's value-embedding table (or None)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config, table is not None) for table in self.layer_value_embeds),
                ln_f=norm(config),
            )
        )
        if config.block == "classic":
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:
            cos, sin = rope_cache(config)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        tables = len({table for table in self.layer_value_embeds if table is not None})
        if tables:  # lookups, not matmuls: embeddings for the optimizer and the counts below
            self.transformer.ve = nn.ModuleList(nn.Embedding(config.vocab_size, config.kv_dim) for _ in range(tables))
        self.layer_windows = config.layer_windows()  # each layer's attention window (None: full context)
        self.eot = EOT if config.attention_mask == "document" else None  # the token that starts a document
        self.cache_doc_start: torch.Tensor | None = None  # (B,) start of each row's open document in the KV cache
        if config.residual_scalars:  # separate parameters: 1-D, so AdamW's no-decay group (lm/optim/build.py)
            self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))  # λ_resid of each layer
            self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))  # λ_x0 of each layer
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        self.activation_checkpointing = False  # keep only block inputs for backward; recompute the rest
        self.loss_chunk_tokens = LOSS_CHUNK_TOKENS  # 0: the loss from the whole batch's logits at once
        # Counted now, from whole tensors: under FSDP each rank's parameters later hold only its shard.
        padding = (config.padded_vocab_size - config.vocab_size) * config.n_embd
        self._num_params = sum(p.numel() for p in self.parameters()) - padding * (1 if config.tie_embeddings else 2)
        positions = self.transformer.wpe.weight.numel() if "wpe" in self.transformer else 0
        values = sum(table.weight.numel() for table in self.transformer.ve) if tables else 0
        lookups = config.vocab_size * config.n_embd + positions + values
        # The embedding tables and the output layer (tied or not): what a scaling law's N leaves out.
        self._embedding_params = lookups + (0 if config.tie_embeddings else config.vocab_size * config.n_embd)
        # Weights that take part in a matmul: all but the lookups, the output layer counted once (tied or not).
        output_layer = config.vocab_size * config.n_embd if config.tie_embeddings else 0
        self._matmul_params = self._num_params - lookups + output_layer

    def _init_weights(self, module: nn.Module):
        """Every parameter's init, GPT-2's unless a knob says otherwise:

        | parameters                                 | init                                                         |
        |--------------------------------------------|--------------------------------------------------------------|
        | Linear weights                             | N(0, 0.02)                                                   |
        | output projections (attn/mlp c_proj)       | N(0, 0.02 / √(2 · n_layer)); 0 with zero_init_proj           |
        | biases                                     | 0                                                            |
        | value-embedding gates (attn.ve_gate)       | 0: each gate 2 · sigmoid(0) = 1                              |
        | embeddings (tokens, positions, values)     | N(0, 0.02)                                                   |
        | norm gains; residual scalars λ_resid, λ_x0 | 1; 1 and 0 (set where they are built)                        |
        """
        if module in self._value_gates():
            nn.init.zeros_(module.weight)  # each gate 2 · sigmoid(0) = 1
        elif isinstance(module, nn.Linear):
            std = 0.02
            if module in self._residual_projections():
                std = 0.0 if self.config.zero_init_proj else std / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _residual_projections(self) -> set[nn.Module]:
        return {m for block in self.transformer.h for m in (block.attn.c_proj, block.mlp.c_proj)}

    def _value_gates(self) -> set[nn.Module]:
        return {block.attn.ve_gate for block in self.transformer.h if hasattr(block.attn, "ve_gate")}

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, pos: int = 0, z_loss: float | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Mean next-token cross-entropy (fp32) when `targets` is given, else logits (B, T, vocab_size).

        With `z_loss` (a coefficient, also 0) and targets: the pair (cross-entropy + z-loss, z-loss), the z-loss being
        PaLM's `z_loss · mean(log Z²)` over the tokens (lm/model/loss.py), returned alone too for logging.
        `pos` is the position of idx[:, 0]; it is non-zero only while decoding with the KV cache.
        """
        B, T = idx.size()
        if pos + T > self.config.block_size:
            raise ValueError(f"sequence of {pos + T} tokens exceeds the context of {self.config.block_size}")
        # Positions (restarting at each document under document masking) and one mask per window, for all layers.
        caching = self.transformer.h[0].attn.cache is not None
        backend = "sdpa" if caching else resolve_backend(self.config.attention_backend, idx.device, self.config.dropout)
        attn = layout(idx, pos, self.layer_windows, self.eot, backend, self.cache_doc_start if caching else None)
        if caching and attn.doc_start is not None:
            self.cache_doc_start = attn.doc_start[:, -1]
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.block == "classic":
            x = x + self.transformer.wpe(attn.positions)
        else:
            rope = self.rope_cos[attn.positions], self.rope_sin[attn.positions]  # (T, hs), or (B, T, hs) per row
            if attn.positions.dim() == 2:
                rope = rope[0].unsqueeze(1), rope[1].unsqueeze(1)  # (B, 1, T, hs): broadcast over heads
        x0 = x = self.transformer.drop(x)  # x0: the block input that residual scalars mix back in
        for i, (block, window, table) in enumerate(
            zip(self.transformer.h, self.layer_windows, self.layer_value_embeds)
        ):
            mask = attn.masks[window]
            ve = None if table is None else self.transformer.ve[table](idx)  # (B, T, kv width)
            if self.config.residual_scalars:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, rope, pos, mask, ve, use_reentrant=False)
            else:
                x = block(x, rope, pos, mask, ve)
        x = self.transformer.ln_f(x)
        c = self.config
        if targets is not None and self.loss_chunk_tokens:
            # Through the output layer a chunk of tokens at a time (lm/model/loss.py): the value and gradients of the
            # cross-entropy below, without ever holding the (B, T, vocab) logits.
            hidden, chunk = x.flatten(0, 1), self.loss_chunk_tokens
            loss, z = cross_entropy(
                hidden, self.lm_head.weight, targets.flatten(), c.vocab_size, chunk, c.logit_softcap, z_loss or 0.0
            )
            return loss if z_loss is None else (loss, z)
        logits = self.lm_head(x)[..., : c.vocab_size]  # (B, T, vocab_size); padding never predicted
        if c.logit_softcap:
            logits = c.logit_softcap * torch.tanh(logits / c.logit_softcap)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        if not z_loss:
            return loss if z_loss is None else (loss, torch.zeros_like(loss))
        z = z_loss * logits.float().logsumexp(dim=-1).square().mean()
        return loss + z, z.detach()

    # ---- counting ------------------------------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters of the unpadded model (padding rows of the vocabulary not counted; tied weights once); with
        `non_embedding`, those of the blocks, the final norm and the residual scalars only: no token, position or
        value-embedding table, no output layer (Kaplan et al. 2020's N, which scaling laws use: at small sizes the
        vocabulary's tables dominate the count)."""
        return self._num_params - self._embedding_params if non_embedding else self._num_params

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6 per matmul weight + 12·H·Q·T per layer for attention (PaLM, appendix B).

        Embedding lookups (tokens, positions, value embeddings) do no matmul, so they are left out; the output layer
        is one (vocab × n_embd) matmul whether or not it shares the embedding's weights. Attention is counted for the
        full T × T score matrix (as FlashAttention's and PaLM's counts do), not the causal half; a layer with a
        sliding window of w tokens counts min(T, w) keys per query. Document masking is not subtracted (it depends on
        the data).
        """
        c = self.config
        T = seq_len or c.block_size
        keys = sum(min(T, window or T) for window in c.layer_windows())
        return 6 * self._matmul_params + 12 * c.n_head * c.head_dim * keys

    # ---- generation ----------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yields the next token (B,) for each step; temperature 0 is greedy. The caller decides when to stop.

        With the cache, the prompt is encoded once and each step costs one token. When the context fills
        up, the cache is rebuilt from the last half of the context (without it, the window slides by one).
        """
        check_sampling(temperature, top_k, top_p)
        block_size = self.config.block_size
        cache_len = None  # tokens held in the KV cache
        try:
            for _ in range(max_new_tokens):
                if not use_cache:
                    logits = self(idx[:, -block_size:])
                elif cache_len is None or cache_len == block_size:
                    window = idx[:, -(block_size if cache_len is None else block_size // 2) :]
                    self._set_kv_cache(idx.size(0), idx.device)
                    logits = self(window)
                    cache_len = window.size(1)
                else:
                    logits = self(idx[:, -1:], pos=cache_len)
                    cache_len += 1
                next_token = sample(logits[:, -1, :], temperature, top_k, top_p, generator)
                idx = torch.cat((idx, next_token[:, None]), dim=1)
                yield next_token
        finally:
            self._set_kv_cache(None)

    def _set_kv_cache(self, batch_size: int | None, device=None):
        c = self.config
        self.cache_doc_start = None if batch_size is None else torch.zeros(batch_size, dtype=torch.long, device=device)
        for block in self.transformer.h:
            block.attn.cache = (
                None
                if batch_size is None
                else KVCache(batch_size, c.kv_heads, c.block_size, c.head_dim, self.lm_head.weight.dtype, device)
            )


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """One-line errors for sampling settings that mean nothing, before any token is generated."""
    if temperature < 0:
        raise UserError(f"temperature must be ≥ 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 0:
        raise UserError(f"top_k must be ≥ 0 (0 or null: no top-k), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1] (null: no nucleus sampling), got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """(B, vocab) logits with the tokens that top-k and top-p (nucleus) rule out set to -inf.

    top_k keeps the k largest logits and any tied with the k-th; 0 or None turns it off. top_p keeps the smallest
    set of most likely tokens whose probability reaches top_p: going up from the least likely, tokens are dropped
    while their cumulative probability is at most 1 - top_p (transformers' rule, so the same tokens survive, ties
    included). The most likely token always stays.
    """
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        ascending, order = logits.sort(dim=-1)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        drop[:, -1] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draws one token per row from (B, vocab) logits; temperature 0 means argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
