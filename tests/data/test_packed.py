import json
import shutil

import numpy as np
import pytest

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
