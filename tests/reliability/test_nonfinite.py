"""Non-finite steps are skipped on the device (weights and AdamW state untouched), counted, and K in a row stop."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lm.callbacks.checkpointing import AtomicCheckpointIO
from lm.callbacks.nonfinite import NonFiniteGuard
from lm.checkpoint import load_checkpoint
from lm.data.datamodule import TokenDataModule
from lm.errors import UserError
from lm.module import LanguageModel
from lm.optim import MuonConfig, OptimConfig
from tests.conftest import quiet_trainer, tiny_config


class PoisonedModel(LanguageModel):
    """A NaN loss at the given optimizer steps (0-based global_step before the step)."""

    def __init__(self, bad_steps: set[int], **kwargs):
        super().__init__(**kwargs)
        self.bad_steps = bad_steps

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * math.nan if self.global_step in self.bad_steps else loss


def flat(state_dict: dict) -> torch.Tensor:
    """All of the model's weights in one vector."""
    return torch.cat([v.flatten() for k, v in state_dict.items() if k.startswith("model.")])


class WeightRecorder(L.Callback):
    """The flattened weights after every optimizer step."""

    def __init__(self):
        self.after = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append(flat(pl_module.state_dict()).clone())


def fit(
    corpus,
    tmp_path,
    bad_steps,
    max_consecutive=3,
    max_steps=5,
    optimizer="adamw",
    muon=None,
    model_class=None,
    **trainer_args,
):
    optim = OptimConfig(name=optimizer, lr=1e-3, warmup_steps=1, muon=muon or MuonConfig())
    model = (model_class or PoisonedModel)(bad_steps, config=tiny_config(n_layer=1), optim=optim)
    data = TokenDataModule(corpus, seq_len=32, batch_size=2, num_workers=0, val_batches=1)
    recorder = WeightRecorder()
    trainer = quiet_trainer(
        tmp_path,
        max_steps=max_steps,
        limit_val_batches=0,
        log_every_n_steps=1,
        plugins=[AtomicCheckpointIO(), *trainer_args.pop("plugins", [])],
        callbacks=[NonFiniteGuard(max_consecutive), recorder, *trainer_args.pop("callbacks", [])],
        **trainer_args,
    )
    return trainer, model, recorder, lambda: trainer.fit(model, data)


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "muon-variants"])
def test_a_nan_step_is_skipped_and_counted(text_corpus, tmp_path, optimizer):
    variants = MuonConfig(orthogonalization="polar_express", normuon=True, cautious_weight_decay=True, split_fused=True)
    muon = variants if optimizer == "muon-variants" else None
    optimizer = optimizer.removesuffix("-variants")
    trainer, model, recorder, run = fit(
        text_corpus, tmp_path, {2}, optimizer=optimizer, muon=muon, enable_checkpointing=False
    )
    run()
    weights = recorder.after
    assert torch.equal(weights[2], weights[1])  # step 3 (global_step 2 -> 3) changed nothing
    assert all(not torch.equal(weights[i], weights[i - 1]) for i in (1, 3, 4))
    assert torch.isfinite(weights[-1]).all()  # no NaN got into AdamW's moments or Muon's momentum either
    adamw = trainer.optimizers[0] if optimizer == "adamw" else trainer.optimizers[0].adamw
    assert all(int(state["step"]) == 4 for state in adamw.state.values())  # AdamW's own count skipped it too
    assert trainer.callback_metrics["train/skipped_steps"].item() == 1
    assert torch.isfinite(trainer.callback_metrics["train/grad_norm"])


def test_k_bad_steps_in_a_row_stop_and_keep_the_last_good_checkpoint(text_corpus, tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=1, save_last=True)
    trainer, model, recorder, run = fit(
        text_corpus, tmp_path, bad_steps=set(range(2, 100)), max_steps=20, callbacks=[checkpoint]
    )
    with pytest.raises(UserError, match="3 optimizer steps in a row .by step 5. had a non-finite loss"):
        run()
    last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 4  # nothing saved at the step that stopped the run
    saved = flat(last["state_dict"])
    assert torch.isfinite(saved).all()
    assert torch.equal(saved, recorder.after[1])  # the weights of the last good step (2)


def test_a_good_step_ends_a_run_of_bad_ones(text_corpus, tmp_path):
    """Bad and good steps alternating never make max_consecutive (2) in a row: the run ends at max_steps."""
    trainer, model, recorder, run = fit(
        text_corpus, tmp_path, bad_steps={0, 2, 4, 6}, max_consecutive=2, max_steps=8, enable_checkpointing=False
    )
    run()
    assert trainer.global_step == 8
    assert trainer.callback_metrics["train/skipped_steps"].item() == 4


def test_clipping_with_the_guards_norm_equals_lightnings_clipping(text_corpus, tmp_path):
    """The guard computes the gradient norm once; clipping uses it (LanguageModel.configure_gradient_clipping)."""
    runs = []
    for guard in (True, False):
        torch.manual_seed(0)
        model = LanguageModel(config=tiny_config(n_layer=1), optim=OptimConfig(lr=1e-3, warmup_steps=1))
        data = TokenDataModule(text_corpus, seq_len=32, batch_size=2, num_workers=0, val_batches=1)
        recorder = WeightRecorder()
        trainer = quiet_trainer(
            tmp_path,
            max_steps=4,
            limit_val_batches=0,
            gradient_clip_val=0.05,  # far below the norm (~2): every step is clipped
            enable_checkpointing=False,
            callbacks=[recorder, *([NonFiniteGuard()] if guard else [])],
        )
        trainer.fit(model, data)
        runs.append(recorder.after)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert not torch.equal(runs[0][0], runs[0][1])


def test_with_fp16_loss_scaling_adamw_is_not_fused_and_the_grad_scaler_skips(monkeypatch):
    """16-mixed (seed run E; Lightning runs it on GPUs only): the GradScaler must unscale the gradients before
    clipping, which fused AdamW would only do inside its step, and it skips non-finite steps itself."""
    from types import SimpleNamespace

    module = LanguageModel(config=tiny_config())
    for precision, fused in (("16-mixed", False), ("bf16-mixed", True), ("32-true", True)):
        monkeypatch.setattr(LanguageModel, "trainer", SimpleNamespace(precision=precision, max_steps=10), raising=False)
        optimizer = module.configure_optimizers()["optimizer"]
        assert getattr(optimizer, "_step_supports_amp_scaling", False) == fused, precision
    plain = torch.optim.AdamW(module.parameters())
    with pytest.raises(UserError, match="NonFiniteGuard needs an optimizer that accepts found_inf"):
        NonFiniteGuard().on_fit_start(SimpleNamespace(precision_plugin=None, optimizers=[plain]), module)
    scaled = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=torch.amp.GradScaler("cpu")), optimizers=[plain])
    NonFiniteGuard().on_fit_start(scaled, module)  # accepted: the scaler skips


class ScaleRecorder(L.Callback):
    """The GradScaler's scale after every optimizer step."""

    def __init__(self):
        self.scales = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.scales.append(trainer.precision_plugin.scaler.get_scale())


class FusedAdamWModel(PoisonedModel):
    """Fused AdamW under 16-mixed (LanguageModel unfuses it there): it unscales inside its own step."""

    def configure_optimizers(self):
        config = super().configure_optimizers()
        config["optimizer"] = self.build_optimizer(fused=True)
        config["lr_scheduler"]["scheduler"].optimizer = config["optimizer"]
        return config


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-fused", "muon"])
def test_fp16_loss_scaling_steps_every_optimizer_and_skips_a_nonfinite_step(text_corpus, tmp_path, optimizer):
    """16-mixed (seed run E on a T4) with the guard: each optimizer steps, a NaN step changes no weight, and the
    GradScaler backs off (halves its scale) at that step only, as torch's GradScaler does."""
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu")
    scales = ScaleRecorder()
    trainer, model, recorder, run = fit(
        text_corpus,
        tmp_path,
        {2},
        optimizer="muon" if optimizer == "muon" else "adamw",
        model_class=FusedAdamWModel if optimizer == "adamw-fused" else None,
        enable_checkpointing=False,
        gradient_clip_val=1.0,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        callbacks=[scales],
    )
    run()
    fused = getattr(trainer.optimizers[0], "_step_supports_amp_scaling", False)
    assert fused == (optimizer == "adamw-fused")
    weights = recorder.after
    assert torch.equal(weights[2], weights[1])  # the NaN step changed nothing
    assert all(not torch.equal(weights[i], weights[i - 1]) for i in (1, 3, 4))
    assert torch.isfinite(weights[-1]).all()
    init = 2.0**16  # GradScaler's default init_scale; growth only after 2000 good steps
    assert scales.scales == [init, init, init / 2, init / 2, init / 2]  # backed off once, at the NaN step
    assert trainer.callback_metrics["train/skipped_steps"].item() == 1
    # The unscaled norm (~1 for this model), which clipping uses: 2**15 times that if read before unscaling.
    assert 0 < trainer.callback_metrics["train/grad_norm"].item() < 100
