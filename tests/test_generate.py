from dataclasses import asdict

import pytest
import torch

from lm.cli import main
from lm.data.tokenizer import EOT, get_encoding
from lm.generate import generate_text, stream_text
from lm.model import GPT
from tests.conftest import tiny_config


def save_checkpoint(model: GPT, path) -> str:
    """The two keys of a Lightning checkpoint that load_model reads."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": {"config": asdict(model.config)}, "state_dict": state}, path)
    return str(path)


def eos_model() -> GPT:
    """A classic GPT whose most likely next token is always <|endoftext|>."""
    model = GPT(tiny_config("classic", tie_embeddings=False))
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[EOT] = 1.0
    return model.eval()


def test_cached_and_uncached_greedy_decoding_agree(block):
    torch.manual_seed(0)
    model = GPT(tiny_config(block)).eval()
    idx = torch.randint(0, 50257, (2, 5))
    # 5 + 27 tokens fill the 32-token context exactly (past it, the cache keeps a shorter history by design).
    cached = torch.stack(list(model.generate(idx, 27, temperature=0, use_cache=True)), dim=1)
    uncached = torch.stack(list(model.generate(idx, 27, temperature=0, use_cache=False)), dim=1)
    assert torch.equal(cached, uncached)


def test_streaming_never_splits_a_utf8_character(monkeypatch):
    text = "héllo wörld 日本語 🙂🙂"
    ids = get_encoding().encode(text)
    assert any(not get_encoding().decode_single_token_bytes(i).decode("utf-8", errors="ignore") for i in ids)
    model = GPT(tiny_config()).eval()
    monkeypatch.setattr(GPT, "generate", lambda self, idx, *args: iter(torch.tensor([i]) for i in ids))
    pieces = list(stream_text(model, "x", max_new_tokens=len(ids)))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_generation_stops_at_eos_unless_asked_not_to():
    model = eos_model()
    assert generate_text(model, "Hello", max_new_tokens=5, temperature=0) == ""
    assert generate_text(model, "Hello", max_new_tokens=3, temperature=0, stop_at_eos=False) == "<|endoftext|>" * 3


def test_generate_text_restores_train_mode_and_is_reproducible():
    model = GPT(tiny_config()).train()
    first = generate_text(model, "The", max_new_tokens=8, seed=1, temperature=1.0, top_k=50)
    assert model.training
    assert first == generate_text(model, "The", max_new_tokens=8, seed=1, temperature=1.0, top_k=50)


def test_cli_prints_prompt_and_generated_text(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_checkpoint(GPT(tiny_config()), tmp_path / "tiny.ckpt")
    main(
        [
            "generate",
            "--ckpt_path",
            ckpt,
            "--prompt",
            "Once upon",
            "--max_new_tokens",
            "10",
            "--seed",
            "0",
            "--ignore_eos",
            "--no_cache",
        ]
    )
    out = capsys.readouterr().out
    assert out.startswith("Once upon") and len(out) > len("Once upon\n")


def test_cli_stops_at_eos_and_truncates_a_long_prompt(tmp_path, capsys):
    ckpt = save_checkpoint(eos_model(), tmp_path / "eos.ckpt")
    prompt = "word " * 100  # 100 tokens, context 32
    main(["generate", "--ckpt_path", ckpt, "--prompt", prompt, "--temperature", "0"])
    captured = capsys.readouterr()
    assert captured.out == prompt + "\n"
    assert "keeping the last 32" in captured.err


def test_cli_bench_reports_both_speeds(tmp_path, capsys):
    ckpt = save_checkpoint(GPT(tiny_config()), tmp_path / "tiny.ckpt")
    main(["generate", "--ckpt_path", ckpt, "--max_new_tokens", "8", "--bench"])
    assert "with the KV cache" in capsys.readouterr().out


def test_cli_missing_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="error: checkpoint not found"):
        main(["generate", "--ckpt_path", str(tmp_path / "nope.ckpt")])
