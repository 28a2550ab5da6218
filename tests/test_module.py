import math
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import tiktoken
import torch

from lm.data.datamodule import TokenDataModule
from lm.data.packed import read_manifest
from lm.data.tokenizer import EOT
from lm.errors import UserError
from lm.module import LanguageModel, NextTokenLoss
from lm.optim import AdamWConfig, MuonConfig, OptimConfig
from tests.conftest import quiet_trainer, tiny_config

# Every Muon variant at once: what holds for plain Muon must hold for it too.
ALL_VARIANTS = MuonConfig(
    orthogonalization="polar_express",
    normuon=True,
    cautious_weight_decay=True,
    lr_scaling="match_rms_adamw",
    split_fused=True,
)


def optimizer_groups(module: LanguageModel) -> tuple[set[str], set[str]]:
    names = {id(p): n for n, p in module.model.named_parameters()}
    groups = module.configure_optimizers()["optimizer"].param_groups
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    return decayed, plain


@pytest.fixture(autouse=True)
def fake_trainer(monkeypatch):
    trainer = SimpleNamespace(
        max_steps=100, accumulate_grad_batches=1, world_size=1, precision="32-true", datamodule=None
    )
    monkeypatch.setattr(LanguageModel, "trainer", trainer, raising=False)


@pytest.fixture
def real_trainer(monkeypatch):
    """For the tests that run a Lightning Trainer: the fake one above undone."""
    monkeypatch.undo()


# The block knobs that add parameters of their own or change their shapes: residual scalars (AdamW, no decay), value
# embeddings (AdamW, as the token embedding; their gates are block matrices: Muon's, as nanochat's), grouped-query
# attention (c_attn of 32 + 16 + 16 rows, split as such).
KNOBS = dict(residual_scalars=True, value_embeddings="alternating", n_kv_head=1)


@pytest.mark.parametrize("knobs", [{}, KNOBS], ids=["plain", "knobs"])
@pytest.mark.parametrize("variants", [False, True], ids=["plain", "variants"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_muon_takes_the_block_matrices_and_adamw_the_rest(block, tied, variants, knobs):
    muon = ALL_VARIANTS if variants else MuonConfig()
    optim = OptimConfig(name="muon", lr=1e-3, muon=MuonConfig(**{**vars(muon), "lr": 0.05}))
    module = LanguageModel(config=tiny_config(block, tie_embeddings=tied, **knobs), optim=optim)
    optimizer = module.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in module.model.named_parameters()}
    members = {name: set() for name in ("muon", "decay", "no_decay")}
    for group in optimizer.param_groups:
        members[group["name"]] |= {names[id(p)] for p in group["params"]}
    every = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    assert sorted(every) == sorted(names.values())  # each parameter in exactly one group
    assert members["muon"] == {
        n for n, p in module.model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2
    }
    assert "transformer.wte.weight" in members["decay"] and ("lm_head.weight" in members["decay"]) != tied
    assert all("ln" in n or "norm" in n or n.endswith(("bias", "_lambdas")) for n in members["no_decay"])
    assert {"resid_lambdas", "x0_lambdas"} <= members["no_decay"] if knobs else True
    assert "transformer.ve.0.weight" in members["decay"] if knobs else True
    muon_groups = [group for group in optimizer.param_groups if group["name"] == "muon"]
    assert {group["initial_lr"] for group in muon_groups} == {0.05}  # before the schedule
    assert optimizer.param_groups[0]["initial_lr"] == 1e-3 and {g["weight_decay"] for g in muon_groups} == {0.0}
    assert optimizer.muon.param_groups == muon_groups and optimizer.adamw.param_groups[0] is optimizer.param_groups[0]
    splits = {names[id(p)].split(".", 3)[-1]: group.get("split") for group in muon_groups for p in group["params"]}
    kv = 16 if knobs else 32
    fused = {"attn.c_attn.weight": (32, kv, kv)} | ({"mlp.c_fc.weight": (256, 256)} if block == "modern" else {})
    assert splits == {name: fused.get(name) if variants else None for name in splits}  # classic: a GELU c_fc


@pytest.mark.parametrize("muon", [MuonConfig(), ALL_VARIANTS], ids=["plain", "variants"])
def test_both_learning_rates_follow_the_schedule(muon):
    optim = OptimConfig(name="muon", lr=1e-3, min_lr=1e-4, warmup_steps=10, muon=muon)
    module = LanguageModel(config=tiny_config(), optim=optim)
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    module.optimizers = lambda: scheduler.optimizer
    for step in range(60):
        adamw, *muons = (group["lr"] for group in scheduler.optimizer.param_groups[1:])
        assert adamw == pytest.approx(module.lr_at(step)) and muons == pytest.approx(
            [module.lr_at(step) * 20] * len(muons)
        )
        assert module.learning_rates() == {"lr": adamw, "lr/muon": muons[0]}  # what is logged
        scheduler.optimizer.step()  # no gradients: changes nothing, but steps in the order torch expects
        scheduler.step()


def test_muon_under_fsdp_is_refused_in_one_line(monkeypatch):
    from lightning.pytorch.strategies import FSDPStrategy

    for muon in (MuonConfig(), ALL_VARIANTS):
        module = LanguageModel(config=tiny_config(), optim=OptimConfig(name="muon", muon=muon))
        monkeypatch.setattr(LanguageModel, "trainer", SimpleNamespace(strategy=FSDPStrategy(), datamodule=None))
        with pytest.raises(UserError, match="model.optim.name: muon cannot run under FSDP"):
            module.setup("fit")


def test_weight_decay_only_on_matrices(block):
    decayed, plain = optimizer_groups(LanguageModel(config=tiny_config(block)))
    assert decayed and plain
    assert all(n.endswith("weight") and "ln" not in n for n in decayed)
    assert all(n.endswith("bias") or "ln" in n for n in plain)
    assert "transformer.wte.weight" in decayed


def test_embeddings_can_be_excluded_from_decay():
    decayed, plain = optimizer_groups(
        LanguageModel(config=tiny_config("classic"), optim=OptimConfig(adamw=AdamWConfig(decay_embeddings=False)))
    )
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= plain
    assert "transformer.h.0.attn.c_attn.weight" in decayed


def test_cosine_schedule_warms_up_then_decays_to_min_lr_at_the_last_step():
    module = LanguageModel(config=tiny_config(), optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10))
    lrs = [module.lr_at(s) for s in range(100)]  # max_steps 100: steps 0..99 run
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-12)
    assert module.lr_at(55) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 45 / 89)) * 9e-4)


def test_wsd_holds_then_reaches_min_lr_at_the_last_step():
    optim = OptimConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10, lr_schedule="wsd", decay_fraction=0.2)
    wsd = LanguageModel(config=tiny_config(), optim=optim)
    lrs = [wsd.lr_at(s) for s in range(100)]
    assert lrs[10] == lrs[79] == pytest.approx(1e-3)  # stable until the last 20 steps
    assert lrs[80] < 1e-3 and all(a > b for a, b in zip(lrs[79:], lrs[80:]))  # 20 steps of linear decay
    assert lrs[89] == pytest.approx(1e-3 + 0.5 * (1e-5 - 1e-3)) and lrs[99] == pytest.approx(1e-5, rel=1e-12)


def test_constant_schedule_holds_after_warmup():
    constant = LanguageModel(config=tiny_config(), optim=OptimConfig(lr=1e-3, warmup_steps=10, lr_schedule="constant"))
    assert constant.lr_at(99) == pytest.approx(1e-3)


def test_bits_per_byte_matches_hand_computation():
    metric = NextTokenLoss()
    metric.update(torch.tensor(2.0 * 10), 10, torch.tensor(40))  # 10 tokens, mean loss 2 nats, 40 bytes
    metric.update(torch.tensor(4.0 * 30), 30, torch.tensor(100))  # 30 tokens, mean loss 4 nats, 100 bytes
    result = metric.compute()
    assert result["loss"].item() == pytest.approx(140 / 40)  # token-weighted, not the mean of 2 and 4
    assert result["ppl"].item() == pytest.approx(math.exp(3.5))
    assert result["bpb"].item() == pytest.approx(140 / (math.log(2) * 140))


def test_checkpoint_hparams_are_plain_and_rebuild_the_model(tmp_path):
    module = LanguageModel(config=tiny_config("classic"))
    assert isinstance(module.hparams.config, dict)
    rebuilt = LanguageModel(**module.hparams)
    assert rebuilt.config == module.config


@pytest.mark.parametrize(
    "bad",
    [
        dict(optim=OptimConfig(lr=-1.0)),
        dict(optim=OptimConfig(muon=MuonConfig(lr=-1.0))),
        dict(max_tokens=1e6, tokens_per_param=20),
    ],
)
def test_bad_optimisation_settings(bad):
    with pytest.raises(UserError, match="model"):
        LanguageModel(config=tiny_config(), **bad)


def test_no_architecture_is_an_error():
    with pytest.raises(UserError, match="model.config"):
        LanguageModel()


def test_token_byte_lengths_add_up_to_the_manifest_bytes(text_corpus):
    """bpb's denominator: bytes per target token, summed, is exactly the UTF-8 size of the source text."""
    import json
    from pathlib import Path

    import numpy as np

    from lm.data.tokenizer import token_byte_lengths

    manifest = json.loads((Path(text_corpus) / "manifest.json").read_text())
    for split, info in manifest["splits"].items():
        tokens = np.concatenate([np.fromfile(Path(text_corpus) / s["file"], dtype=np.uint16) for s in info["shards"]])
        assert token_byte_lengths()[tokens].sum() == info["bytes"], split


def test_a_flop_budget_sets_the_steps_from_the_models_own_count(monkeypatch):
    module = LanguageModel(config=tiny_config("modern"), max_flops=1e12, optim=OptimConfig(warmup_steps=0))
    data = SimpleNamespace(batch_size=2, seq_len=16)
    trainer = SimpleNamespace(
        max_steps=-1, accumulate_grad_batches=1, world_size=1, val_check_interval=1.0, datamodule=data, strategy=None
    )
    trainer.fit_loop = SimpleNamespace(epoch_loop=trainer)
    monkeypatch.setattr(LanguageModel, "trainer", trainer, raising=False)
    module.setup("fit")
    flops_per_token = module.model.flops_per_token(16)
    assert trainer.max_steps == math.ceil(1e12 / flops_per_token / 32)
    with pytest.raises(UserError, match="set only one of model.max_tokens, model.tokens_per_param and model.max_flops"):
        LanguageModel(config=tiny_config("modern"), max_flops=1e12, max_tokens=1e6)


class GradientRecorder(L.Callback):
    """Each step's gradients as backward left them (before clipping) and as the optimizer used them (after)."""

    def __init__(self):
        self.before, self.after = [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # Lightning clips after this hook
        self.before.append([p.grad.clone() for p in pl_module.parameters()])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # grads are kept until the next step
        self.after.append([p.grad.clone() for p in pl_module.parameters()])


@pytest.mark.parametrize("guard", [True, False], ids=["guard_norm", "lightning"])
def test_gradient_clipping_scales_the_gradients_to_the_clip_norm(text_corpus, tmp_path, real_trainer, guard):
    """Clipped by hand: g · clip / (‖g‖ + 1e-6) (torch's clip_grad_norm_), with the norm NonFiniteGuard computes
    (LanguageModel.configure_gradient_clipping) and without the guard (Lightning's own path)."""
    from lm.callbacks.nonfinite import NonFiniteGuard

    clip = 0.05  # far below the gradient norm of a fresh model (~2): every step is clipped
    model = LanguageModel(config=tiny_config(n_layer=1), optim=OptimConfig(lr=1e-3, warmup_steps=1))
    data = TokenDataModule(text_corpus, seq_len=32, batch_size=2, num_workers=0, val_batches=1)
    recorder = GradientRecorder()
    callbacks = [recorder, *([NonFiniteGuard()] if guard else [])]
    trainer = quiet_trainer(
        tmp_path,
        max_steps=3,
        limit_val_batches=0,
        gradient_clip_val=clip,
        enable_checkpointing=False,
        callbacks=callbacks,
    )
    trainer.fit(model, data)
    assert len(recorder.before) == len(recorder.after) == 3
    for before, after in zip(recorder.before, recorder.after):
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in before]))
        assert norm > 10 * clip
        for raw, clipped in zip(before, after):
            torch.testing.assert_close(clipped, raw * (clip / (norm + 1e-6)))


def val_windows(directory: str, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of every window of the val split, read from its shards: window i is tokens i·T … i·T + T."""
    shards = read_manifest(directory)["splits"]["val"]["shards"]
    tokens = np.concatenate([np.fromfile(f"{directory}/{s['file']}", dtype=np.uint16) for s in shards]).astype(np.int64)
    used = (len(tokens) - 1) // seq_len * seq_len
    return torch.from_numpy(tokens[:used]).view(-1, seq_len), torch.from_numpy(tokens[1 : used + 1]).view(-1, seq_len)


def test_validation_metrics_over_a_val_split_whose_last_batch_is_partial(text_corpus, tmp_path, real_trainer):
    """val/loss is the cross-entropy over every target token (a partial last batch weighs by its tokens, not as a
    whole batch); val/bpb is val/loss / ln 2 × target tokens / UTF-8 bytes of the text they encode."""
    seq_len = 32
    inputs, targets = val_windows(text_corpus, seq_len)
    batch_size = next(b for b in range(5, 20) if len(targets) % b)  # the last batch is partial
    torch.manual_seed(0)
    model = LanguageModel(config=tiny_config(n_layer=1))
    data = TokenDataModule(text_corpus, seq_len=seq_len, batch_size=batch_size, num_workers=0, val_batches=10_000)
    (metrics,) = quiet_trainer(tmp_path).validate(model, data)

    with torch.no_grad():
        total = sum(
            torch.nn.functional.cross_entropy(
                model.model.eval()(x).flatten(0, 1).double(), y.flatten(), reduction="sum"
            )
            for x, y in zip(inputs.split(8), targets.split(8))
        )
    assert metrics["val/loss"] == pytest.approx(total.item() / targets.numel(), rel=1e-5)
    # <|endoftext|> stands for no text; every other token for its own bytes.
    text_bytes = len(tiktoken.get_encoding("gpt2").decode_bytes([t for t in targets.flatten().tolist() if t != EOT]))
    expected_bpb = metrics["val/loss"] / math.log(2) * targets.numel() / text_bytes
    assert metrics["val/bpb"] == pytest.approx(expected_bpb, rel=1e-6)
