"""Tiny random Hugging Face models (transformers is a test-only dependency)."""

import torch
import transformers  # a dev dependency (pip install -e ".[dev]"); the tests compare against it


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fresh inits leave biases at 0 and norm gains at 1; noise everywhere makes a wrong mapping show up."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    return model.eval()


def tiny_gpt2(**overrides) -> "transformers.GPT2LMHeadModel":
    config = transformers.GPT2Config(
        **{"vocab_size": 100, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 2, **overrides}
    )
    torch.manual_seed(0)
    return perturb(transformers.GPT2LMHeadModel(config))


def tiny_llama(**overrides) -> "transformers.LlamaForCausalLM":
    config = transformers.LlamaConfig(
        **{
            "vocab_size": 100,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            **overrides,
        }
    )
    torch.manual_seed(0)
    return perturb(transformers.LlamaForCausalLM(config))


def tiny_qwen3(**overrides) -> "transformers.Qwen3ForCausalLM":
    """Llama with an RMSNorm of each head's queries and keys: lm's modern block with qk_norm."""
    config = transformers.Qwen3Config(
        **{
            "vocab_size": 100,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 32,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
            **overrides,
        }
    )
    torch.manual_seed(0)
    return perturb(transformers.Qwen3ForCausalLM(config))


HF_MODELS = {
    "gpt2": tiny_gpt2,
    "gpt2-untied": lambda: tiny_gpt2(tie_word_embeddings=False),
    "llama": tiny_llama,
    "llama-tied": lambda: tiny_llama(tie_word_embeddings=True),
    "qwen3": tiny_qwen3,
}


def hf_logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx).logits
