import json

import pytest
import torch
import yaml

from lm.bench import ReferenceGPT, largest_batch, load_settings, main, reference_model
from lm.model import GPT, ModelConfig
from lm.module import LanguageModel
from lm.optim import OptimConfig
from tests.conftest import tiny_config

TINY = {
    "trainer": {"precision": "32-true", "gradient_clip_val": 1.0, "log_every_n_steps": 2},
    "model": {
        "config": {"block": "modern", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
        "optim": {"lr": 1e-3},
    },
    "data": {"sources": "replaced/by/the/benchmark", "seq_len": 32, "batch_size": 2, "num_workers": 0},
}


def test_bench_writes_a_table_with_all_three_rows(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    args = ["--config", str(config), "--steps", "5", "--warmup", "1", "--repeats", "2"]
    args += ["--out", str(tmp_path / "b.json")]
    main(args)
    result = json.loads((tmp_path / "b.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["lightning", "pytorch", "reference"]
    for r in result["rows"]:
        assert r["tokens_per_sec"] > 0 and r["step_ms"] > 0 and r["warmup_s"] > 0 and r["params"] > 0
        assert r["mfu"] is None and r["peak_memory_gb"] is None  # CPU: no peak FLOP/s, no CUDA memory counter
        assert len(r["step_ms_each_repeat"]) == 2
    assert (
        result["rows"][0]["params"]
        == result["rows"][1]["params"]
        == GPT(ModelConfig(**TINY["model"]["config"])).num_params()
    )
    assert result["device"] == "cpu" and result["batch_size"] == 2 and result["seq_len"] == 32
    assert isinstance(result["lightning_overhead"], float) and isinstance(result["lightning_overhead_ms"], float)
    # The lightning row is the real `python -m lm fit`: its host reads come only at logging steps (2 and 4 here).
    reads = result["rows"][0]["host_reads_in_timed_steps"]
    assert reads["between_logging_steps"] == 0 and reads["per_logging_step"] and min(reads["per_logging_step"]) > 0
    table = capsys.readouterr().out
    for text in ("lightning", "pytorch", "reference", "Lightning overhead", "ms per step", "0 between logging steps"):
        assert text in table


def test_bench_memory_compares_the_loss_from_full_logits_and_chunked(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    main(["--config", str(config), "--memory", "--out", str(tmp_path / "memory.json")])
    memory = json.loads((tmp_path / "memory.json").read_text())["step_memory_gb"]
    assert list(memory) == ["full logits", "chunks of 4096 tokens"] and all(gb > 0 for gb in memory.values())
    assert "loss from full logits" in capsys.readouterr().out


def test_reference_has_our_classic_parameter_count():
    config = ModelConfig(block="classic", n_layer=2, n_head=4, n_embd=64, block_size=64)
    ours, peer = GPT(config), reference_model(config)
    assert config.padded_vocab_size == 50304
    assert sum(p.numel() for p in peer.parameters()) == sum(p.numel() for p in ours.parameters())


def test_reference_trains():
    model = ReferenceGPT(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64)
    idx = torch.randint(0, 64, (2, 8))
    loss = model(idx, idx)
    loss.backward()
    assert loss.item() == pytest.approx(torch.log(torch.tensor(64.0)).item(), rel=0.1)


def test_settings_leave_out_the_budget(tmp_path):
    config = tmp_path / "run.yaml"
    run = {**TINY, "model": {**TINY["model"], "batch_tokens": 4096, "max_tokens": 1e9, "compile": True}}
    config.write_text(yaml.safe_dump(run))
    settings = load_settings([str(config)], batch_size=8)
    assert settings.batch_size == 8 and settings.compile and settings.gradient_clip_val == 1.0
    assert settings.num_workers == 0  # as TINY says
    assert "batch_tokens" not in settings.module_args and "max_tokens" not in settings.module_args


@pytest.mark.parametrize("largest", [0, 1, 5, 64, 100, 4096])
def test_largest_batch_doubles_then_bisects(largest):
    tried = []

    def fits(b):
        tried.append(b)
        return b <= largest

    assert largest_batch(fits) == largest
    assert len(tried) <= 2 * 13


def forward_counting_saved(model, idx) -> tuple[torch.Tensor, int]:
    """Loss and the number of tensors autograd keeps for backward (outside recomputed regions)."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
        loss = model(idx, idx)
    return loss, len(saved)


def test_activation_checkpointing_gives_identical_gradients_and_saves_less():
    grads, saved = [], []
    idx = torch.randint(0, 100, (2, 16))
    for checkpointing in (False, True):
        torch.manual_seed(0)
        module = LanguageModel(config=tiny_config("classic"), activation_checkpointing=checkpointing)
        loss, n = forward_counting_saved(module.model, idx)
        loss.backward()
        saved.append(n)
        grads.append({name: p.grad for name, p in module.model.named_parameters()})
    assert saved[1] < saved[0] / 2
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=0, msg=name)


def loss_curve(backend: str | None, steps: int = 4) -> list[float]:
    """Training losses of a tiny model, eager (backend None) or compiled whole (no graph breaks allowed)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = LanguageModel(config=tiny_config("modern"), optim=OptimConfig(lr=1e-2))
    if backend:
        module.model.compile(backend=backend, fullgraph=True)
    optimizer = module.build_optimizer()
    curve = []
    for batch in torch.randint(0, 100, (steps, 2, 17)):
        loss = module.model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        curve.append(loss.item())
    return curve


def test_model_compiles_without_graph_breaks_and_trains_the_same():
    """Cheap stand-in for the inductor test below: dynamo + AOTAutograd tracing of forward and backward."""
    assert loss_curve("aot_eager") == pytest.approx(loss_curve(None), rel=1e-5)


@pytest.mark.slow
def test_compiled_and_eager_loss_curves_match():
    """torch.compile with inductor (C++ codegen on CPU, about 100 s on 2 cores)."""
    assert loss_curve("inductor") == pytest.approx(loss_curve(None), rel=1e-4)
