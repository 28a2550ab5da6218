import json
import os
import pickle
import shutil
import time

import numpy as np
import pytest

from lm.data import packed
from lm.data.packed import MANIFEST, PackedWindows, check_vocab, read_manifest
from lm.errors import UserError


def all_tokens(directory, split="train") -> np.ndarray:
    shards = read_manifest(directory)["splits"][split]["shards"]
    return np.concatenate([np.fromfile(f"{directory}/{s['file']}", dtype=np.uint16) for s in shards])


@pytest.fixture
def copy(corpus, tmp_path):
    return shutil.copytree(corpus, tmp_path / "copy")


def test_windows_overlap_by_one_and_straddle_shards(corpus):
    seq_len = 64
    windows = PackedWindows(corpus, "train", seq_len)
    tokens = all_tokens(corpus)
    assert len(windows) == (len(tokens) - 1) // seq_len
    assert len(windows.shards) > 1
    for i in range(len(windows)):  # every window, including those across the 3000-token shard boundaries
        np.testing.assert_array_equal(windows.window(i), tokens[i * seq_len : i * seq_len + seq_len + 1])
    batch = windows.batch([3, 0, len(windows) - 1])
    assert batch.shape == (3, seq_len + 1) and batch.dtype == np.int64
    assert isinstance(windows.shards[0], np.memmap)


def test_truncated_shard_names_the_file(copy):
    shard = copy / "train_00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(UserError, match=r"shard .*train_00001.bin has 5998 bytes"):
        PackedWindows(copy, "train", 64, verify_checksums=False)


def test_checksum_mismatch_names_the_file(copy):
    shard = copy / "train_00000.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 1
    shard.write_bytes(bytes(data))
    PackedWindows(copy, "train", 64, verify_checksums=False)  # same size: only the checksum notices
    with pytest.raises(UserError, match=r"shard .*train_00000.bin fails its checksum"):
        PackedWindows(copy, "train", 64)


def test_other_tokenizer_is_refused(copy):
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["tokenizer"]["hash"] = "0" * 64
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r".*manifest.json was made with tokenizer 'gpt2'"):
        PackedWindows(copy, "train", 64)


def test_missing_manifest_and_small_vocab(tmp_path, corpus):
    with pytest.raises(UserError, match="manifest.json not found"):
        read_manifest(tmp_path)
    with pytest.raises(UserError, match="vocab size 50257, larger than the model's 50000"):
        check_vocab(corpus, 50257, 50000)
    check_vocab(corpus, 50257, 50304)


def test_split_shorter_than_a_window(corpus):
    with pytest.raises(UserError, match="fewer than one window"):
        PackedWindows(corpus, "val", 100_000)


def test_pickles_without_its_data_and_maps_the_shards_again(copy):
    windows = PackedWindows(copy, "train", 64)
    data = pickle.dumps(windows)
    assert len(data) < 2000 < sum(f.stat().st_size for f in windows.files)  # file names, not tokens
    again = pickle.loads(data)
    assert isinstance(again.shards[0], np.memmap)
    np.testing.assert_array_equal(again.batch(range(len(again))), windows.batch(range(len(windows))))


def age(directory, seconds: float = 60) -> None:
    """Make the shards look written `seconds` ago (a stamp only vouches for files that have settled)."""
    past = time.time() - seconds
    for shard in directory.glob("*.bin"):
        os.utime(shard, (past, past))


def test_checksums_are_verified_once_per_machine_until_a_shard_changes(copy, monkeypatch):
    age(copy)
    verified = []
    real = packed.checksum
    monkeypatch.setattr(packed, "checksum", lambda path: verified.append(path.name) or real(path))
    PackedWindows(copy, "train", 64)
    assert len(verified) == len(read_manifest(copy)["splits"]["train"]["shards"]) > 1
    assert len(list(copy.glob(".verified-*.json"))) == 1
    verified.clear()
    PackedWindows(copy, "train", 64)  # another rank, or the next run: trusts the stamp
    assert verified == []

    shard = copy / "train_00002.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 1
    shard.write_bytes(bytes(data))  # same size, new mtime
    with pytest.raises(UserError, match=r"shard .*train_00002.bin fails its checksum"):
        PackedWindows(copy, "train", 64)
    assert verified == ["train_00002.bin"]  # only the changed shard is read again


def test_a_fresh_shard_is_verified_but_not_stamped(copy, monkeypatch):
    """A write within the file-time granularity of the check could keep the mtime it stamped: checked every time."""
    for shard in copy.glob("*.bin"):
        os.utime(shard)  # written just now
    verified = []
    real = packed.checksum
    monkeypatch.setattr(packed, "checksum", lambda path: verified.append(path.name) or real(path))
    PackedWindows(copy, "val", 64)
    PackedWindows(copy, "val", 64)
    assert verified == ["val_00000.bin"] * 2
