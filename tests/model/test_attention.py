"""Document masking, sliding windows and the attention backends, against brute-force references."""

import pytest
import torch
import torch.nn.functional as F

from lm.data.tokenizer import EOT
from lm.errors import UserError
from lm.model import GPT, ModelConfig
from lm.model.attention import attend, layout
from tests.conftest import tiny_config

DOCS = [9, 1, 14, 8]  # tokens per document: the first one is cut (no EOT: a stream window starting mid-document)


def packed_row(seed: int = 0, lengths=DOCS) -> tuple[torch.Tensor, list[slice]]:
    """(1, T) ids of documents packed back to back, each after the first starting with EOT, and their slices."""
    generator = torch.Generator().manual_seed(seed)
    ids, spans, start = [], [], 0
    for i, n in enumerate(lengths):
        doc = torch.randint(0, EOT, (n,), generator=generator)
        if i:
            doc[0] = EOT
        ids.append(doc)
        spans.append(slice(start, start + n))
        start += n
    return torch.cat(ids)[None], spans


def brute_force_mask(ids: torch.Tensor, window: int | None, document: bool) -> torch.Tensor:
    """(T, T) mask of one row, loop by loop, from the definitions in the README."""
    T = ids.numel()
    doc = [0] * T
    for i in range(1, T):
        doc[i] = doc[i - 1] + int(ids[i] == EOT)
    mask = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(i + 1):
            mask[i, j] = (window is None or i - j + 1 <= window) and (not document or doc[i] == doc[j])
    return mask


def reference_attention(q, k, v, mask):
    scores = (q @ k.transpose(-1, -2)) / q.size(-1) ** 0.5
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def test_packed_row_under_document_masking_equals_each_document_alone(block):
    """The exact test: loss and gradients of a packed row = those of its documents run one at a time (fp32)."""
    torch.manual_seed(0)
    model = GPT(tiny_config(block, attention_mask="document"))
    ids, spans = packed_row()
    targets = torch.randint(0, EOT, ids.shape)
    packed = model(ids, targets)
    packed.backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    total = 0
    for span in spans:
        logits = model(ids[:, span])
        total = total + F.cross_entropy(logits[0], targets[0, span], reduction="sum")
    alone = total / ids.numel()
    alone.backward()
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-5)
    for p, packed_grad in zip(model.parameters(), packed_grads):
        torch.testing.assert_close(packed_grad, p.grad, rtol=0, atol=1e-5)
    # Per token too, logits of each document alone against its part of the packed row.
    packed_logits = model(ids)
    for span in spans:
        torch.testing.assert_close(packed_logits[:, span], model(ids[:, span]), rtol=0, atol=1e-5)


def test_changing_a_document_leaves_the_next_ones_logits_bit_identical(block):
    """Resetting positions alone does not mask: under document masking the next document must not see the change."""
    torch.manual_seed(0)
    model = GPT(tiny_config(block, attention_mask="document")).eval()
    ids, spans = packed_row()
    changed = ids.clone()
    changed[0, spans[1]] = torch.randint(0, EOT, (DOCS[1],))
    changed[0, spans[1].start] = EOT
    changed[0, spans[2].start + 1] += 1  # inside document 2
    a, b = model(ids), model(changed)
    assert torch.equal(a[:, spans[3]], b[:, spans[3]])
    assert torch.equal(a[:, spans[0]], b[:, spans[0]])
    assert not torch.allclose(a[:, spans[2]], b[:, spans[2]])
    causal = GPT(tiny_config(block)).eval()
    causal.load_state_dict(model.state_dict())
    assert not torch.allclose(causal(ids)[:, spans[3]], causal(changed)[:, spans[3]])  # the test can fail


def test_rows_with_different_documents_each_get_their_own_mask():
    """A FlexAttention block mask built with B=None would give every row the first row's documents."""
    row0, _ = packed_row(0, [16, 16])
    row1, _ = packed_row(1, [5, 20, 7])
    ids = torch.cat([row0, row1])
    for backend in ("sdpa", "flex"):
        attn = layout(ids, 0, [None], EOT, backend)
        q, k, v = torch.randn(3, 2, 2, 32, 8).unbind(0)
        with torch.no_grad():
            out = attend(q, k, v, attn.masks[None], 0.0)
        for b in range(2):
            expected = reference_attention(q[b], k[b], v[b], brute_force_mask(ids[b], None, True))
            torch.testing.assert_close(out[b], expected, rtol=0, atol=1e-5, msg=backend)
    # On a CUDA kernel the block mask's tiles decide which scores are computed at all (the CPU's eager
    # FlexAttention evaluates every score): row 1's second document skips the tile row 0's one document needs.
    ids = torch.cat([packed_row(0, [256])[0], packed_row(1, [128, 128])[0]])
    tiles = layout(ids, 0, [None], EOT, "flex").masks[None].to_dense()[:, 0]  # (B, 2, 2) tiles of 128 × 128
    for b in range(2):
        expected = brute_force_mask(ids[b], None, True).view(2, 128, 2, 128).any(dim=(1, 3))
        assert torch.equal(tiles[b].bool(), expected)


@pytest.mark.parametrize("window", [1, 3, 7])
@pytest.mark.parametrize("document", [False, True], ids=["causal", "document"])
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_masks_equal_the_brute_force_mask(window, document, backend):
    """A window of w: the query and the w - 1 keys before it (flash's window_size=(w - 1, 0)), on each backend
    (FlexAttention forward only: it has no backward on a CPU); never silently full causal."""
    ids, _ = packed_row()
    ids = ids.repeat(2, 1)
    attn = layout(ids, 0, [window], EOT if document else None, backend)
    mask = brute_force_mask(ids[0], window, document)
    assert not mask.tril().all()
    q, k, v = torch.randn(3, 2, 2, ids.size(1), 8).unbind(0)
    with torch.no_grad():
        out = attend(q, k, v, attn.masks[window], 0.0)
    torch.testing.assert_close(out, reference_attention(q, k, v, mask), rtol=0, atol=1e-5)


def test_a_window_no_shorter_than_the_context_is_plain_causal(block):
    torch.manual_seed(0)
    plain = GPT(tiny_config(block)).eval()
    ids = torch.randint(0, EOT, (2, 32))
    for window in (32, 100):
        windowed = GPT(tiny_config(block, window_pattern="S", sliding_window=window)).eval()
        windowed.load_state_dict(plain.state_dict())
        assert torch.equal(windowed(ids), plain(ids))
    short = GPT(tiny_config(block, window_pattern="S", sliding_window=31)).eval()
    short.load_state_dict(plain.state_dict())
    assert not torch.allclose(short(ids)[:, -1], plain(ids)[:, -1])


@pytest.mark.parametrize("heads", [{}, {"n_head": 4, "n_kv_head": 2}], ids=["mha", "gqa"])
@pytest.mark.parametrize("document", [False, True], ids=["causal", "document"])
def test_flex_forward_equals_sdpa_on_the_cpu(block, document, heads):
    torch.manual_seed(0)
    knobs = dict(window_pattern="SL", sliding_window=5, attention_mask="document" if document else "causal", **heads)
    sdpa = GPT(tiny_config(block, attention_backend="sdpa", **knobs)).eval()
    flex = GPT(tiny_config(block, attention_backend="flex", **knobs)).eval()
    flex.load_state_dict(sdpa.state_dict())
    ids = torch.cat([packed_row(0)[0], packed_row(1, [3, 29])[0]])
    with torch.no_grad():
        torch.testing.assert_close(flex(ids), sdpa(ids), rtol=0, atol=1e-5)


def test_flex_refuses_to_train_on_a_cpu_in_one_line():
    model = GPT(tiny_config(attention_backend="flex", attention_mask="document"))
    ids, _ = packed_row()
    with pytest.raises(UserError, match="attention_backend: flex cannot train on a CPU"):
        model(ids, ids)


def test_auto_trains_on_the_cpu_with_the_boolean_mask():
    torch.manual_seed(0)
    auto = GPT(tiny_config(attention_mask="document", window_pattern="SL", sliding_window=4))
    ids, _ = packed_row()
    attn = layout(ids, 0, auto.layer_windows, EOT, "sdpa")
    assert all(mask.dtype == torch.bool for mask in attn.masks.values())
    auto(ids, ids).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in auto.parameters())


@pytest.mark.parametrize(
    "knobs",
    [
        dict(attention_mask="document"),
        dict(window_pattern="SSL", sliding_window=4),
        dict(attention_mask="document", window_pattern="S", sliding_window=3),
        dict(
            attention_mask="document", window_pattern="SL", sliding_window=3, n_head=4, n_kv_head=2, value_embeddings=1
        ),
    ],
    ids=["document", "window", "both", "gqa_value_embeddings"],
)
def test_kv_cache_decoding_equals_recomputing_the_context(block, knobs):
    """Token by token through the cache, EOTs arriving in the prompt and while decoding, against the full forward."""
    torch.manual_seed(0)
    model = GPT(tiny_config(block, n_layer=3, **knobs)).eval()
    ids = torch.cat([packed_row(0, [5, 6, 3, 7, 11])[0], packed_row(1, [2, 9, 21])[0]])
    full = model(ids)
    model._set_kv_cache(2, ids.device)
    try:
        prompt = 8
        torch.testing.assert_close(model(ids[:, :prompt]), full[:, :prompt], rtol=0, atol=1e-5)
        for pos in range(prompt, ids.size(1)):
            torch.testing.assert_close(model(ids[:, pos : pos + 1], pos=pos)[:, 0], full[:, pos], rtol=0, atol=1e-5)
    finally:
        model._set_kv_cache(None)


def test_positions_restart_at_each_document():
    ids, spans = packed_row()
    attn = layout(ids, 0, [None], EOT, "sdpa")
    assert attn.positions[0].tolist() == [i for n in DOCS for i in range(n)]
    assert layout(ids, 0, [None], None, "sdpa").positions.tolist() == list(range(ids.size(1)))


def test_flops_follow_the_windows():
    full = GPT(ModelConfig(block="classic"))
    windowed = GPT(ModelConfig(block="classic", window_pattern="SSSL", sliding_window=256))
    attention = 12 * 12 * 64  # 12 · H · Q per key per layer
    assert full.flops_per_token() - windowed.flops_per_token() == attention * 9 * (1024 - 256)
    assert windowed.flops_per_token(128) == full.flops_per_token(128)  # windows longer than T cost T


@pytest.mark.parametrize(
    "bad, key",
    [
        (dict(attention_mask="documents"), "attention_mask"),
        (dict(window_pattern="SXL", sliding_window=4), "window_pattern"),
        (dict(window_pattern="SL"), "sliding_window"),
        (dict(sliding_window=4), "window_pattern"),
        (dict(window_pattern="S", sliding_window=0), "sliding_window"),
        (dict(attention_backend="varlen"), "attention_backend"),
        (dict(attention_backend="flex", dropout=0.1), "attention_backend"),
        (dict(attention_mask="document", vocab_size=1000), "attention_mask"),
    ],
)
def test_bad_attention_settings_name_the_key(bad, key):
    with pytest.raises(ValueError, match=key):
        tiny_config(**bad)


def test_window_pattern_tiles_over_the_layers():
    config = ModelConfig(n_layer=6, window_pattern="SSL", sliding_window=64)
    assert config.layer_windows() == [64, 64, None, 64, 64, None]
    assert config.layer_windows(16) == [16, 16, None, 16, 16, None]
    assert ModelConfig(n_layer=3).layer_windows() == [None, None, None]


def test_masking_and_windows_survive_save_and_load(tmp_path):
    """Every command (validate, generate, hellaswag, eval, the harness) rebuilds the model from the checkpoint."""
    from lm.checkpoint import load_model
    from tests.test_generate import save_checkpoint

    torch.manual_seed(0)
    model = GPT(tiny_config(attention_mask="document", window_pattern="SL", sliding_window=4)).eval()
    loaded, _ = load_model(save_checkpoint(model, tmp_path / "model.ckpt"))
    assert loaded.config == model.config and loaded.layer_windows == [4, None]
    ids, _ = packed_row()
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
