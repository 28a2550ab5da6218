import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lm.data.batches import TrainBatches
from lm.data.datamodule import MixtureLogger, TokenDataModule
from lm.data.mixture import Schedule
from lm.data.prepare import prepare
from lm.data.tokenizer import EOT
from lm.errors import UserError
from tests.conftest import quiet_trainer
from tests.data.conftest import make_docs, prepared

SEQ, BATCH = 16, 4
BLEND = {"fineweb-edu": 0.5, "dclm": 0.3, "finemath": 0.15, "cosmopedia": 0.05}
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


PACKINGS = pytest.mark.parametrize("packing", ["stream", "bos_aligned"])


@PACKINGS
def test_workers_deliver_the_same_stream(corpus, packing):
    dm = TokenDataModule(corpus, seq_len=SEQ, batch_size=BATCH, num_workers=0, packing=packing)
    plain = take(dm.train_dataloader(), 12)
    dm.num_workers = 2
    workers = take(dm.train_dataloader(), 12)
    assert all(torch.equal(a, b) for a, b in zip(plain, workers))
    assert packing == "stream" or all((x[:, 0] == EOT).all() for x in plain)  # every row at a document start


@PACKINGS
def test_ranks_read_disjoint_windows_that_together_match_one_process(blend, packing):
    dm = TokenDataModule(blend, seq_len=SEQ, batch_size=BATCH, num_workers=0, packing=packing)
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


@pytest.mark.parametrize("accumulate, workers, packing", [(1, 0, "stream"), (3, 2, "stream"), (3, 2, "bos_aligned")])
def test_exact_resume_with_a_real_trainer(blend, tmp_path, accumulate, workers, packing):
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
            packing=packing,
        )

    def trainer(steps, callbacks=()):
        return quiet_trainer(
            tmp_path,
            max_steps=steps,
            accumulate_grad_batches=accumulate,
            val_check_interval=5 * accumulate,
            limit_val_batches=2,
            num_sanity_val_steps=1,
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
    trainer = quiet_trainer(
        tmp_path,
        max_steps=9,
        limit_train_batches=3,
        limit_val_batches=0,
    )
    trainer.fit(model, TokenDataModule(corpus, seq_len=SEQ, batch_size=BATCH, num_workers=0))
    reference = take(TokenDataModule(corpus, seq_len=SEQ, batch_size=BATCH, num_workers=0).train_dataloader(), 9)
    assert trainer.current_epoch == 3
    assert all(torch.equal(a, b) for a, b in zip(model.seen, reference, strict=True))


def test_seq_len_warmup_cuts_the_same_windows_into_shorter_rows(corpus, tmp_path):
    """Rows of 4 tokens for the first 2 micro-batches (2 × 4 × 16 = 128 tokens), 8 for the next 2, then SEQ: each
    micro-batch is the plain run's, cut into consecutive pieces; the data position is the plain run's."""
    warm, plain = Tiny(), Tiny()
    dm = TokenDataModule(corpus, seq_len=SEQ, batch_size=BATCH, num_workers=0, seq_len_warmup=[[4, 128], [8, 256]])
    quiet_trainer(tmp_path / "warm", max_steps=6, limit_val_batches=0).fit(warm, dm)
    whole = TokenDataModule(corpus, seq_len=SEQ, batch_size=BATCH, num_workers=0)
    quiet_trainer(tmp_path / "plain", max_steps=6, limit_val_batches=0).fit(plain, whole)
    assert [tuple(x.shape) for x in warm.seen] == [(16, 4)] * 2 + [(8, 8)] * 2 + [(BATCH, SEQ)] * 2
    for cut, whole in zip(warm.seen, plain.seen, strict=True):
        length = cut.shape[1]
        pieces = [whole[row, start : start + length] for row in range(BATCH) for start in range(0, SEQ, length)]
        assert torch.equal(cut, torch.stack(pieces))
    assert dm.consumed_samples == 6 * BATCH


@pytest.mark.parametrize(
    "warmup, match",
    [
        ([[5, 100]], "must increase and each divide data.seq_len"),
        ([[8, 100], [4, 200]], "must increase"),
        ([[4, 200], [8, 100]], "token counts .* must be positive and increase"),
    ],
)
def test_bad_seq_len_warmups_are_refused_in_one_line(corpus, warmup, match):
    with pytest.raises(UserError, match=match):
        TokenDataModule(corpus, seq_len=SEQ, batch_size=BATCH, seq_len_warmup=warmup)


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
@PACKINGS
def test_two_process_gloo_ranks_split_one_stream(blend, tmp_path, packing):
    dm = TokenDataModule(blend, seq_len=SEQ, batch_size=BATCH, num_workers=1, val_batches=2, packing=packing)
    trainer = quiet_trainer(
        tmp_path,
        devices=2,
        strategy="ddp_spawn",
        max_steps=5,
        limit_val_batches=0,
    )
    trainer.fit(Recorder(str(tmp_path)), dm)
    single = TokenDataModule(blend, seq_len=SEQ, batch_size=BATCH, num_workers=0, packing=packing)
    reference = take(single.train_dataloader(), 10)
    for rank in range(2):
        record = torch.load(tmp_path / f"rank{rank}.pt")
        assert record["consumed"] == 5 * 2 * BATCH
        for step, x in enumerate(record["seen"]):
            assert torch.equal(x, reference[step * 2 + rank])


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> str:
    """A prepared source of ~0.9M tokens (1.8 MB of shards): what a worker must not be sent."""
    root = tmp_path_factory.mktemp("large")
    pq.write_table(pa.table({"text": make_docs(20_000, words=(20, 60))}), root / "docs.parquet")
    return str(prepare(source="local", path=str(root / "docs.parquet"), out=str(root / "large"), num_proc=1))


@PACKINGS
def test_what_workers_receive_pickles_to_a_few_kb(large, packing):
    dm = TokenDataModule(large, seq_len=SEQ, batch_size=BATCH, num_workers=0, packing=packing)
    loader = dm.train_dataloader()
    take(loader, 3)  # the mixture now caches a permutation of all ~57k windows (0.45 MB)
    for dataset in (loader.dataset, dm.val_dataloader()[0].dataset):
        data = pickle.dumps(dataset)
        assert len(data) < 8_000  # < 1 MB by far; the shards are 1.8 MB
        assert torch.equal(next(iter(pickle.loads(data)))[0], next(iter(dataset))[0])


@pytest.mark.parametrize(
    "context, packing",
    [("spawn", "stream"), ("forkserver", "stream"), pytest.param("spawn", "bos_aligned", marks=pytest.mark.slow)],
)
def test_workers_started_by_spawn_and_forkserver_read_the_same_batches(blend, context, packing):
    def batches(workers: int, context=None):
        dm = TokenDataModule(
            blend,
            BLEND,
            seq_len=SEQ,
            batch_size=BATCH,
            num_workers=workers,
            multiprocessing_context=context,
            packing=packing,
        )
        train = take(dm.train_dataloader(), 6)
        val = DataLoader(dm.val_dataloader()[1].dataset, None, num_workers=workers, multiprocessing_context=context)
        return train, [x for x, _ in val]

    (train, val), (main_train, main_val) = batches(2, context), batches(0)
    assert all(torch.equal(a, b) for a, b in zip(train, main_train, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(val, main_val, strict=True))


@PACKINGS
def test_resuming_on_another_world_size_keeps_the_exact_sample(blend, packing):
    """A checkpoint of 3 micro-batches of B (not a multiple of B x 2) continues at that very sample on 2 ranks."""
    dm = TokenDataModule(blend, seq_len=SEQ, batch_size=BATCH, num_workers=0, packing=packing)
    dm.setup("fit")
    one_process = take(DataLoader(TrainBatches(dm.train_windows, dm.mixture, BATCH, 0, 0, 1), batch_size=None), 7)
    for rank in range(2):
        ranked = TrainBatches(dm.train_windows, dm.mixture, BATCH, 3 * BATCH, rank, world_size=2)
        for step, x in enumerate(take(DataLoader(ranked, batch_size=None), 2)):
            assert torch.equal(x, one_process[3 + 2 * step + rank])


def consumed(blend, samples: int, weights=BLEND, names=None, **kwargs) -> TokenDataModule:
    sources = {name: blend[name] for name in names or blend}
    dm = TokenDataModule(sources, {k: v for k, v in weights.items() if k in sources}, seq_len=SEQ, **kwargs)
    dm.setup("fit")
    dm.consumed_samples = samples
    return dm


def test_a_changed_mixture_is_refused_on_resume(blend):
    state = consumed(blend, 400).state_dict()
    other = {"fineweb-edu": 0.4, "dclm": 0.4, "finemath": 0.15, "cosmopedia": 0.05}
    with pytest.raises(UserError, match=r"data.weights \{'fineweb-edu': 0.5, 'dclm': 0.3.* -> \{'fineweb-edu': 0.4"):
        consumed(blend, 0, other).load_state_dict(state)
    with pytest.raises(UserError, match=r"data.sources removed \['cosmopedia'\]"):
        consumed(blend, 0, names=["fineweb-edu", "dclm", "finemath"]).load_state_dict(state)
    schedule = Schedule({"fineweb-edu": 0, "dclm": 0, "finemath": 1, "cosmopedia": 0}, 0, 1e6)
    with pytest.raises(UserError, match=r"data.schedule none -> .*allow_mixture_change: true"):
        consumed(blend, 0, schedule=schedule).load_state_dict(state)
    same = consumed(blend, 0)
    same.load_state_dict(state)
    assert same.consumed_samples == 400


def test_an_allowed_mixture_change_continues_every_source_where_it_was(blend):
    before = consumed(blend, 400)
    state = before.state_dict()
    served = {name: info["samples"] for name, info in state["sources"].items()}
    heavier = {"fineweb-edu": 0.1, "dclm": 0.1, "finemath": 0.7, "cosmopedia": 0.1}
    after = consumed(blend, 0, heavier, allow_mixture_change=True)
    with pytest.warns(UserWarning, match="data mixture changed on resume"):
        after.load_state_dict(state)
    assert after.consumed_samples == 400
    sources, windows = after.mixture.locate(400, 200)
    for source, name in enumerate(after.source_names):  # each source's next windows follow its own order
        mine = windows[sources == source]
        order = after.mixture.permutation(source, 0)
        np.testing.assert_array_equal(mine, order[served[name] : served[name] + len(mine)])
    assert np.mean(sources == 2) > 0.6  # finemath, by the new weights

    # A later resume with the changed mixture is no change: it keeps that base and continues exactly.
    after.consumed_samples = 600
    again = consumed(blend, 0, heavier)
    again.load_state_dict(after.state_dict())
    np.testing.assert_array_equal(again.mixture.locate(600, 50)[1], after.mixture.locate(600, 50)[1])


def test_a_source_that_runs_out_warns_once_and_logs_its_epoch(tmp_path):
    dm = TokenDataModule(prepared(tmp_path, "small", make_docs(30)), seq_len=SEQ, batch_size=BATCH, num_workers=0)
    dm.setup("fit")
    windows = int(dm.mixture.sizes[0])
    trainer = quiet_trainer(
        tmp_path,
        max_steps=windows // BATCH + 2,  # into the second pass
        limit_val_batches=0,
        log_every_n_steps=1,
        callbacks=[MixtureLogger()],
    )
    with pytest.warns(UserWarning, match=rf"data source 'small' ran out: all {windows:,} of its windows") as caught:
        trainer.fit(Tiny(), dm)
    assert sum("ran out" in str(w.message) for w in caught) == 1
    assert trainer.callback_metrics["data/small/epoch"] > 1.0
