import json
import pickle
import random

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lm.cli import main
from lm.data import packing
from lm.data.datamodule import MixtureLogger, TokenDataModule
from lm.data.packing import AlignedRows, best_fit
from lm.data.tokenizer import EOT
from lm.errors import UserError
from tests.conftest import quiet_trainer, write_config
from tests.data.conftest import WORDS, prepared
from tests.data.test_datamodule import Tiny, take
from tests.data.test_packed import all_tokens

SEQ, BATCH = 64, 4


def long_and_short_docs(seed: int = 0) -> list[str]:
    """Mostly documents of 1-8 words (a few tokens), every tenth of 300-900 words (hundreds of tokens, many rows),
    and one of 12,000 words: longer than a packing block (256 rows of 65 tokens), so blocks hold no document start."""
    rng = random.Random(seed)
    docs = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(*((300, 900) if i % 10 == 0 else (1, 8)))))
        for i in range(600)
    ]
    docs[300] = " ".join(rng.choice(WORDS) for _ in range(12_000))
    return docs


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> str:
    """A prepared source of very long and very short documents, in small shards (rows straddle them)."""
    return prepared(tmp_path_factory.mktemp("mixed"), "mixed", long_and_short_docs(), shard_tokens=5000)


def documents(directory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the train split's tokens, its documents' offsets (their EOT) and lengths): the truth rows are checked on."""
    tokens = all_tokens(directory).astype(np.int64)
    starts = np.flatnonzero(tokens == EOT)
    return tokens, starts, np.diff(np.append(starts, len(tokens)))


def reference_best_fit(lengths: list[int], row_len: int) -> tuple[list[int], list[int], list[int]]:
    """The rule as written, by brute force: the longest document that fits (the later one of equals), else the
    shortest (the earlier one) cropped; rows while the documents left hold one."""
    left, docs, takes, row_starts = dict(enumerate(lengths)), [], [], [0]
    while sum(left.values()) >= row_len:
        room = row_len
        while room:
            fits = [(length, i) for i, length in left.items() if length <= room]
            i = max(fits)[1] if fits else min((length, i) for i, length in left.items())[1]
            taken = min(left.pop(i), room)
            docs.append(i)
            takes.append(taken)
            room -= taken
        row_starts.append(len(docs))
    return docs, takes, row_starts


@pytest.mark.parametrize("seed", range(4))
def test_best_fit_matches_the_rule_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([rng.integers(1, 12, 150), rng.integers(20, 200, 15), [65, 65, 64]])
    rng.shuffle(lengths)
    docs, takes, row_starts = best_fit(lengths, 65)
    expected = reference_best_fit(lengths.tolist(), 65)
    assert (docs.tolist(), takes.tolist(), row_starts.tolist()) == expected
    assert len(row_starts) > 10
    assert np.all(np.add.reduceat(takes, row_starts[:-1]) == 65)  # every row exactly full
    assert len(set(docs.tolist())) == len(docs)  # no document twice
    left_over = np.delete(lengths, docs)
    assert left_over.sum() < 65  # rows are made while a full one is left


def test_every_row_starts_at_a_document_start(mixed):
    """Each row is the concatenation of document starts (offsets of EOTs in the shards), each document once."""
    rows = AlignedRows(mixed, "train", SEQ)
    tokens, starts, lengths = documents(mixed)
    length_at = dict(zip(starts.tolist(), lengths.tolist()))
    seen = set()
    for index in range(len(rows)):
        offsets, takes = rows.documents(index)
        assert all(offset in length_at for offset in offsets.tolist())  # each piece starts at an EOT
        assert offsets[0] in length_at and takes.sum() == SEQ + 1
        row = rows.window(index)
        assert row[0] == EOT
        np.testing.assert_array_equal(row, np.concatenate([tokens[o : o + t] for o, t in zip(offsets, takes)]))
        for offset, taken in zip(offsets[:-1].tolist(), takes[:-1].tolist()):  # only a row's last piece is cut short
            assert taken == min(length_at[offset], SEQ + 1)
        assert seen.isdisjoint(offsets.tolist())
        seen.update(offsets.tolist())
    assert len(rows.shards) > 1


def test_share_of_real_tokens_on_very_long_and_very_short_documents(mixed):
    """Rows hold only corpus tokens (no padding, checked above); of what the crop rule lets a row hold, best fit
    leaves almost nothing out, and the reported shares are the counted ones."""
    rows = AlignedRows(mixed, "train", SEQ)
    tokens, starts, lengths = documents(mixed)
    placed = [rows.documents(i) for i in range(len(rows))]
    used = sum(int(takes.sum()) for _, takes in placed)
    cropped_by_rule = np.maximum(lengths - (SEQ + 1), 0).sum()  # what no packing of whole rows can keep
    stats = rows.stats()
    assert stats["used"] == used == len(rows) * (SEQ + 1)
    assert stats["used"] + stats["cropped"] + stats["left_over"] == stats["tokens"] == len(tokens)
    assert stats["cropped"] >= cropped_by_rule
    assert used / (len(tokens) - cropped_by_rule) > 0.97  # measured 0.99: crops to fill rows and block ends cost ~1%
    short = np.isin(starts, np.concatenate([offsets for offsets, _ in placed]), invert=True) & (lengths < 20)
    blocks = len(rows.counts)
    assert lengths[short].sum() < blocks * (SEQ + 1)  # short documents are left out only at block ends


def test_a_document_longer_than_a_row_never_stalls_or_nans_the_loader(tmp_path):
    """Every document longer than a row, one longer than a whole packing block: each gives exactly one row."""
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(100, 300))) for _ in range(60)]
    docs[7] = " ".join(rng.choice(WORDS) for _ in range(20_000))
    directory = prepared(tmp_path, "long", docs)
    rows = AlignedRows(directory, "train", SEQ)
    _, starts, lengths = documents(directory)
    assert len(rows) == len(starts) and (lengths > SEQ + 1).all()
    assert rows.stats()["left_over"] == 0
    dm = TokenDataModule(directory, seq_len=SEQ, batch_size=BATCH, num_workers=0, packing="bos_aligned")
    trainer = quiet_trainer(tmp_path, max_steps=len(rows) // BATCH + 2, limit_val_batches=0)  # into a 2nd pass
    model = Tiny()
    trainer.fit(model, dm)
    assert len(model.seen) == trainer.global_step and all((x[:, 0] == EOT).all() for x in model.seen)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    stats = dm.packing_stats()
    assert all(np.isfinite(v) and 0 <= v <= 1 for v in stats.values())
    assert stats["data/packing/used_fraction"] == pytest.approx(len(rows) * (SEQ + 1) / rows.tokens)


def test_max_doc_tokens_crops_every_document(mixed):
    rows = AlignedRows(mixed, "train", SEQ, max_doc_tokens=20)
    for index in range(0, len(rows), 7):
        offsets, takes = rows.documents(index)
        assert takes.max() <= 20 and len(takes) >= 4
    with pytest.raises(UserError, match="data.max_doc_tokens = 20 needs data.packing: bos_aligned"):
        TokenDataModule(mixed, max_doc_tokens=20)
    with pytest.raises(UserError, match="data.packing must be stream or bos_aligned, not 'bos'"):
        TokenDataModule(mixed, packing="bos")


def test_too_little_data_for_one_row_is_one_line(tmp_path):
    directory = prepared(tmp_path, "few", [" ".join(["word"] * 300)] * 40)  # 40 documents, 10K tokens
    with pytest.raises(UserError, match="'train' split of .* packs into no row of seq_len \\+ 1 = 1025 tokens"):
        AlignedRows(directory, "train", 1024, max_doc_tokens=2)  # 40 x 2 tokens kept


def test_rows_pickle_small_and_read_the_same(mixed):
    rows = AlignedRows(mixed, "train", SEQ)
    data = pickle.dumps(rows)
    assert len(data) < 2000  # file names and 2 bytes per block
    again = pickle.loads(data)
    indices = np.arange(len(rows))[::-1]
    np.testing.assert_array_equal(again.batch(indices), rows.batch(indices))


def test_packing_is_a_function_of_the_data_not_of_the_block_read_first(mixed, monkeypatch):
    """Rows read in any order, by a fresh object, are the same; smaller blocks give other rows but the same kind."""
    rows = AlignedRows(mixed, "train", SEQ)
    forward = rows.batch(range(len(rows)))
    fresh = AlignedRows(mixed, "train", SEQ)
    np.testing.assert_array_equal(np.stack([fresh.window(i) for i in reversed(range(len(rows)))])[::-1], forward)
    monkeypatch.setattr(packing, "BLOCK_ROWS", 8)
    small = AlignedRows(mixed, "train", SEQ)
    assert small.stats()["left_over"] > rows.stats()["left_over"]  # more block ends
    assert (small.batch(range(len(small)))[:, 0] == EOT).all()


def test_packing_is_logged_once_and_in_the_run_summary(mixed, text_corpus, tmp_path):
    dm = TokenDataModule(mixed, seq_len=SEQ, batch_size=BATCH, num_workers=0, packing="bos_aligned", val_batches=1)
    trainer = quiet_trainer(
        tmp_path, max_steps=4, log_every_n_steps=1, logger=CSVLogger(tmp_path), callbacks=[MixtureLogger()]
    )
    trainer.fit(Tiny(), dm)
    lines = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("data/packing/used_fraction")
    logged = [line.split(",")[column] for line in lines[1:] if line.split(",")[column]]
    assert len(logged) == 1 and float(logged[0]) == pytest.approx(dm.packing_stats()["data/packing/used_fraction"])

    run = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml", text_corpus, run, **{"trainer.max_steps": 2, "data.packing": "bos_aligned"}
    )
    main(["fit", "--config", config])
    summary = json.loads((run / "run_summary.json").read_text())
    shares = summary["data_packing"]
    assert set(shares) == {"used_fraction", "cropped_fraction", "left_over_fraction"}
    assert sum(shares.values()) == pytest.approx(1.0) and 0 < shares["used_fraction"] < 1


def test_a_changed_packing_is_refused_on_resume(mixed):
    stream = TokenDataModule(mixed, seq_len=SEQ, batch_size=BATCH)
    stream.setup("fit")
    stream.consumed_samples = 40
    aligned = TokenDataModule(mixed, seq_len=SEQ, batch_size=BATCH, packing="bos_aligned")
    aligned.setup("fit")
    with pytest.raises(UserError, match=r"data.packing stream -> bos_aligned"):
        aligned.load_state_dict(stream.state_dict())
    assert "packing" not in stream.state_dict()["mixture"]  # stream checkpoints are as before


def test_validation_reads_the_same_windows_whatever_the_packing(mixed):
    def val(packing):
        dm = TokenDataModule(mixed, seq_len=SEQ, batch_size=BATCH, val_batches=3, packing=packing)
        return [x for loader in dm.val_dataloader() for x, _ in loader]

    stream, aligned = val("stream"), val("bos_aligned")
    assert len(stream) == 3 and all(torch.equal(a, b) for a, b in zip(stream, aligned, strict=True))


def test_the_order_of_rows_is_a_function_of_the_seed(mixed):
    def batches(seed):
        dm = TokenDataModule(mixed, seq_len=SEQ, batch_size=BATCH, num_workers=0, seed=seed, packing="bos_aligned")
        return torch.cat(take(dm.train_dataloader(), 5))

    assert torch.equal(batches(0), batches(0)) and not torch.equal(batches(0), batches(1))
