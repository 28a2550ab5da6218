import math
from dataclasses import asdict

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lm.errors import UserError
from lm.model import GPT, ModelConfig
from lm.model.gpt import filter_logits, sample
from lm.module import LanguageModel
from tests.conftest import tiny_config
from tests.interop.tiny_hf import perturb


def test_gpt2_small_parameter_counts():
    assert GPT(ModelConfig(block="classic")).num_params() == 124_439_808  # OpenAI's GPT-2 124M checkpoint
    assert GPT(ModelConfig(block="modern")).num_params() == 123_551_232


def test_classic_and_modern_differ_where_they_should():
    classic, modern = GPT(tiny_config("classic")), GPT(tiny_config("modern"))
    assert (
        isinstance(classic.transformer.ln_f, torch.nn.LayerNorm)
        and classic.transformer.h[0].attn.c_attn.bias is not None
    )
    assert isinstance(modern.transformer.ln_f, torch.nn.RMSNorm) and modern.transformer.h[0].attn.c_attn.bias is None
    assert hasattr(classic.transformer, "wpe") and not hasattr(modern.transformer, "wpe")
    for model in (classic, modern):
        assert model.lm_head.weight is model.transformer.wte.weight


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(ModelConfig(block="classic", n_layer=8, n_head=4, n_embd=256, block_size=64))
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.transformer.h[0].attn.c_attn.bias.abs().sum() == 0


def test_causal_masking(block):
    torch.manual_seed(0)
    model = GPT(tiny_config(block)).eval()
    idx = torch.randint(0, 50257, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = torch.randint(0, 50257, (6,))
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_padded_vocabulary_is_never_predicted_and_loss_is_unpadded(block):
    torch.manual_seed(0)
    padded = GPT(tiny_config(block, pad_vocab_multiple=128))
    assert padded.config.padded_vocab_size == 50304
    unpadded = GPT(tiny_config(block, pad_vocab_multiple=1))
    state = padded.state_dict()
    state["transformer.wte.weight"] = state["transformer.wte.weight"][:50257]
    state["lm_head.weight"] = state["transformer.wte.weight"]
    unpadded.load_state_dict(state)
    # Make the padding rows attractive: they still must not appear in logits, loss or samples.
    with torch.no_grad():
        padded.transformer.wte.weight[50257:] = 100.0
    idx = torch.randint(0, 50257, (2, 12))
    logits = padded(idx)
    assert logits.shape[-1] == 50257
    torch.testing.assert_close(padded(idx, idx), unpadded(idx, idx))
    assert all(t.max() < 50257 for t in padded.generate(idx, 5, temperature=1.0))


def test_loss_matches_cross_entropy_of_logits(block):
    torch.manual_seed(0)
    model = GPT(tiny_config(block))
    idx, targets = torch.randint(0, 50257, (2, 12)), torch.randint(0, 50257, (2, 12))
    expected = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
    torch.testing.assert_close(model(idx, targets), expected)


def test_kv_cache_generation_equals_uncached(block):
    torch.manual_seed(0)
    model = GPT(tiny_config(block)).eval()
    prompt = torch.randint(0, 50257, (2, 7))
    cached = torch.stack(list(model.generate(prompt, 25, temperature=0, use_cache=True)), dim=1)
    uncached = torch.stack(list(model.generate(prompt, 25, temperature=0, use_cache=False)), dim=1)
    assert torch.equal(cached, uncached)  # 7 + 25 = 32 tokens: the whole context
    assert all(block.attn.cache is None for block in model.transformer.h)


def test_kv_cache_decodes_with_rope_at_the_right_positions():
    """Cached decoding at position p gives the logits of recomputing the whole sequence, on a model whose attention
    is far from uniform (large query and key weights), so a query or key rotated for a wrong position shows."""
    torch.manual_seed(0)
    model = GPT(tiny_config("modern", vocab_size=512)).double().eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.normal_(std=1.0)  # 50× GPT-2's init: scores ~2500× larger, a peaked softmax
    idx, prompt = torch.randint(0, 512, (2, 32)), 5
    with torch.no_grad():
        full = model(idx)
        model._set_kv_cache(2, idx.device)
        cached = [model(idx[:, :prompt])[:, -1]]
        cached += [model(idx[:, p : p + 1], pos=p)[:, -1] for p in range(prompt, 32)]
        model._set_kv_cache(None)
    torch.testing.assert_close(torch.stack(cached, dim=1), full[:, prompt - 1 :])


def test_generation_past_the_context_keeps_going(block):
    model = GPT(tiny_config(block)).eval()
    tokens = list(model.generate(torch.zeros(1, 40, dtype=torch.long), 50, temperature=0))
    assert len(tokens) == 50


def test_top_k_and_top_p_restrict_sampling():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]]).repeat(500, 1)
    assert set(sample(logits, top_k=2).tolist()) <= {0, 1}
    assert set(sample(logits, top_p=0.5).tolist()) == {0}
    assert sample(logits, temperature=0).unique().tolist() == [0]
    flat, generator = torch.zeros(500, 5), torch.Generator().manual_seed(0)
    assert set(sample(flat, top_k=0, generator=generator).tolist()) == {0, 1, 2, 3, 4}  # 0 means no top-k


def test_temperature_divides_the_logits():
    """At temperature 0.5 tokens are drawn with probabilities softmax(logits / 0.5) (measured over 200,000 draws)."""
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5, -1.0]])
    draws = sample(logits.repeat(200_000, 1), temperature=0.5, generator=torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=5) / len(draws)
    torch.testing.assert_close(frequencies, (logits[0] / 0.5).softmax(-1), rtol=0, atol=0.005)  # σ ≤ 0.0012


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    assert (filter_logits(probs.log(), top_p=0.5).isfinite() == torch.tensor([True, False, False])).all()
    assert (filter_logits(probs.log(), top_p=0.51).isfinite() == torch.tensor([True, True, False])).all()


def test_top_k_and_top_p_keep_the_same_tokens_as_transformers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    cases = [
        torch.randn(64, 100),
        torch.randn(64, 100).round(),
        torch.zeros(4, 10),
        torch.tensor([[0.5, 0.3, 0.2]]).log(),
    ]
    for logits in cases:
        for top_p in (0.05, 0.3, 0.5, 0.9, 1.0):
            expected = TopPLogitsWarper(top_p)(None, logits).isfinite()
            assert torch.equal(filter_logits(logits, top_p=top_p).isfinite(), expected), top_p
        for top_k in (1, 3, 50):
            expected = TopKLogitsWarper(top_k)(None, logits).isfinite()
            assert torch.equal(filter_logits(logits, top_k=top_k).isfinite(), expected), top_k


@pytest.mark.parametrize(
    "bad, key", [(dict(temperature=-0.5), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p")]
)
def test_meaningless_sampling_settings_are_refused(bad, key):
    model = GPT(tiny_config())
    with pytest.raises(UserError, match=key):
        next(model.generate(torch.zeros(1, 1, dtype=torch.long), 1, **bad))


def test_flops_per_token_formula():
    config = ModelConfig(block="classic")
    model = GPT(config)
    n = 124_439_808 - 1024 * 768  # position embeddings do no matmuls
    assert model.flops_per_token() == 6 * n + 12 * 12 * 12 * 64 * 1024
    # Untied (GPT-2 medium shape, configs/model/gpt2-medium-406m.yaml): the input embedding is a lookup.
    medium = GPT(ModelConfig(block="classic", n_layer=24, n_head=16, n_embd=1024, tie_embeddings=False))
    lookups = 50257 * 1024 + 1024 * 1024
    assert medium.flops_per_token() == 6 * (medium.num_params() - lookups) + 12 * 24 * 16 * 64 * 1024
    assert medium.flops_per_token() == pytest.approx(2.425e9, rel=1e-3)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_flops_per_token_agrees_with_torch_flop_counter(block, tied):
    """FlopCounterMode counts every matmul of a forward + backward pass. Attention goes through SDPA's math
    backend, which computes the full T × T scores (as flops_per_token counts them): 2 matmuls of 2·T·T·Q FLOPs
    per head forward, twice that backward. Norms, biases, activations and the loss are not matmuls (< 3%)."""
    config = ModelConfig(block=block, n_layer=2, n_head=4, n_embd=128, block_size=64, tie_embeddings=tied)
    model = GPT(config)
    idx = torch.randint(0, 50257, (2, 64))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx, idx).backward()
    assert counter.get_total_flops() == pytest.approx(model.flops_per_token(64) * idx.numel(), rel=0.03)


def test_flops_per_token_agrees_with_torch_flop_counter_under_the_block_knobs():
    """Grouped-query attention (fewer k, v rows; the same attention matmuls), value embeddings (lookups, and a small
    gate matmul) and residual scalars: the count still agrees with every matmul torch runs."""
    knobs = dict(n_kv_head=2, value_embeddings="alternating", residual_scalars=True)
    model = GPT(ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64, **knobs))
    idx = torch.randint(0, 50257, (2, 64))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx, idx).backward()
    assert counter.get_total_flops() == pytest.approx(model.flops_per_token(64) * idx.numel(), rel=0.03)


def test_parameter_counts_do_not_change_when_parameters_are_sharded():
    """FSDP leaves each rank a shard of every parameter; the counts come from the whole tensors at construction."""
    model = GPT(tiny_config("classic", tie_embeddings=False))
    n, flops = model.num_params(), model.flops_per_token()
    for p in model.parameters():
        p.data = p.data.flatten()[:1]
    assert (model.num_params(), model.flops_per_token()) == (n, flops)


@pytest.mark.parametrize("bad", [dict(block="other"), dict(n_embd=30, n_head=4), dict(dropout=1.5), dict(n_layer=0)])
def test_bad_config_names_the_key(bad):
    with pytest.raises(ValueError, match=next(iter(bad)) if "n_embd" not in bad else "n_embd"):
        ModelConfig(**bad)


KNOBS = {
    "qk_norm": {"qk_norm": True},
    "gelu": {"mlp_activation": "gelu"},
    "relu2": {"mlp_activation": "relu2"},
    "softcap": {"logit_softcap": 3.0},
    "residual_scalars": {"residual_scalars": True},
    "zero_init_proj": {"zero_init_proj": True},
    "value_embeddings": {"value_embeddings": "alternating"},
    "value_embeddings_shared": {"value_embeddings": 1},  # one table for both layers
    "gqa": {"n_kv_head": 1},  # both query heads share one key/value head
    "gqa_value_embeddings": {"n_kv_head": 1, "value_embeddings": "alternating"},
    "stacked": dict(
        n_kv_head=1, value_embeddings=1, residual_scalars=True, zero_init_proj=True, qk_norm=True, logit_softcap=3.0
    ),
}


def test_the_knobs_parameter_counts():
    base = GPT(ModelConfig(block="modern")).num_params()  # 123,551,232: SwiGLU hidden 2048
    assert GPT(ModelConfig(block="modern", qk_norm=True)).num_params() == base + 12 * 2 * 64  # two gains per head dim
    assert GPT(ModelConfig(block="modern", logit_softcap=30.0)).num_params() == base
    plain = base - 12 * 3 * 768 * 2048 + 12 * 2 * 768 * 3072  # two 768 × 3072 matrices instead of three × 2048
    for activation in ("gelu", "relu2"):
        assert GPT(ModelConfig(block="modern", mlp_activation=activation)).num_params() == plain
    assert GPT(ModelConfig(block="classic", mlp_activation="gelu")).num_params() == 124_439_808
    scalars = GPT(ModelConfig(block="modern", residual_scalars=True))
    assert scalars.num_params() == base + 2 * 12  # λ_resid and λ_x0 per layer
    assert scalars.num_params(non_embedding=True) == GPT(ModelConfig()).num_params(non_embedding=True) + 2 * 12
    assert GPT(ModelConfig(block="modern", zero_init_proj=True)).num_params() == base
    plain, values = GPT(ModelConfig()), GPT(ModelConfig(value_embeddings="alternating"))  # tables on 6 layers
    gates = 6 * 32 * 12  # a 32-channel gate per head
    assert values.num_params() == base + 6 * 50257 * 768 + gates
    assert values.num_params(non_embedding=True) == plain.num_params(non_embedding=True) + gates  # lookups left out
    assert values.flops_per_token() == plain.flops_per_token() + 6 * gates  # lookups do no matmul
    assert GPT(ModelConfig(value_embeddings=3)).num_params() == base + 3 * 50257 * 768 + gates  # 3 tables, 6 layers
    gqa = GPT(ModelConfig(n_kv_head=4))  # k and v: 4 heads of 64 instead of 12
    assert gqa.num_params() == base - 12 * 2 * 8 * 64 * 768
    assert gqa.flops_per_token() == plain.flops_per_token() - 6 * 12 * 2 * 8 * 64 * 768  # attention itself: the same
    assert GPT(ModelConfig(n_kv_head=4, value_embeddings="alternating")).num_params() == gqa.num_params() + 6 * (
        50257 * 256 + 32 * 4
    )  # tables as wide as k and v, a gate per key/value head
    assert GPT(ModelConfig(n_kv_head=12)).num_params() == base


@pytest.mark.parametrize("knob", KNOBS)
def test_each_knob_changes_the_model_and_keeps_the_kv_cache_exact(knob):
    """Both models perturbed alike (the parameters they share, in the same order, get the same noise), as training
    would: a knob that starts neutral (residual scalars) shows, and no weight is left at a trivial 0 or 1."""
    torch.manual_seed(0)
    model = perturb(GPT(tiny_config(**KNOBS[knob])))
    torch.manual_seed(0)
    reference = perturb(GPT(tiny_config()))
    prompt = torch.randint(0, 50257, (2, 7))
    assert not torch.allclose(model(prompt), reference(prompt))
    cached = torch.stack(list(model.generate(prompt, 25, temperature=0, use_cache=True)), dim=1)
    uncached = torch.stack(list(model.generate(prompt, 25, temperature=0, use_cache=False)), dim=1)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("knob", KNOBS)
def test_each_knob_survives_save_and_load(knob, tmp_path):
    from lm.checkpoint import load_model
    from tests.test_generate import save_checkpoint

    torch.manual_seed(0)
    model = GPT(tiny_config(**KNOBS[knob])).eval()
    path = save_checkpoint(model, tmp_path / "model.ckpt")
    loaded, _ = load_model(path)
    assert loaded.config == model.config
    continued = LanguageModel(init_from=path).model.eval()  # continued pretraining starts from the same weights
    assert continued.config == model.config
    idx = torch.randint(0, 50257, (1, 9))
    torch.testing.assert_close(loaded(idx), model(idx), rtol=0, atol=0)
    torch.testing.assert_close(continued(idx), model(idx), rtol=0, atol=0)


def test_relu2_and_softcap_do_what_they_say():
    model = GPT(tiny_config(mlp_activation="relu2", logit_softcap=2.0)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(100)  # huge logits: the cap holds them
    assert model(torch.randint(0, 50257, (1, 8))).abs().max() <= 2.0
    x = torch.randn(4, 32)
    torch.testing.assert_close(
        model.transformer.h[0].mlp(x),
        model.transformer.h[0].mlp.c_proj(torch.relu(model.transformer.h[0].mlp.c_fc(x)) ** 2),
    )


def test_the_depth_dial_sets_every_size_and_explicit_keys_win():
    assert GPT(ModelConfig(block="classic", depth=12)).num_params() == 124_439_808  # depth 12 is GPT-2 small
    c = ModelConfig(depth=4)
    assert (c.n_layer, c.n_embd, c.n_head, c.head_dim) == (4, 256, 4, 64)
    c = ModelConfig(depth=4, n_embd=128, n_layer=6)
    assert (c.n_layer, c.n_embd, c.n_head) == (6, 128, 2)
    assert ModelConfig().n_layer == 12 and ModelConfig().n_embd == 768 and ModelConfig().n_head == 12
    assert ModelConfig(**asdict(ModelConfig(depth=3))) == ModelConfig(depth=3)  # a checkpoint's config rebuilds it
    with pytest.raises(ValueError, match="'depth' must be positive"):
        ModelConfig(depth=0)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_non_embedding_parameters_are_the_blocks_and_the_final_norm(block, tied):
    model = GPT(tiny_config(block, tie_embeddings=tied))
    by_hand = sum(
        p.numel() for name, p in model.named_parameters() if name.startswith(("transformer.h.", "transformer.ln_f"))
    )
    assert model.num_params(non_embedding=True) == by_hand
    assert model.num_params() > by_hand


def test_residual_scalars_start_as_the_model_without_them(block):
    """λ_resid = 1, λ_x0 = 0: given the same other weights, the same logits, bit for bit; once λ_x0 moves, the
    embedding output x0 is mixed into every block's input: x ← λ_resid · x + λ_x0 · x0."""
    torch.manual_seed(0)
    reference = perturb(GPT(tiny_config(block)))
    model = GPT(tiny_config(block, residual_scalars=True)).eval()
    missing = model.load_state_dict(reference.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["resid_lambdas", "x0_lambdas"]
    idx = torch.randint(0, 50257, (2, 12))
    assert torch.equal(model(idx), reference(idx))
    with torch.no_grad():
        model.resid_lambdas.copy_(torch.tensor([0.5, 2.0]))
        model.x0_lambdas.copy_(torch.tensor([0.3, -0.7]))
    # By hand: embeddings, then each block on its mixed input.
    x0 = model.transformer.wte(idx) + (model.transformer.wpe(torch.arange(12)) if block == "classic" else 0)
    rope = None if block == "classic" else (model.rope_cos[:12], model.rope_sin[:12])
    x = x0
    for i, layer in enumerate(model.transformer.h):
        x = layer(model.resid_lambdas[i] * x + model.x0_lambdas[i] * x0, rope, 0, None)
    expected = model.lm_head(model.transformer.ln_f(x))[..., :50257]
    torch.testing.assert_close(model(idx), expected)


def test_zero_init_proj_zeroes_the_output_projections_only():
    torch.manual_seed(0)
    gpt2 = GPT(tiny_config("classic"))
    torch.manual_seed(0)
    zero = GPT(tiny_config("classic", zero_init_proj=True))
    for (name, p), q in zip(zero.named_parameters(), gpt2.parameters()):
        if name.endswith("c_proj.weight"):
            assert p.abs().sum() == 0 and q.abs().sum() > 0, name
        else:
            assert torch.equal(p, q), name  # the same draws as GPT-2's init everywhere else
    block = zero.transformer.h[0]
    x = torch.randn(1, 5, 32)
    assert torch.equal(block(x, None, 0, None), x)  # every block starts as the identity


def test_value_embeddings_go_where_the_config_says():
    assert ModelConfig(n_layer=6, value_embeddings="alternating").layer_value_embeddings() == [
        None,
        0,
        None,
        1,
        None,
        2,
    ]
    assert ModelConfig(n_layer=5, value_embeddings="alternating").layer_value_embeddings() == [0, None, 1, None, 2]
    assert ModelConfig(n_layer=6, value_embeddings=2).layer_value_embeddings() == [0, 1, None, None, 0, 1]
    assert ModelConfig(n_layer=6).layer_value_embeddings() == [None] * 6
    model = GPT(tiny_config(n_layer=4, value_embeddings="alternating"))
    assert len(model.transformer.ve) == 2 and model.transformer.ve[0].weight.shape == (50257, 32)
    assert [hasattr(block.attn, "ve_gate") for block in model.transformer.h] == [False, True, False, True]
    for bad in (0, 3, "every", True):
        with pytest.raises(ValueError, match="value_embeddings"):
            ModelConfig(n_layer=4, value_embeddings=bad)


def test_a_value_embedding_adds_its_gated_row_to_the_values(block):
    """Attention weights sum to 1, so a value embedding u added to every token's values (a table whose rows are all
    u) adds exactly u to each head's output: c_proj(u) to the layer's. The gate starts at 2 · sigmoid(0) = 1 and
    tends to 2 when its input is large and positive."""
    torch.manual_seed(0)
    model = perturb(GPT(tiny_config(block, value_embeddings=1)))
    assert model.transformer.h[0].attn.ve_gate.weight.abs().sum() > 0  # perturbed; zero at init:
    assert GPT(tiny_config(block, value_embeddings=1)).transformer.h[0].attn.ve_gate.weight.abs().sum() == 0
    attn, u = model.transformer.h[0].attn, torch.randn(32)
    x = torch.randn(2, 6, 32)
    rope = None if block == "classic" else (model.rope_cos[:6], model.rope_sin[:6])
    ve = u.expand(2, 6, 32)
    with torch.no_grad():
        attn.ve_gate.weight.zero_()
        torch.testing.assert_close(
            attn(x, rope, 0, None, ve) - attn(x, rope, 0, None), (u @ attn.c_proj.weight.T).expand_as(x)
        )
        attn.ve_gate.weight.zero_()[:, 0] = 100.0
        x[..., 0] = 1.0
        torch.testing.assert_close(
            attn(x, rope, 0, None, ve) - attn(x, rope, 0, None), (2 * u @ attn.c_proj.weight.T).expand_as(x)
        )
    # In the model, layer i looks its table up at the input tokens: a table of zeros is the model without it.
    idx = torch.randint(0, 50257, (2, 10))
    without = GPT(tiny_config(block))
    without.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        model.transformer.ve[0].weight.zero_()
    torch.testing.assert_close(model(idx), without.eval()(idx), rtol=0, atol=0)


@pytest.mark.parametrize("mask", [{}, {"window_pattern": "SL", "sliding_window": 5}], ids=["causal", "windows"])
def test_grouped_query_attention_is_multi_head_attention_with_shared_keys_and_values(block, mask):
    """A model with 2 key/value heads for 4 query heads computes what the 4-head model does whose k and v rows of
    c_attn repeat each key/value head for the query heads it serves (0, 0, 1, 1); the KV cache holds 2 heads."""
    torch.manual_seed(0)
    gqa = perturb(GPT(tiny_config(block, n_head=4, n_kv_head=2, **mask)))
    mha = GPT(tiny_config(block, n_head=4, **mask)).eval()
    state = gqa.state_dict()
    for name in [name for name in state if name.endswith("attn.c_attn.weight") or name.endswith("attn.c_attn.bias")]:
        q, k, v = state[name].split((32, 16, 16))
        repeat = lambda t: t.unflatten(0, (2, 8)).repeat_interleave(2, dim=0).flatten(0, 1)  # (heads · 8, ...)
        state[name] = torch.cat((q, repeat(k), repeat(v)))
    mha.load_state_dict(state)
    idx = torch.randint(0, 50257, (2, 16))
    torch.testing.assert_close(gqa(idx), mha(idx))
    assert gqa.transformer.h[0].attn.c_attn.weight.shape == (64, 32)
    gqa._set_kv_cache(2, idx.device)
    assert [tuple(block.attn.cache.k.shape) for block in gqa.transformer.h] == [(2, 2, 32, 8)] * 2  # half of MHA's
    assert sum(t.numel() for block in gqa.transformer.h for t in (block.attn.cache.k, block.attn.cache.v)) == 4096
    gqa._set_kv_cache(None)
    mha._set_kv_cache(2, idx.device)
    assert sum(t.numel() for block in mha.transformer.h for t in (block.attn.cache.k, block.attn.cache.v)) == 8192
    mha._set_kv_cache(None)


def test_n_kv_head_equal_to_n_head_is_todays_model():
    torch.manual_seed(0)
    default = GPT(tiny_config())
    torch.manual_seed(0)
    explicit = GPT(tiny_config(n_kv_head=2))
    assert default.state_dict().keys() == explicit.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values()))
    assert default.transformer.h[0].attn.c_attn.weight.shape == (3 * 32, 32)
    for bad in (3, 0):
        with pytest.raises(ValueError, match="n_kv_head"):
            ModelConfig(n_head=4, n_kv_head=bad)
