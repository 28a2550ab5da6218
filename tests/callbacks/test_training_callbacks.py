import json
import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from lm.callbacks import HellaSwagCallback, RunSummaryCallback, SampleCallback, default_callbacks
from lm.callbacks.throughput import peak_dtype, peak_flops
from lm.module import LanguageModel
from lm.optim import OptimConfig
from tests.conftest import tiny_config
from tests.eval.test_hellaswag import write_jsonl


class RandomTokens(L.LightningDataModule):
    """Random (x, y) windows with the attributes LanguageModel.setup reads."""

    batch_size, seq_len = 2, 16

    def _loader(self, n: int, seed: int) -> DataLoader:
        tokens = torch.randint(0, 50257, (n, self.seq_len + 1), generator=torch.Generator().manual_seed(seed))
        return DataLoader([(t[:-1], t[1:]) for t in tokens], batch_size=self.batch_size)

    def train_dataloader(self):
        return self._loader(64, 0)

    def val_dataloader(self):
        return self._loader(4, 1)


def fit(root, callbacks, max_steps=6, **trainer_args) -> LanguageModel:
    torch.manual_seed(0)
    module = LanguageModel(config=tiny_config(n_layer=1, block_size=32), optim=OptimConfig(warmup_steps=2))
    trainer = L.Trainer(
        max_steps=max_steps,
        log_every_n_steps=2,
        val_check_interval=3,
        limit_val_batches=2,
        num_sanity_val_steps=1,
        callbacks=callbacks,
        logger=TensorBoardLogger(root, name="", version=""),
        default_root_dir=root,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **trainer_args,
    )
    trainer.fit(module, datamodule=RandomTokens())
    return module


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_default_callbacks_write_metrics_summary_and_samples(tmp_path):
    callbacks = default_callbacks()
    callbacks[1].every_n_steps, callbacks[1].sampling["max_new_tokens"] = 4, 5
    module = fit(tmp_path, callbacks)
    tokens_per_step = 2 * 16

    lines = read_lines(tmp_path / "metrics.jsonl")
    train = [line for line in lines if "train/loss" in line]
    val = [line for line in lines if "val/loss" in line]
    assert [line["step"] for line in train] == [2, 4, 6]
    assert [line["step"] for line in val] == [3, 6]  # not the sanity check
    assert all(line["tokens"] == line["step"] * tokens_per_step for line in lines)
    assert all(line["perf/tokens_per_sec"] > 0 and "perf/mfu" not in line for line in train)  # CPU: no MFU
    assert train[0]["lr"] == pytest.approx(module.lr_at(1))  # the rate the logged step trained with
    assert all("val/loss" not in line for line in train) and all("train/loss" not in line for line in val)
    assert {"val/ppl", "val/bpb"} <= set(val[0])

    summary = json.loads((tmp_path / "run_summary.json").read_text())
    best = min(val, key=lambda line: line["val/loss"])
    assert summary["finished"] and summary["step"] == 6 and summary["tokens_seen"] == 6 * tokens_per_step
    assert summary["best_val"] == {k: best[k] for k in ("step", "tokens", "val/loss", "val/ppl", "val/bpb")}
    assert summary["params"] == module.model.num_params() and summary["lineage"] is None
    assert 0 < summary["non_embedding_params"] == module.model.num_params(non_embedding=True) < summary["params"]
    assert summary["flops"] == summary["tokens_seen"] * module.model.flops_per_token(16) > 0  # spent, at seq_len 16
    assert summary["mean_tokens_per_sec"] == pytest.approx(sum(t["perf/tokens_per_sec"] for t in train) / 3)
    assert [s["step"] for s in summary["final_samples"]] == [6] and summary["final_samples"][0]["prompt"] == "The"
    assert not list(tmp_path.glob("*.tmp"))


def test_sample_callback_logs_text_on_rank_zero_and_restores_train_mode():
    module = LanguageModel(config=tiny_config(n_layer=1)).train()
    texts = []
    experiment = SimpleNamespace(add_text=lambda tag, text, step: texts.append((tag, text, step)))
    trainer = SimpleNamespace(
        global_step=10, is_global_zero=True, strategy=None, loggers=[SimpleNamespace(experiment=experiment)]
    )
    callback = SampleCallback(prompts=["Hello", "World"], every_n_steps=5, max_new_tokens=4)
    callback.on_train_batch_end(trainer, module, None, None, 0)
    assert module.training
    assert [(tag, step) for tag, _, step in texts] == [("samples/0", 10), ("samples/1", 10)]
    assert texts[0][1].startswith("Hello") and callback.samples[1]["prompt"] == "World"
    callback.on_train_batch_end(trainer, module, None, None, 1)  # same step (gradient accumulation): no repeat
    trainer.global_step, trainer.is_global_zero = 15, False
    callback.on_train_batch_end(trainer, module, None, None, 2)
    assert len(texts) == 2


def test_hellaswag_callback_logs_at_validation_with_gradient_accumulation(tmp_path):
    data = write_jsonl(tmp_path / "hs.jsonl")
    callbacks = [HellaSwagCallback(data, every_n_steps=4, limit=3, batch_size=2), *default_callbacks()]
    fit(tmp_path, callbacks, accumulate_grad_batches=2)
    lines = read_lines(tmp_path / "metrics.jsonl")
    train = [line for line in lines if "train/loss" in line]
    assert [line["step"] for line in train] == [2, 4, 6]  # one line per optimizer step, not per micro-batch
    assert all(line["tokens"] == line["step"] * 2 * 16 * 2 for line in lines)
    val = [line for line in lines if "val/loss" in line]
    # val_check_interval (3) counts optimizer steps: validations at 3 and 6; HellaSwag at 3, not at 6 < 3 + 4.
    assert [(line["step"], "eval/hellaswag_acc_norm" in line) for line in val] == [(3, True), (6, False)]
    assert val[0]["eval/hellaswag_acc_norm"] * 3 == pytest.approx(round(val[0]["eval/hellaswag_acc_norm"] * 3))


class WindowLosses(L.Callback):
    """Each micro-batch's loss, computed apart from training (same weights, same batch), by optimizer step."""

    def __init__(self):
        self.by_step: dict[int, list[float]] = {}

    @torch.no_grad()
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        loss = pl_module.model(*batch).item()
        self.by_step.setdefault(trainer.global_step + 1, []).append(loss)


def test_train_loss_is_the_mean_over_the_accumulation_window(tmp_path):
    windows = WindowLosses()
    fit(tmp_path, [windows, RunSummaryCallback()], accumulate_grad_batches=4)
    assert all(len(losses) == 4 for losses in windows.by_step.values())
    train = [line for line in read_lines(tmp_path / "metrics.jsonl") if "train/loss" in line]
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    board = {event.step: event.value for event in events.Scalars("train/loss")}
    assert [line["step"] for line in train] == [2, 4, 6] == sorted(board)
    for line in train:
        mean = sum(windows.by_step[line["step"]]) / 4
        assert line["train/loss"] == pytest.approx(mean, rel=1e-6) != windows.by_step[line["step"]][-1]
        assert board[line["step"]] == pytest.approx(mean, rel=1e-6)


def test_peak_flops_table():
    assert peak_flops("NVIDIA H100 80GB HBM3") == peak_flops("NVIDIA H200") == 989e12  # SXM
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H100 NVL") == peak_flops("NVIDIA H200 NVL") == 835e12
    assert peak_flops("NVIDIA A100-SXM4-40GB") == peak_flops("NVIDIA A100-PCIE-40GB") == 312e12
    assert peak_flops("NVIDIA A10") == 125e12
    assert peak_flops("NVIDIA GeForce RTX 3090") == 71e12
    assert peak_flops("NVIDIA L4") == 121e12 and peak_flops("NVIDIA L40S") is None
    assert peak_flops("AMD Instinct MI300X") is None
    # T4 has fp16 tensor cores but no bf16: an fp16 (16-mixed) run gets its fp16 peak, a bf16 run no MFU.
    assert peak_flops("Tesla T4", peak_dtype("16-mixed")) == 65e12
    assert peak_flops("Tesla T4", peak_dtype("bf16-mixed")) is None and peak_flops("Tesla T4") is None


def test_run_summary_state_survives_a_resume():
    first = RunSummaryCallback()
    first.best, first.throughput, first.start = {"val/loss": 3.0}, [10.0, 2], time.time() - 5
    second = RunSummaryCallback()
    second.load_state_dict(first.state_dict())
    assert second.best == {"val/loss": 3.0} and second.throughput == [10.0, 2]
    assert second.wall_time() == pytest.approx(5, abs=1)
