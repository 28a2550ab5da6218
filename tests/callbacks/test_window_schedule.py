"""The sliding-window schedule: its sizes, exact resume, and few recompilations under torch.compile."""

import lightning as L
import pytest
import torch

from lm.callbacks import SlidingWindowSchedule
from lm.errors import UserError
from lm.model import GPT
from lm.module import LanguageModel
from lm.optim import OptimConfig
from tests.callbacks.test_training_callbacks import RandomTokens
from tests.conftest import tiny_config


def test_the_window_grows_in_stages_to_the_configured_size():
    schedule = SlidingWindowSchedule(start=8, share=0.5, stages=4)
    windows = [schedule.window(step, 100, 32) for step in range(100)]
    assert windows[:13] == [8] * 13 and windows[13] == 14  # stage 1 from step 12.5: 8 + 24 / 4
    assert sorted(set(windows)) == [8, 14, 20, 26, 32]
    assert windows[50:] == [32] * 50  # the configured size from half the run on


class RecordWindows(L.Callback):
    def __init__(self):
        self.windows = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.windows[trainer.global_step - 1] = pl_module.model.layer_windows


def fit(root, ckpt_path=None) -> RecordWindows:
    torch.manual_seed(0)
    config = tiny_config(n_layer=2, block_size=16, window_pattern="SL", sliding_window=12)
    module = LanguageModel(config=config, optim=OptimConfig(warmup_steps=2))
    record = RecordWindows()
    trainer = L.Trainer(
        max_steps=8,
        accelerator="cpu",
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[SlidingWindowSchedule(start=4, share=0.5, stages=2), record],
    )
    trainer.fit(module, datamodule=RandomTokens(), ckpt_path=ckpt_path)
    trainer.save_checkpoint(root / f"step{trainer.global_step}.ckpt")
    return record


def test_a_resumed_run_continues_with_the_same_windows(tmp_path):
    whole = fit(tmp_path / "whole")
    assert [whole.windows[step][0] for step in range(8)] == [4, 4, 8, 8, 12, 12, 12, 12]
    assert all(windows[1] is None for windows in whole.windows.values())  # L layers stay full
    first = tmp_path / "first"
    first.mkdir()
    torch.manual_seed(0)
    module = LanguageModel(config=tiny_config(n_layer=2, block_size=16, window_pattern="SL", sliding_window=12))
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[SlidingWindowSchedule(4, 0.5, 2)],
    )
    trainer.fit(module, datamodule=RandomTokens())
    trainer.save_checkpoint(first / "step3.ckpt")
    resumed = fit(tmp_path / "resumed", ckpt_path=first / "step3.ckpt")
    assert resumed.windows == {step: whole.windows[step] for step in range(3, 8)}


def test_the_schedule_recompiles_once_per_size():
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    knobs = dict(attention_mask="document", window_pattern="SL", sliding_window=12)
    model = GPT(tiny_config(n_layer=2, block_size=16, **knobs))
    forward = torch.compile(model.forward, backend=counting_backend)
    schedule, config = SlidingWindowSchedule(start=4, share=0.5, stages=2), model.config
    ids = torch.randint(0, 50257, (2, 16))
    ids[:, 5] = 50256
    for step in range(8):
        windows = config.layer_windows(schedule.window(step, 8, config.sliding_window))
        if windows != model.layer_windows:
            model.layer_windows = windows
        forward(ids, ids)
    assert len(graphs) == 3  # windows 4, 8, 12; no graph breaks in the masks


def test_a_schedule_without_s_layers_is_refused():
    with pytest.raises(UserError, match="start > 0"):
        SlidingWindowSchedule(start=0)
    module = LanguageModel(config=tiny_config())
    with pytest.raises(UserError, match="grows model.config.sliding_window"):
        SlidingWindowSchedule(start=4).setup(None, module, "fit")
