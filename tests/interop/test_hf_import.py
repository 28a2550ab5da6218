import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lm.checkpoint import load_model
from lm.errors import UserError
from lm.interop.hf import load_hf_dir, save_hf_dir
from lm.module import LanguageModel
from tests.interop.tiny_hf import hf_logits, tiny_gpt2, tiny_llama

IDS = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))


def test_import_gives_the_same_logits(hf_dir):
    hf_model, path = hf_dir
    model, ckpt = load_model(path)
    assert ckpt == {}
    assert model.config.padded_vocab_size == 128
    assert (model.transformer.wte.weight[100:] == 0).all()
    with torch.no_grad():
        assert (model(IDS) - hf_logits(hf_model, IDS)).abs().max() <= 1e-4


def test_import_export_import_is_the_identity(hf_dir, tmp_path):
    _, path = hf_dir
    config, state = load_hf_dir(path)
    save_hf_dir(config, state, tmp_path / "again")
    config_again, state_again = load_hf_dir(tmp_path / "again")
    assert config_again == config
    assert state_again.keys() == state.keys()
    assert all(torch.equal(state_again[k], state[k]) for k in state)


def test_openai_gpt2_layout_loads(tmp_path):
    """OpenAI's checkpoint was saved from GPT2Model: no "transformer." prefix, causal masks stored as attn.bias."""
    hf_model = tiny_gpt2()
    hf_model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights = {k.removeprefix("transformer."): v for k, v in weights.items()}
    weights |= {f"h.{i}.attn.bias": torch.tril(torch.ones(1, 1, 32, 32)) for i in range(2)}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, _ = load_model(tmp_path)
    with torch.no_grad():
        assert (model(IDS) - hf_logits(hf_model, IDS)).abs().max() <= 1e-4


def test_pytorch_model_bin_loads(tmp_path):
    hf_model = tiny_llama()
    hf_model.save_pretrained(tmp_path)
    torch.save(load_file(tmp_path / "model.safetensors"), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    model, _ = load_model(tmp_path)
    with torch.no_grad():
        assert (model(IDS) - hf_logits(hf_model, IDS)).abs().max() <= 1e-4


def test_continued_pretraining_starts_from_hf_weights(tmp_path):
    hf_model = tiny_llama()
    hf_model.save_pretrained(tmp_path)
    module = LanguageModel(init_from=str(tmp_path))
    assert module.lineage["path"] == str(tmp_path.resolve())
    with torch.no_grad():
        assert (module.model(IDS) - hf_logits(hf_model, IDS)).abs().max() <= 1e-4


# ---- bad inputs: one line naming the file or setting ---------------------------------------------------


def edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | changes))


@pytest.mark.parametrize(
    ("make", "changes", "named"),
    [
        (tiny_gpt2, {"model_type": "bert"}, "model_type 'bert'"),
        (tiny_gpt2, {"activation_function": "relu"}, "activation_function = 'relu'"),
        (tiny_gpt2, {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        (tiny_llama, {"num_key_value_heads": 3}, "num_key_value_heads = 3 does not divide num_attention_heads = 2"),
        (tiny_llama, {"num_key_value_heads": 1}, "'model.layers.0.self_attn.k_proj.weight' has shape (32, 32)"),
        (tiny_llama, {"hidden_act": "gelu"}, "hidden_act = 'gelu'"),
        (tiny_llama, {"attention_bias": True}, "attention_bias"),
        (tiny_llama, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
        (tiny_llama, {"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope_type = 'yarn'"),
        (tiny_llama, {"intermediate_size": 64}, "'model.layers.0.mlp.gate_proj.weight' has shape (48, 32)"),
        (tiny_gpt2, {"vocab_size": 101}, "'transformer.wte.weight' has shape (100, 32)"),
    ],
)
def test_unsupported_config_is_named(tmp_path, make, changes, named):
    make().save_pretrained(tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(UserError) as err:
        load_hf_dir(tmp_path)
    assert named in str(err.value) and str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(UserError, match="config.json not found"):
        load_hf_dir(tmp_path)
    tiny_llama().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no weights in .*model.safetensors"):
        load_hf_dir(tmp_path)


def test_broken_weights_are_named(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(UserError, match="'model.layers.1.mlp.up_proj.weight' is missing"):
        load_hf_dir(tmp_path)
    save_file(
        weights | {"model.layers.1.mlp.up_proj.weight": torch.zeros(48, 32), "extra.bias": torch.zeros(3)},
        tmp_path / "model.safetensors",
    )
    with pytest.raises(UserError, match="'extra.bias' has no place"):
        load_hf_dir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read .*model.safetensors"):
        load_hf_dir(tmp_path)
