"""The model's shape, in one dataclass that a checkpoint carries so any command can rebuild the model."""

import math
from dataclasses import dataclass
from typing import Literal

from lm.data.tokenizer import EOT

ASPECT_RATIO = 64  # the `depth` dial: width per layer
HEAD_DIM = 64  # ... and the width of each attention head


@dataclass
class ModelConfig:
    """Architecture of a decoder-only transformer.

    Args:
        block: "classic" = GPT-2 (learned positions, LayerNorm, GELU, biases); "modern" = RoPE, RMSNorm,
            SwiGLU, no biases.
        depth: One dial for the model's size (as nanochat's): n_layer = depth, n_embd = 64 · depth (a fixed aspect
            ratio) and n_head = n_embd / 64 (heads of 64), so depth 12 is GPT-2 small's 12 × 768 with 12 heads; the
            MLP follows n_embd. An explicit n_layer, n_head or n_embd overrides what the dial gives. null: no dial.
        n_layer: Number of transformer blocks (default 12, or `depth`).
        n_head: Attention heads per block (default 12, or n_embd / 64 with `depth`).
        n_kv_head: Key/value heads (grouped-query attention: each serves n_head / n_kv_head query heads, and the KV
            cache shrinks by that factor); null: n_head (multi-head attention, c_attn of 3 · n_embd rows).
        n_embd: Width of the residual stream (default 768, or 64 · depth).
        block_size: Context length in tokens.
        vocab_size: Real vocabulary size (50257 for the GPT-2 BPE).
        pad_vocab_multiple: Embedding and output layer are padded to a multiple of this for faster matmuls;
            padded logits are never predicted. 1 disables padding.
        dropout: Dropout on attention weights and residual branches (0 for pretraining at scale).
        tie_embeddings: Share the token embedding with the output layer.
        mlp_hidden: MLP hidden width; default 8/3 × n_embd rounded up to 256 for SwiGLU, else 4 × n_embd.
        rope_theta: RoPE base frequency (modern only).
        norm_eps: Epsilon of LayerNorm / RMSNorm.
        mlp_activation: "swiglu" (gated SiLU, gate and up projections), "gelu" (tanh approximation, GPT-2's) or
            "relu2" (squared ReLU, as in the GPT-2 speedrun and nanochat); null: the block's own (classic gelu,
            modern swiglu).
        qk_norm: RMSNorm (with a learned gain per head dimension) on each head's queries and keys before attention
            (and before RoPE), as in Qwen3, OLMo 2 and Gemma 3: keeps attention logits bounded at high learning rates.
        logit_softcap: Cap the output logits smoothly at ±logit_softcap (c · tanh(logits / c)), as in Gemma 2 and
            the GPT-2 speedrun; null: no cap.
        attention_mask: "causal": every earlier token of the row; "document": only earlier tokens of the token's own
            document, whose positions restart at 0. <|endoftext|> (50256) starts a document: it is the first token
            of the document that follows it (see lm/model/attention.py).
        window_pattern: Which layers see a sliding window, tiled over the layers: "L" = the full context, "S" =
            the last `sliding_window` tokens ("SSSL": three windowed layers, then a full one); null: all full.
        sliding_window: Tokens an "S" layer's query sees, itself included: query i sees keys i - w + 1 … i (never
            across a document under document masking). A window no shorter than the context is full attention.
        attention_backend: "auto": PyTorch's causal SDPA kernels for plain causal attention, FlexAttention on CUDA
            for other masks, SDPA with a boolean mask elsewhere; "sdpa" or "flex" force one (flex cannot train on a
            CPU). Runtime only: it never changes what the model computes.
        residual_scalars: Learnable scalars per layer on the residual stream and on the block input x0 (the embedding
            output): x ← λ_resid · x + λ_x0 · x0 before each block (nanochat, the GPT-2 speedrun). They start at 1
            and 0, so the model starts as without them.
        zero_init_proj: Initialise the output projections of attention and MLP (attn.c_proj, mlp.c_proj) to zero
            (the GPT-2 speedrun's) instead of GPT-2's N(0, 0.02 / √(2 · n_layer)): each block starts as the identity.
        value_embeddings: Token-embedding tables (vocab × the key/value width) whose lookup of the input tokens is added
            to a layer's attention values, gated per head: v ← v + 2 · sigmoid(W · x[:32]) · table[token], x the
            block's normed input. null: none; "alternating": a table of its own for every other layer, the last
            included (nanochat's); an int n: n tables shared by the first n and the last n layers (layer i and layer
            n_layer - n + i share table i, as the GPT-2 speedrun's).
    """

    block: Literal["classic", "modern"] = "modern"
    depth: int | None = None
    n_layer: int | None = None
    n_head: int | None = None
    n_kv_head: int | None = None  # null: n_head
    n_embd: int | None = None
    block_size: int = 1024
    vocab_size: int = 50257
    pad_vocab_multiple: int = 64
    dropout: float = 0.0
    tie_embeddings: bool = True
    mlp_hidden: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    mlp_activation: Literal["swiglu", "gelu", "relu2"] | None = None
    qk_norm: bool = False
    logit_softcap: float | None = None
    attention_mask: Literal["causal", "document"] = "causal"
    window_pattern: str | None = None  # e.g. "SSSL": S = sliding_window tokens, L = full context; tiled over layers
    sliding_window: int | None = None
    attention_backend: Literal["auto", "sdpa", "flex"] = "auto"
    residual_scalars: bool = False
    zero_init_proj: bool = False
    value_embeddings: Literal["alternating"] | int | None = None  # e.g. "alternating", or 3 shared tables

    def __post_init__(self):
        if self.depth is not None and self.depth <= 0:
            raise ValueError(f"model config 'depth' must be positive (or null), got {self.depth}")
        if self.depth is None:
            dial = {"n_layer": 12, "n_embd": 768, "n_head": 12}
        else:
            width = self.n_embd or ASPECT_RATIO * self.depth
            dial = {"n_layer": self.depth, "n_embd": width, "n_head": max(1, width // HEAD_DIM)}
        for name, value in dial.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.block not in ("classic", "modern"):
            raise ValueError(f"model config 'block' must be 'classic' or 'modern', got {self.block!r}")
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "pad_vocab_multiple"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model config '{name}' must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"model config 'n_embd' ({self.n_embd}) must be divisible by 'n_head' ({self.n_head})")
        if self.n_kv_head is not None and (self.n_kv_head <= 0 or self.n_head % self.n_kv_head):
            raise ValueError(
                f"model config 'n_kv_head' ({self.n_kv_head}) must divide 'n_head' ({self.n_head}) (or be null)"
            )
        if self.block == "modern" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head size; n_embd / n_head = {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model config 'dropout' must be in [0, 1), got {self.dropout}")
        if self.mlp_activation not in (None, "swiglu", "gelu", "relu2"):
            raise ValueError(f"model config 'mlp_activation' is swiglu, gelu or relu2, not {self.mlp_activation!r}")
        if self.logit_softcap is not None and self.logit_softcap <= 0:
            raise ValueError(f"model config 'logit_softcap' must be positive (or null), got {self.logit_softcap}")
        self._check_attention()
        ve = self.value_embeddings
        if ve not in (None, "alternating") and (isinstance(ve, bool) or not isinstance(ve, int) or ve < 1):
            raise ValueError(f"model config 'value_embeddings' is null, 'alternating' or a count ≥ 1, not {ve!r}")
        if isinstance(ve, int) and 2 * ve > self.n_layer:
            raise ValueError(
                f"model config 'value_embeddings' {ve} shares a table between layer i and layer n_layer - {ve} + i: "
                f"at most n_layer / 2 = {self.n_layer // 2} tables"
            )

    def _check_attention(self):
        if self.attention_mask not in ("causal", "document"):
            raise ValueError(f"model config 'attention_mask' is causal or document, not {self.attention_mask!r}")
        if self.attention_mask == "document" and self.vocab_size <= EOT:
            raise ValueError(
                f"model config 'attention_mask: document' needs <|endoftext|> ({EOT}) in the vocabulary "
                f"(vocab_size {self.vocab_size})"
            )
        if self.attention_backend not in ("auto", "sdpa", "flex"):
            raise ValueError(f"model config 'attention_backend' is auto, sdpa or flex, not {self.attention_backend!r}")
        if self.attention_backend == "flex" and self.dropout:
            raise ValueError("model config 'attention_backend: flex' has no attention dropout: set dropout 0 or sdpa")
        if self.window_pattern is not None and (not self.window_pattern or set(self.window_pattern) - {"S", "L"}):
            raise ValueError(f"model config 'window_pattern' is made of S and L (or null), not {self.window_pattern!r}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"model config 'sliding_window' must be positive (or null), got {self.sliding_window}")
        if "S" in (self.window_pattern or "") and self.sliding_window is None:
            raise ValueError(f"model config 'window_pattern' {self.window_pattern!r} has S layers: set sliding_window")
        if self.sliding_window is not None and "S" not in (self.window_pattern or ""):
            raise ValueError("model config 'sliding_window' is set but no layer uses it: set window_pattern (e.g. 'S')")

    def layer_windows(self, sliding_window: int | None = None) -> list[int | None]:
        """Each layer's attention window in tokens (None: the full context): window_pattern tiled over the layers,
        S layers seeing `sliding_window` tokens (default: the config's; a schedule may pass a smaller one)."""
        pattern = self.window_pattern or "L"
        short = sliding_window or self.sliding_window
        return [short if pattern[i % len(pattern)] == "S" else None for i in range(self.n_layer)]

    def layer_value_embeddings(self) -> list[int | None]:
        """Each layer's value-embedding table (an index into the tables; None: no value embedding)."""
        L, ve = self.n_layer, self.value_embeddings
        if ve is None:
            return [None] * L
        if ve == "alternating":
            layers = [i for i in range(L) if i % 2 == (L - 1) % 2]  # every other layer, the last included
            return [layers.index(i) if i in layers else None for i in range(L)]
        return [i if i < ve else i - (L - ve) if i >= L - ve else None for i in range(L)]

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def kv_dim(self) -> int:
        """Width of the keys and of the values (all heads together)."""
        return self.kv_heads * self.head_dim

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_multiple) * self.pad_vocab_multiple

    @property
    def bias(self) -> bool:
        return self.block == "classic"

    @property
    def activation(self) -> str:
        return self.mlp_activation or ("gelu" if self.block == "classic" else "swiglu")

    @property
    def hidden_size(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.activation == "swiglu":  # three matrices instead of two: 2/3 of 4 × n_embd keeps the parameters
            return math.ceil(8 * self.n_embd / 3 / 256) * 256
        return 4 * self.n_embd
