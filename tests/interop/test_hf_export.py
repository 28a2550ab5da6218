import json

import lightning as L
import pytest
import tiktoken
import torch

from lm.cli import main as lm_main
from lm.errors import UserError
from lm.interop import export, hf
from lm.model import GPT
from lm.module import LanguageModel
from tests.conftest import tiny_config
from tests.interop.tiny_hf import hf_logits, perturb, transformers

IDS = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))


def exported(tmp_path, block: str, **overrides) -> tuple[GPT, "transformers.PreTrainedModel"]:
    """A random GPT of ours, exported and loaded back by transformers."""
    torch.manual_seed(0)
    model = perturb(GPT(tiny_config(block, **overrides)))
    hf.save_hf_dir(model.config, model.state_dict(), tmp_path / "hf")
    return model, transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")


def assert_same_greedy_tokens(model: GPT, hf_model) -> None:
    """Our KV-cache generation and transformers' generate agree token for token from a 4-token prompt."""
    prompt = IDS[:, :4]
    ours = torch.stack(list(model.generate(prompt, 12, temperature=0)), dim=1)
    theirs = hf_model.generate(prompt, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert torch.equal(ours, theirs[:, 4:])


@pytest.mark.parametrize("tied", [True, False])
def test_export_loads_in_transformers(tmp_path, block, tied):
    model, hf_model = exported(tmp_path, block, tie_embeddings=tied, vocab_size=1000)
    assert type(hf_model).__name__ == {"classic": "GPT2LMHeadModel", "modern": "LlamaForCausalLM"}[block]
    shared = hf_model.lm_head.weight.data_ptr() == hf_model.get_input_embeddings().weight.data_ptr()
    assert shared == tied
    with torch.no_grad():
        assert (hf_logits(hf_model, IDS) - model(IDS)).abs().max() <= 1e-4


@pytest.mark.parametrize("tied", [True, False])
def test_qk_norm_exports_as_qwen3(tmp_path, tied):
    model, hf_model = exported(tmp_path, "modern", qk_norm=True, tie_embeddings=tied, vocab_size=1000)
    assert type(hf_model).__name__ == "Qwen3ForCausalLM"
    with torch.no_grad():
        assert (hf_logits(hf_model, IDS) - model(IDS)).abs().max() <= 1e-4
    assert_same_greedy_tokens(model, hf_model)


WINDOWED = {
    "MistralForCausalLM": dict(window_pattern="S", sliding_window=5),
    "MinistralForCausalLM": dict(window_pattern="SL", sliding_window=5),
    "Qwen3ForCausalLM": dict(window_pattern="LS", sliding_window=5, qk_norm=True),
}


@pytest.mark.parametrize("architecture", WINDOWED)
def test_sliding_windows_export_exactly(tmp_path, architecture):
    """Each layer's window as transformers computes it (16 tokens, windows of 5): logits to 1e-4."""
    model, hf_model = exported(tmp_path, "modern", vocab_size=1000, **WINDOWED[architecture])
    assert type(hf_model).__name__ == architecture
    with torch.no_grad():
        assert (hf_logits(hf_model, IDS) - model(IDS)).abs().max() <= 1e-4
    full = perturb(GPT(tiny_config("modern", vocab_size=1000, qk_norm=architecture.startswith("Qwen"))))
    full.load_state_dict(model.state_dict())
    assert (full(IDS) - model(IDS)).abs().max() > 1e-3  # the windows matter on these tokens


@pytest.mark.parametrize(
    "architecture, knobs",
    [
        ("LlamaForCausalLM", {}),
        ("Qwen3ForCausalLM", {"qk_norm": True}),
        ("MinistralForCausalLM", WINDOWED["MinistralForCausalLM"]),
    ],
)
def test_grouped_query_attention_exports_exactly_and_imports_back(tmp_path, architecture, knobs):
    """4 query heads over 2 key/value heads: num_key_value_heads 2, logits and greedy tokens as transformers computes
    them; the directory imports back to the same config and weights."""
    model, hf_model = exported(tmp_path, "modern", n_head=4, n_kv_head=2, vocab_size=1000, **knobs)
    assert type(hf_model).__name__ == architecture and hf_model.config.num_key_value_heads == 2
    assert hf_model.model.layers[0].self_attn.k_proj.weight.shape == (16, 32)
    with torch.no_grad():
        assert (hf_logits(hf_model, IDS) - model(IDS)).abs().max() <= 1e-4
    assert_same_greedy_tokens(model, hf_model)
    if architecture != "MinistralForCausalLM":  # lm imports GPT-2, Llama and Qwen3
        config, state = hf.load_hf_dir(tmp_path / "hf")
        assert config.n_kv_head == 2 and config.qk_norm == model.config.qk_norm
        rows = lambda name: slice(1000) if name in hf.VOCAB_ROWS else slice(None)  # the padding is not exported
        assert all(torch.equal(state[name][rows(name)], t[rows(name)]) for name, t in model.state_dict().items())


def test_zero_initialised_projections_are_only_an_init_and_export(tmp_path):
    model, hf_model = exported(tmp_path, "modern", zero_init_proj=True, vocab_size=1000)
    assert type(hf_model).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        assert (hf_logits(hf_model, IDS) - model(IDS)).abs().max() <= 1e-4


def test_document_masking_exports_exact_on_a_single_document(tmp_path):
    model, hf_model = exported(tmp_path, "modern", attention_mask="document", window_pattern="S", sliding_window=6)
    document = IDS.clone()
    document[:, 0] = 50256  # a document starts with <|endoftext|>
    with torch.no_grad():
        assert (hf_logits(hf_model, document) - model(document)).abs().max() <= 1e-4


@pytest.mark.parametrize(
    "block, knob",
    [
        ("modern", {"logit_softcap": 30.0}),
        ("modern", {"mlp_activation": "relu2"}),
        ("modern", {"mlp_activation": "gelu"}),
        ("modern", {"residual_scalars": True}),
        ("classic", {"residual_scalars": True}),
        ("modern", {"value_embeddings": "alternating"}),
        ("classic", {"n_kv_head": 1}),
        ("classic", {"qk_norm": True}),
        ("classic", {"mlp_activation": "swiglu"}),
        ("classic", {"window_pattern": "S", "sliding_window": 4}),
    ],
)
def test_a_config_transformers_cannot_compute_exactly_is_refused(tmp_path, block, knob):
    model = GPT(tiny_config(block, **knob))
    key = next(iter(knob))
    with pytest.raises(UserError, match=rf"model.config.{key} = .* cannot be exported"):
        hf.save_hf_dir(model.config, model.state_dict(), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_the_export_command_refuses_it_in_one_line(tmp_path):
    from tests.test_generate import save_checkpoint

    checkpoint = save_checkpoint(GPT(tiny_config(logit_softcap=15.0)), tmp_path / "capped.ckpt")
    with pytest.raises(SystemExit, match="^error: model.config.logit_softcap = 15.0"):
        lm_main(["export", "--ckpt_path", checkpoint, "--out", str(tmp_path / "hf")])


def test_greedy_generation_matches_transformers(tmp_path, block):
    model, hf_model = exported(tmp_path, block, vocab_size=1000)
    assert_same_greedy_tokens(model, hf_model)


def test_export_ships_the_gpt2_tokenizer(tmp_path):
    model, hf_model = exported(tmp_path, "modern")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["eos_token_id"] == config["bos_token_id"] == 50256 == hf_model.generation_config.eos_token_id
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Hello world!  Ünïcode 中文 ☃\n\n\tdef f(x):\n    return x<|endoftext|>next"
    assert tokenizer(text)["input_ids"] == tiktoken.get_encoding("gpt2").encode(text, allowed_special="all")


def test_export_from_a_lightning_checkpoint(tmp_path):
    torch.manual_seed(0)
    module = LanguageModel(config=tiny_config("classic", tie_embeddings=False))
    perturb(module.model)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    export.main(["--ckpt_path", str(tmp_path / "last.ckpt"), "--out", str(tmp_path / "hf")])
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        assert (hf_logits(hf_model, IDS) - module.model.eval()(IDS)).abs().max() <= 1e-4
    assert "last.ckpt" in (tmp_path / "hf" / "README.md").read_text()

    with pytest.raises(SystemExit, match="already exists and is not empty"):
        lm_main(["export", "--ckpt_path", str(tmp_path / "last.ckpt"), "--out", str(tmp_path / "hf")])


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(hf, "save_file", disk_full)
    model = GPT(tiny_config())
    with pytest.raises(OSError, match="No space"):
        hf.save_hf_dir(model.config, model.state_dict(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_non_empty_directory_but_fills_an_empty_one(tmp_path):
    model = GPT(tiny_config())
    (tmp_path / "empty").mkdir()
    hf.save_hf_dir(model.config, model.state_dict(), tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").is_file()
    with pytest.raises(UserError, match="empty.*already exists"):
        hf.save_hf_dir(model.config, model.state_dict(), tmp_path / "empty")
