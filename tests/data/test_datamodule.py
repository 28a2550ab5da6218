from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lm.data.datamodule import MixtureLogger, TokenDataModule, TrainBatches
from lm.data.mixture import Schedule

SEQ, BATCH = 16, 4
CONFIGS = Path(__file__).parents[2] / "configs" / "data"


def take(loader, n: int) -> list[torch.Tensor]:
    batches = []
    for x, _ in loader:
        batches.append(x)
        if len(batches) == n:
            return batches


class Tiny(LightningModule):
    """A bigram model that records every training batch it receives."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50257, 4)
        self.out = torch.nn.Linear(4, 50257)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(x.clone())
        return torch.nn.functional.cross_entropy(self.out(self.emb(x)).flatten(0, 1), y.flatten())

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("val/loss", torch.nn.functional.cross_entropy(self.out(self.emb(x)).flatten(0, 1), y.flatten()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_batches_have_the_contract_shapes(blend):
    dm = TokenDataModule(
        blend,
        {"fineweb-edu": 0.5, "dclm": 0.3, "finemath": 0.15, "cosmopedia": 0.05},
        seq_len=SEQ,
        batch_size=BATCH,
        num_workers=0,
    )
    assert dm.source_names == list(blend) and dm.vocab_size == 50257
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (BATCH, SEQ) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    vals = dm.val_dataloader()
    assert len(vals) == 4
    first = [take(v, 2) for v in vals]
    again = [take(v, 2) for v in vals]  # the same windows every validation
    assert all(torch.equal(a, b) for fa, fb in zip(first, again) for a, b in zip(fa, fb))


def test_workers_deliver_the_same_stream(corpus):
    dm = TokenDataModule(corpus, seq_len=SEQ, batch_size=BATCH, num_workers=0)
    plain = take(dm.train_dataloader(), 12)
    dm.num_workers = 2
    workers = take(dm.train_dataloader(), 12)
    assert all(torch.equal(a, b) for a, b in zip(plain, workers))


def test_ranks_read_disjoint_windows_that_together_match_one_process(blend):
    dm = TokenDataModule(blend, seq_len=SEQ, batch_size=BATCH, num_workers=0)
    dm.setup("fit")
    world, steps = 3, 5
    single = TrainBatches(dm.train_windows, dm.mixture, BATCH, 0, rank=0, world_size=1)
    single_batches = take(DataLoader(single, batch_size=None), world * steps)
    for rank in range(world):
        ranked = TrainBatches(dm.train_windows, dm.mixture, BATCH, 0, rank=rank, world_size=world)
        for step, x in enumerate(take(DataLoader(ranked, batch_size=None, num_workers=2), steps)):
            assert torch.equal(x, single_batches[step * world + rank])  # rank r's step t = single step t*W + r
    sources, windows = dm.mixture.locate(0, world * steps * BATCH)
    pairs = set(zip(sources.tolist(), windows.tolist()))
    assert len(pairs) == len(sources)  # no window read twice within an epoch


@pytest.mark.parametrize("accumulate, workers", [(1, 0), (3, 2)])
def test_exact_resume_with_a_real_trainer(blend, tmp_path, accumulate, workers):
    schedule = Schedule({"fineweb-edu": 0.0, "dclm": 0.0, "finemath": 1.0, "cosmopedia": 0.0}, 0, 40 * BATCH * SEQ)

    def datamodule():
        return TokenDataModule(
            blend,
            {"fineweb-edu": 0.5, "dclm": 0.3, "finemath": 0.15, "cosmopedia": 0.05},
            schedule,
            seq_len=SEQ,
            batch_size=BATCH,
            num_workers=workers,
            val_batches=2,
        )

    def trainer(steps, callbacks=()):
        return Trainer(
            max_steps=steps,
            accumulate_grad_batches=accumulate,
            val_check_interval=5 * accumulate,
            limit_val_batches=2,
            num_sanity_val_steps=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            callbacks=[*callbacks, MixtureLogger()],
        )

    save = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, filename="{step}")
    straight, dm = Tiny(), datamodule()
    trainer(10, [save]).fit(straight, dm)
    assert len(straight.seen) == 10 * accumulate
    assert dm.consumed_samples == 10 * accumulate * BATCH
    stats = dm.mixture_stats()
    assert sum(v for k, v in stats.items() if k.endswith("/tokens")) == 10 * accumulate * BATCH * SEQ

    resumed = Tiny()
    trainer(10).fit(resumed, datamodule(), ckpt_path=tmp_path / "step=4.ckpt")
    assert len(resumed.seen) == 6 * accumulate
    for a, b in zip(straight.seen[4 * accumulate :], resumed.seen, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(straight.out.weight, resumed.out.weight)


def test_short_epochs_continue_the_stream(corpus, tmp_path):
    """limit_train_batches ends an epoch; the next pass over the loader continues, it does not restart."""
    model = Tiny()
    trainer = Trainer(
        max_steps=9,
        limit_train_batches=3,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, TokenDataModule(corpus, seq_len=SEQ, batch_size=BATCH, num_workers=0))
    reference = take(TokenDataModule(corpus, seq_len=SEQ, batch_size=BATCH, num_workers=0).train_dataloader(), 9)
    assert trainer.current_epoch == 3
    assert all(torch.equal(a, b) for a, b in zip(model.seen, reference, strict=True))


def test_mixture_stats_follow_the_schedule(blend):
    schedule = Schedule({"fineweb-edu": 0, "dclm": 0, "finemath": 0, "cosmopedia": 1}, 0, 1000 * SEQ)
    dm = TokenDataModule(blend, None, schedule, seq_len=SEQ, batch_size=BATCH)
    assert dm.mixture_stats()["data/cosmopedia/weight"] == 0.25
    dm.load_state_dict({"consumed_samples": 1000, "seed": 0, "seq_len": SEQ})
    stats = dm.mixture_stats()
    assert stats["data/cosmopedia/weight"] == 1.0 and stats["data/dclm/weight"] == 0.0
    assert abs(stats["data/cosmopedia/tokens"] / (1000 * SEQ) - 0.625) < 0.01  # mean weight over the ramp
    assert np.isclose(sum(v for k, v in stats.items() if k.endswith("/tokens")), 1000 * SEQ)


@pytest.mark.parametrize("name", ["python-docs", "fineweb-edu", "blend"])
def test_shipped_data_configs_parse(name, blend, corpus):
    """Every configs/data/*.yaml parses into TokenDataModule's signature (paths swapped for the fixtures)."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["data"]
    config["sources"] = corpus if isinstance(config["sources"], str) else blend
    parser = ArgumentParser()
    parser.add_class_arguments(TokenDataModule, "data")
    data = parser.instantiate_classes(parser.parse_object({"data": config})).data
    assert isinstance(data, TokenDataModule) and data.seq_len == config["seq_len"]
    if "schedule" in config:
        assert isinstance(data.schedule, Schedule) and data.schedule.end_tokens == 10e9


def test_every_data_config_is_tested():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == ["blend", "fineweb-edu", "python-docs"]


class Recorder(Tiny):
    """Tiny, saving each rank's batches to a file (ddp_spawn runs it in child processes)."""

    def __init__(self, out: str):
        super().__init__()
        self.record_dir = out

    def on_train_end(self):
        dm = self.trainer.datamodule
        torch.save({"seen": self.seen, "consumed": dm.consumed_samples}, f"{self.record_dir}/rank{self.global_rank}.pt")


@pytest.mark.slow
def test_two_process_gloo_ranks_split_one_stream(blend, tmp_path):
    dm = TokenDataModule(blend, seq_len=SEQ, batch_size=BATCH, num_workers=1, val_batches=2)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=5,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(Recorder(str(tmp_path)), dm)
    single = TokenDataModule(blend, seq_len=SEQ, batch_size=BATCH, num_workers=0)
    reference = take(single.train_dataloader(), 10)
    for rank in range(2):
        record = torch.load(tmp_path / f"rank{rank}.pt")
        assert record["consumed"] == 5 * 2 * BATCH
        for step, x in enumerate(record["seen"]):
            assert torch.equal(x, reference[step * 2 + rank])
