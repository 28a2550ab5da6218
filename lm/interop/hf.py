"""Hugging Face interop: lm's GPT ↔ transformers' GPT2LMHeadModel (classic), LlamaForCausalLM (modern) and
Qwen3ForCausalLM (modern with QK-norm); sliding windows export to MistralForCausalLM (a window on every layer),
MinistralForCausalLM (windows on some layers) or Qwen3ForCausalLM (with QK-norm, windows per layer).

Design choices:
- Only torch, safetensors and json are needed: transformers is for whoever loads the exported directory, it is
  not a dependency of lm.
- classic is GPT-2 under the same parameter names; only GPT-2's Conv1D weights are stored transposed (in, out).
- modern is Llama: our fused c_attn (q, k, v; k and v n_kv_head heads wide under grouped-query attention, as
  Llama's num_key_value_heads) and c_fc (gate, up) are split into Llama's projections. Our RoPE uses Llama's
  rotate-half layout, so q and k need no permutation. With QK-norm it is Qwen3, which is Llama plus an RMSNorm of
  each head's queries and keys before RoPE, as ours.
  Mistral and Ministral are Llama with sliding windows (on every layer, or per layer as `layer_types`), under the
  same rule as ours: query i sees keys i - sliding_window + 1 … i.
- Document masking is how the model was trained, not a different function of one document: a model trained with
  it computes on a single document exactly what the exported model does, so it exports as it is. Several documents
  in one sequence attend to each other in transformers; feed them one at a time.
- A config no transformers architecture computes exactly (a soft cap on the logits, residual scalars, value
  embeddings, a modern block with a plain GELU or squared-ReLU MLP, a classic block with any of the modern knobs)
  is refused with one line naming the key, never exported approximately.
- Hugging Face checkpoints hold the real vocabulary; ours pad it (50257 → 50304). Export trims the padding rows,
  import pads with zeros (padded logits are never read).
- The tokenizer is always GPT-2's: vocab.json and merges.txt are rebuilt from tiktoken's ranks (byte for byte
  OpenAI's files), so an export is complete offline.
- An export is written to a hidden sibling directory and renamed into place, so a failure leaves nothing behind.
"""

import functools
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lm.checkpoint import load_checkpoint
from lm.data.tokenizer import EOT, get_encoding
from lm.errors import UserError
from lm.model import GPT, ModelConfig

VOCAB_ROWS = ("transformer.wte.weight", "lm_head.weight")
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Tensors some checkpoints carry that are buffers, not weights: GPT-2's causal masks, old Llama's RoPE frequencies.
BUFFERS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "ministral": "MinistralForCausalLM",
}


def hf_model_type(config: ModelConfig) -> str:
    """The transformers model type that computes exactly what `config` does, or a UserError naming the key."""
    unsupported = {
        "logit_softcap": config.logit_softcap is not None,
        "residual_scalars": config.residual_scalars,
        "value_embeddings": config.value_embeddings is not None,
        "mlp_activation": config.activation != ("gelu" if config.block == "classic" else "swiglu"),
        "qk_norm": config.qk_norm and config.block == "classic",
        "window_pattern": config.window_pattern is not None and config.block == "classic",
        "n_kv_head": config.kv_heads != config.n_head and config.block == "classic",
    }
    for key, is_set in unsupported.items():
        if is_set:
            raise UserError(
                f"model.config.{key} = {getattr(config, key)!r} ({config.block} block) has no exact counterpart in "
                "transformers' GPT-2, Llama, Mistral, Ministral or Qwen3: this model cannot be exported"
            )
    windows = config.layer_windows()
    if config.block == "classic":
        return "gpt2"
    if config.qk_norm:
        return "qwen3"
    if all(windows):
        return "mistral"
    return "ministral" if any(windows) else "llama"


# ---- state dicts ---------------------------------------------------------------------------------------


def hf_names(config: ModelConfig) -> dict[str, list[str]]:
    """Each of our tensors → the Hugging Face tensors it holds, in order (several where ours is fused).

    A tied output layer is left out: transformers re-ties it to the input embedding.
    """
    if config.block == "classic":
        with torch.device("meta"):
            names = {name: [name] for name in GPT(config).state_dict()}
    else:
        names = {
            "transformer.wte.weight": ["model.embed_tokens.weight"],
            "transformer.ln_f.weight": ["model.norm.weight"],
            "lm_head.weight": ["lm_head.weight"],
        }
        for i in range(config.n_layer):
            ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
            names |= {
                ours + "ln_1.weight": [theirs + "input_layernorm.weight"],
                ours + "attn.c_attn.weight": [theirs + f"self_attn.{p}_proj.weight" for p in "qkv"],
                ours + "attn.c_proj.weight": [theirs + "self_attn.o_proj.weight"],
                ours + "ln_2.weight": [theirs + "post_attention_layernorm.weight"],
                ours + "mlp.c_fc.weight": [theirs + "mlp.gate_proj.weight", theirs + "mlp.up_proj.weight"],
                ours + "mlp.c_proj.weight": [theirs + "mlp.down_proj.weight"],
            }
            if config.qk_norm:
                names |= {ours + f"attn.{x}_norm.weight": [theirs + f"self_attn.{x}_norm.weight"] for x in "qk"}
    if config.tie_embeddings:
        del names["lm_head.weight"]
    return names


def to_hf(config: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our GPT state dict → Hugging Face names and layout, vocabulary trimmed. Tensors may be views of `state`."""
    hf = {}
    for ours, theirs in hf_names(config).items():
        tensor = state[ours]
        if ours in VOCAB_ROWS:
            tensor = tensor[: config.vocab_size]
        if config.block == "classic" and ours.endswith(CONV1D):
            tensor = tensor.t()  # GPT-2's Conv1D stores (in, out)
        if len(theirs) == 3:  # q, k, v: k and v are narrower under grouped-query attention
            parts = tensor.split((config.n_embd, config.kv_dim, config.kv_dim))
        else:
            parts = tensor.chunk(len(theirs))
        hf |= zip(theirs, parts)
    return hf


def from_hf(config: ModelConfig, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face state dict → our GPT state dict, vocabulary zero-padded to `config.padded_vocab_size`."""
    state = {}
    for ours, theirs in hf_names(config).items():
        tensor = torch.cat([hf[name] for name in theirs])
        if config.block == "classic" and ours.endswith(CONV1D):
            tensor = tensor.t()
        if ours in VOCAB_ROWS:
            padding = tensor.new_zeros(config.padded_vocab_size - config.vocab_size, tensor.size(1))
            tensor = torch.cat([tensor, padding])
        state[ours] = tensor
    if config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


# ---- configs -------------------------------------------------------------------------------------------


def hf_config(config: ModelConfig, dtype: torch.dtype) -> dict:
    """config.json for transformers: GPT2Config (classic), LlamaConfig (modern) or Qwen3Config (modern, QK-norm)."""
    c, model_type = config, hf_model_type(config)
    eos = EOT if c.vocab_size > EOT else None
    common = {
        "architectures": [ARCHITECTURES[model_type]],
        "vocab_size": c.vocab_size,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if model_type == "gpt2":
        return common | {
            "model_type": "gpt2",
            "n_positions": c.block_size,
            "n_ctx": c.block_size,
            "n_embd": c.n_embd,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_inner": c.mlp_hidden,  # None: 4 × n_embd in both
            "activation_function": "gelu_new",
            "layer_norm_epsilon": c.norm_eps,
            "resid_pdrop": c.dropout,
            "embd_pdrop": c.dropout,
            "attn_pdrop": c.dropout,
        }
    llama = common | {
        "model_type": "llama",
        "hidden_size": c.n_embd,
        "intermediate_size": c.hidden_size,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.block_size,
        "rms_norm_eps": c.norm_eps,
        # transformers ≥ 5 reads rope_parameters, older versions rope_theta.
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": c.dropout,
    }
    windows = c.layer_windows()
    layer_types = ["sliding_attention" if window else "full_attention" for window in windows]
    if model_type == "llama":
        return llama
    if model_type == "mistral":
        return llama | {"model_type": "mistral", "sliding_window": c.sliding_window}
    if model_type == "ministral":
        return llama | {"model_type": "ministral", "sliding_window": c.sliding_window, "layer_types": layer_types}
    if not any(windows):
        return llama | {"model_type": "qwen3", "use_sliding_window": False, "sliding_window": None}
    return llama | {
        "model_type": "qwen3",
        "use_sliding_window": True,
        "sliding_window": c.sliding_window,
        "max_window_layers": 0,
        "layer_types": layer_types,
    }


def model_config(hf: dict, where: Path) -> ModelConfig:
    """The ModelConfig that holds a Hugging Face config, or a UserError naming the setting lm cannot hold."""

    def get(key, default=...):
        if key not in hf and default is ...:
            raise UserError(f"{where}: '{key}' is missing")
        return hf.get(key, default)

    def require(key, default, allowed):
        if get(key, default) not in allowed:
            supported = " or ".join(map(repr, allowed))
            raise UserError(f"{where}: {key} = {hf[key]!r} is not supported (lm can hold {supported})")

    model_type = get("model_type")
    if model_type == "gpt2":
        require("activation_function", "gelu_new", ("gelu_new", "gelu_pytorch_tanh"))  # both are tanh-GELU
        require("scale_attn_weights", True, (True,))
        require("scale_attn_by_inverse_layer_idx", False, (False,))
        require("add_cross_attention", False, (False,))
        fields = dict(
            block="classic",
            n_layer=get("n_layer"),
            n_head=get("n_head"),
            n_embd=get("n_embd"),
            block_size=get("n_positions"),
            mlp_hidden=get("n_inner", None),
            norm_eps=get("layer_norm_epsilon", 1e-5),
            tie_embeddings=get("tie_word_embeddings", True),
        )
    elif model_type in ("llama", "qwen3"):
        heads, width = get("num_attention_heads"), get("hidden_size")
        kv_heads = get("num_key_value_heads", heads)
        if not isinstance(kv_heads, int) or kv_heads <= 0 or heads % kv_heads:
            raise UserError(
                f"{where}: num_key_value_heads = {kv_heads!r} does not divide num_attention_heads = {heads}"
            )
        rope = get("rope_parameters", None) or {}
        require("hidden_act", "silu", ("silu",))
        require("head_dim", None, (None, width // heads))
        require("attention_bias", False, (False,))
        require("mlp_bias", False, (False,))
        require("rope_scaling", None, (None,))
        require("use_sliding_window", False, (False,))
        if rope.get("rope_type", "default") != "default":
            raise UserError(
                f"{where}: rope_parameters.rope_type = {rope['rope_type']!r} is not supported (lm can hold 'default')"
            )
        fields = dict(
            block="modern",
            n_layer=get("num_hidden_layers"),
            n_head=heads,
            n_kv_head=None if kv_heads == heads else kv_heads,
            n_embd=width,
            block_size=get("max_position_embeddings"),
            mlp_hidden=get("intermediate_size"),
            norm_eps=get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", get("rope_theta", 10000.0)),
            tie_embeddings=get("tie_word_embeddings", False),
            qk_norm=model_type == "qwen3",
        )
    else:
        raise UserError(f"{where}: model_type {model_type!r} is not supported (lm imports 'gpt2', 'llama' and 'qwen3')")
    try:
        return ModelConfig(vocab_size=get("vocab_size"), dropout=0.0, **fields)
    except ValueError as err:
        raise UserError(f"{where}: {err}") from None


# ---- directories ---------------------------------------------------------------------------------------


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face directory: model.safetensors, its sharded index, or pytorch_model.bin."""
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif index.is_file():
        files = [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    elif (path / "pytorch_model.bin").is_file():
        return load_checkpoint(path / "pytorch_model.bin")
    else:
        raise UserError(f"no weights in {path}: expected model.safetensors, {index.name} or pytorch_model.bin")
    hf = {}
    for file in files:
        if not file.is_file():
            raise UserError(f"{file} not found (listed in {index})")
        try:
            hf |= load_file(file)
        except SafetensorError as err:
            raise UserError(f"cannot read {file}: {err}") from None
    return hf


def check_tensors(config: ModelConfig, hf: dict[str, torch.Tensor], path: Path) -> None:
    """Every tensor the config implies is there with its shape, and nothing lm would silently drop."""
    with torch.device("meta"):
        expected = to_hf(config, GPT(config).state_dict())
    for name, tensor in expected.items():
        if name not in hf:
            raise UserError(f"{path}: tensor '{name}' is missing from the weights")
        if hf[name].shape != tensor.shape:
            raise UserError(
                f"{path}: tensor '{name}' has shape {tuple(hf[name].shape)}, config.json implies {tuple(tensor.shape)}"
            )
    ignored = ("lm_head.weight",) if config.tie_embeddings else ()
    unexpected = [name for name in hf if name not in expected and not name.endswith(BUFFERS) and name not in ignored]
    if unexpected:
        raise UserError(f"{path}: tensor '{unexpected[0]}' has no place in lm's {config.block} block")


def load_hf_dir(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(ModelConfig, GPT state dict) from a local Hugging Face GPT-2 or Llama directory."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{config_file} not found: {path} is not a Hugging Face model directory")
    try:
        config = model_config(json.loads(config_file.read_text()), config_file)
    except json.JSONDecodeError as err:
        raise UserError(f"{config_file} is not valid JSON: {err}") from None
    hf = read_hf_weights(path)
    if config.block == "classic":  # GPT2Model checkpoints (like OpenAI's) have no "transformer." prefix
        hf = {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v for k, v in hf.items()}
    check_tensors(config, hf, path)
    return config, from_hf(config, hf)


def save_hf_dir(config: ModelConfig, state: dict[str, torch.Tensor], out: str | Path, source: str = "") -> Path:
    """Writes a directory transformers.AutoModelForCausalLM.from_pretrained loads as is; refuses to overwrite."""
    out = Path(out)
    hf_model_type(config)  # one line now if no transformers architecture computes this model exactly
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty: choose a new output directory")
    hf = to_hf(config, state)
    dtype = state["transformer.wte.weight"].dtype
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_json(tmp / "config.json", hf_config(config, dtype))
        # Copies: safetensors refuses views that share storage (chunks of a fused tensor, a tied output layer).
        tensors = {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in hf.items()}
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        tokenizer = config.vocab_size > EOT
        if tokenizer:
            write_json(tmp / "generation_config.json", {"bos_token_id": EOT, "eos_token_id": EOT})
            write_gpt2_tokenizer(tmp, config.block_size)
        (tmp / "README.md").write_text(readme(config, source, tokenizer), encoding="utf-8")
        for file in tmp.iterdir():
            file.chmod(0o644)
        tmp.chmod(0o755)  # mkdtemp and safetensors make them private
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def readme(config: ModelConfig, source: str, tokenizer: bool) -> str:
    origin = f" from `{source}`" if source else ""
    text = (
        f"# lm export\n\nA {config.block} lm model{origin} in the {ARCHITECTURES[hf_model_type(config)]} layout: "
        f"{config.n_layer} layers, {config.n_head} heads, width {config.n_embd}, context {config.block_size}.\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/dir")\n'
    )
    if not tokenizer:
        return text + f"```\n\nNo tokenizer: the vocabulary ({config.vocab_size}) is smaller than GPT-2's.\n"
    return text + (
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/dir")\n```\n\n'
        'The tokenizer is GPT-2\'s BPE (the same as tiktoken\'s "gpt2" and `AutoTokenizer.from_pretrained("gpt2")`); '
        "<|endoftext|> (50256) separates documents.\n"
    )


# ---- tokenizer -----------------------------------------------------------------------------------------


def byte_chars() -> dict[int, str]:
    """GPT-2's reversible spelling of bytes as printable characters, used by vocab.json and merges.txt."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, unprintable = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:  # shifted past 255, in byte order
            chars[b] = chr(256 + unprintable)
            unprintable += 1
    return chars


@functools.cache
def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """OpenAI's encoder.json and vocab.bpe contents, rebuilt from tiktoken's GPT-2 ranks."""
    ranks = get_encoding()._mergeable_ranks  # bytes → id; ids follow OpenAI's encoder.json
    chars = byte_chars()
    spell = lambda token: "".join(chars[b] for b in token)

    def halves(token: bytes) -> list[bytes]:
        """The two tokens BPE merged into `token`: replay the merges ranked below it."""
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            _, i = min((ranks.get(a + b, len(ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return parts

    vocab = {spell(t): i for t, i in ranks.items()} | {"<|endoftext|>": EOT}
    merges = [" ".join(map(spell, halves(t))) for t in sorted(ranks, key=ranks.get) if len(t) > 1]
    return vocab, merges


def write_gpt2_tokenizer(out: Path, max_length: int) -> None:
    """vocab.json, merges.txt and tokenizer_config.json: what GPT2Tokenizer needs."""
    vocab, merges = gpt2_vocab_and_merges()
    write_json(out / "vocab.json", vocab)
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = "<|endoftext|>"
    write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "GPT2Tokenizer",
            "bos_token": special,
            "eos_token": special,
            "unk_token": special,
            "add_prefix_space": False,
            "model_max_length": max_length,
        },
    )
