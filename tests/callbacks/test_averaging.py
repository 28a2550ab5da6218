"""Weight averaging (EMA): the average against a brute-force one, validated beside the weights, saved with them,
resumed exactly after a crash, chosen on by best.ckpt, and loaded by `--weights ema`."""

import json

import lightning as L
import pytest
import torch

from lm.callbacks.averaging import ExponentialMovingAverage
from lm.checkpoint import AVERAGED, load_checkpoint, load_model
from lm.data.datamodule import TokenDataModule
from lm.errors import UserError
from lm.module import LanguageModel
from lm.optim import OptimConfig
from lm.train import run
from tests.conftest import quiet_trainer, tiny_config, write_config
from tests.reliability.helpers import assert_same_run


class Recorder(L.Callback):
    """The model's weights after every optimizer step, and the metrics of every validation."""

    def __init__(self):
        self.weights: dict[int, list[torch.Tensor]] = {}
        self.validations: dict[int, dict[str, float]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[trainer.global_step] = [p.detach().clone() for p in pl_module.model.parameters()]

    def on_validation_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics
        self.validations[trainer.global_step] = {k: float(v) for k, v in metrics.items() if k.startswith("val/")}


def test_the_average_is_the_warmed_up_ema_of_the_weights_and_is_validated_beside_them(text_corpus, tmp_path):
    ema, recorder = ExponentialMovingAverage(start_step=3, decay=0.8), Recorder()
    model = LanguageModel(config=tiny_config(n_layer=1), optim=OptimConfig(lr=1e-2, warmup_steps=1))
    data = TokenDataModule(text_corpus, seq_len=32, batch_size=2, num_workers=0, val_batches=2)
    trainer = quiet_trainer(
        tmp_path, max_steps=8, val_check_interval=2, check_val_every_n_epoch=None, limit_val_batches=2,
        num_sanity_val_steps=0, callbacks=[ema, recorder],
    )  # fmt: skip
    trainer.fit(model, data)

    expected = [w.clone() for w in recorder.weights[3]]  # a copy of the weights after step 3, then one lerp a step
    for t, step in enumerate(range(4, 9), start=1):
        decay = min(0.8, (1 + t) / (10 + t))  # the warm-up: 2/11, 3/12, ..., then 0.8
        expected = [a + (1 - decay) * (w - a) for a, w in zip(expected, recorder.weights[step])]
    averaged = list(ema.average.parameters())
    assert ema.updates == 6 and ema.step == 8
    for a, e, w in zip(averaged, expected, recorder.weights[8]):
        torch.testing.assert_close(a, e, atol=1e-6, rtol=1e-6)
        assert not torch.equal(a, w)  # and it is not the weights themselves

    before_start, later = recorder.validations[2], recorder.validations[8]
    assert before_start["val/ema/loss"] == before_start["val/loss"]  # before start_step the average is the weights
    assert later["val/ema/loss"] != later["val/loss"]
    assert {"val/ema/loss", "val/ema/ppl", "val/ema/bpb"} <= later.keys()


class CrashAt(L.Callback):
    """An exception as optimizer step `step` begins: the process dies with nothing saved (as under kill -9)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 == self.step:
            raise RuntimeError("killed")


FEATURES = [
    "--ema.start_step", "2", "--ema.decay", "0.9", "--checkpoint.monitor", "val/ema/loss",
    "--spikes.threshold", "3", "--spikes.warmup_steps", "2", "--diagnostics.enabled", "true",
]  # fmt: skip


def test_a_crashed_run_resumes_the_weights_and_their_average_exactly(text_corpus, tmp_path):
    """last.ckpt is written right after the validation at step 4, where the average was being validated: it must
    hold the trained weights, and the average's own state (weights, update count: the decay's warm-up), so that
    the resumed run ends bit-identical to the uninterrupted one."""
    settings = {"trainer.max_steps": 8, "trainer.val_check_interval": 4, "trainer.log_every_n_steps": 2}
    settings["model.z_loss"] = 1e-3
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    config = write_config(tmp_path / "reference.yaml", text_corpus, reference, **settings)
    recorder = Recorder()
    run(["fit", "--config", config, *FEATURES], callbacks=(recorder,))
    config = write_config(tmp_path / "crashed.yaml", text_corpus, crashed, **settings)
    with pytest.raises(RuntimeError, match="killed"):
        run(["fit", "--config", config, *FEATURES], callbacks=(CrashAt(6),))

    saved = load_checkpoint(crashed / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 4 and saved[AVERAGED]["updates"] == 3
    trained = [v for k, v in saved["state_dict"].items() if k.startswith("model.") and k != "model.lm_head.weight"]
    assert all(torch.equal(s, w) for s, w in zip(trained, recorder.weights[4]))  # the trained weights, not the average

    run(["fit", "--config", config, *FEATURES, "--ckpt_path", "last"])
    assert_same_run(crashed, reference)
    mine, theirs = (load_checkpoint(run / "checkpoints" / "last.ckpt") for run in (crashed, reference))
    assert mine[AVERAGED]["updates"] == theirs[AVERAGED]["updates"] == 7
    for name, value in theirs[AVERAGED]["state_dict"].items():
        assert torch.equal(mine[AVERAGED]["state_dict"][name], value), name
    spikes_state = lambda ckpt: ckpt["callbacks"]["LossSpikeDetector"]  # noqa: E731
    assert torch.equal(spikes_state(mine)["stats"], spikes_state(theirs)["stats"])
    assert spikes_state(mine)["seen"] == spikes_state(theirs)["seen"] == 8

    # z-loss, spikes and diagnostics are logged at every logging step (2, 4, 6, 8).
    lines = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    logged = ("train/z_loss", "train/loss_spikes", "diag/decay/grad_norm", "diag/no_decay/update_ratio")
    assert [line["step"] for line in lines if all(key in line for key in logged)] == [2, 4, 6, 8]
    assert all(0 < line["train/z_loss"] < 1e-3 * 11**2 for line in lines if "train/z_loss" in line)

    # best.ckpt was chosen on the average's validation loss.
    ema_losses = {line["step"]: line["val/ema/loss"] for line in lines if "val/ema/loss" in line}
    best = load_checkpoint(reference / "checkpoints" / "best.ckpt")
    assert best["global_step"] == min(ema_losses, key=ema_losses.get)

    # `validate --weights ema` evaluates the average: its val/loss is what fit logged as val/ema/loss at step 8.
    last = str(reference / "checkpoints" / "last.ckpt")
    run(["validate", "--config", str(reference / "config.yaml"), "--ckpt_path", last, "--weights", "ema"])
    result = json.loads((reference / "validate" / "last" / "metrics.json").read_text())
    assert result["metrics"]["val/loss"] == pytest.approx(ema_losses[8], rel=1e-6)


def test_load_model_gives_the_average_when_asked(text_corpus, tmp_path):
    ema = ExponentialMovingAverage(start_step=1, decay=0.5)
    model = LanguageModel(config=tiny_config(n_layer=1), optim=OptimConfig(lr=1e-2, warmup_steps=1))
    data = TokenDataModule(text_corpus, seq_len=32, batch_size=2, num_workers=0, val_batches=1)
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[ema])
    trainer.fit(model, data)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    raw, _ = load_model(tmp_path / "run.ckpt")
    averaged, _ = load_model(tmp_path / "run.ckpt", weights="ema")
    for name, value in ema.average.state_dict().items():
        assert torch.equal(averaged.state_dict()[name], value), name
        assert torch.equal(raw.state_dict()[name], model.model.state_dict()[name]), name

    plain = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    plain.fit(LanguageModel(config=tiny_config(n_layer=1), optim=OptimConfig(warmup_steps=1)), data)
    plain.save_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(UserError, match="holds no averaged weights"):
        load_model(tmp_path / "plain.ckpt", weights="ema")
