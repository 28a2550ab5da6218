"""Prepared token shards read as fixed-length windows, straight from disk.

A split is the concatenation of its shards (`<split>_<NNNNN>.bin`, uint16), memory-mapped, never loaded whole.
Window i covers tokens [i * seq_len, i * seq_len + seq_len + 1): inputs are its first seq_len tokens, targets the
last seq_len, and consecutive windows share one token so no target is skipped. Windows may straddle shards.

Before any training the manifest and shards are checked and problems stop with one line naming the file:
another tokenizer, a shard shorter than the manifest says (always checked; it costs a stat), a checksum
mismatch (xxh3 over every shard: a few seconds per 10 GB from page cache, minutes from a network disk). Checksums
are verified once per directory per machine, not at every start by every rank: `verify_checksums` leaves a stamp
`.verified-<host>.json` in the prepared directory recording each verified shard's size, mtime and checksum, and
later checks skip shards that still match it. A rewritten, truncated or replaced shard has another size or mtime
and is verified again. Ranks and runs starting together on one machine take a lock, so one verifies while the
others wait for its stamp. Without write access to the directory every start verifies.

Pickling a PackedWindows (DataLoader workers under spawn or forkserver, the default from Python 3.14 on Linux and
already on macOS) sends its file names, not its memory maps, which would copy the shards into every worker; the
worker maps the files again.
"""

import fcntl
import functools
import hashlib
import json
import socket
import time
from pathlib import Path

import numpy as np
import xxhash

from lm.data.tokenizer import TOKENIZER_NAME, get_encoding
from lm.errors import UserError
from lm.files import write_atomic

MANIFEST = "manifest.json"
DTYPE = np.uint16
SETTLED_NS = 2_000_000_000  # a shard written more recently is verified but not stamped: file times can be that coarse


@functools.cache
def tokenizer_hash() -> str:
    """sha256 over every token's bytes, in id order: two encodings agree iff they map ids to the same bytes."""
    enc = get_encoding()
    digest = hashlib.sha256()
    for token in range(enc.n_vocab):
        piece = enc.decode_single_token_bytes(token)
        digest.update(len(piece).to_bytes(2, "little") + piece)
    return digest.hexdigest()


def checksum(path: Path) -> str:
    """xxh3-64 of a file, streamed through a memory map."""
    if path.stat().st_size == 0:
        return xxhash.xxh3_64_hexdigest(b"")
    return xxhash.xxh3_64_hexdigest(np.memmap(path, dtype=np.uint8, mode="r"))


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a prepared directory, after checking it was made with our tokenizer."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise UserError(f"{path} not found; prepare the data first (python -m lm prepare --out {directory})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); prepare the data again") from None
    tokenizer = manifest.get("tokenizer", {})
    if tokenizer.get("name") != TOKENIZER_NAME or tokenizer.get("hash") != tokenizer_hash():
        theirs = f"'{tokenizer.get('name')}' (hash {str(tokenizer.get('hash'))[:12]})"
        raise UserError(
            f"{path} was made with tokenizer {theirs}, not this codebase's '{TOKENIZER_NAME}' "
            f"({tokenizer_hash()[:12]}); prepare the data again"
        )
    return manifest


def check_vocab(directory: str | Path, data_vocab: int, model_vocab: int) -> None:
    """Stop if the data holds token ids the model has no embedding for."""
    if data_vocab > model_vocab:
        raise UserError(
            f"{Path(directory) / MANIFEST} has vocab size {data_vocab}, larger than the model's {model_vocab}; "
            "raise the model's vocab_size"
        )


def verify_shards(directory: Path, shards: list[dict]) -> None:
    """Checksum the `shards` (manifest entries) of `directory` that this machine has not verified as they are now."""
    stamp = directory / f".verified-{socket.gethostname()}.json"
    try:
        lock = open(stamp.with_suffix(".lock"), "a")  # held for the whole check
    except OSError:  # a read-only directory: verify every time
        lock = None
    try:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed
        try:
            verified = json.loads(stamp.read_text())
        except (OSError, ValueError):
            verified = {}
        fresh = dict(verified)
        for entry in shards:
            path = directory / entry["file"]
            info = path.stat()
            key = [info.st_size, info.st_mtime_ns, entry["checksum"]]
            if verified.get(entry["file"]) == key:
                continue
            if checksum(path) != entry["checksum"]:
                raise UserError(f"shard {path} fails its checksum (corrupt or rewritten); prepare it again")
            if time.time_ns() - info.st_mtime_ns > SETTLED_NS:
                fresh[entry["file"]] = key
        if lock is not None and fresh != verified:
            write_atomic(stamp, json.dumps(fresh).encode())
    finally:
        if lock is not None:
            lock.close()


class PackedWindows:
    """Memory-mapped (seq_len + 1)-token windows over one split of a prepared directory."""

    def __init__(self, directory: str | Path, split: str, seq_len: int, verify_checksums: bool = True):
        """
        Args:
            directory: A prepared directory (manifest.json and shards).
            split: "train" or "val".
            seq_len: Tokens per training sequence (each window holds seq_len + 1).
            verify_checksums: Verify the shards' checksums unless this machine did since they last changed.
        """
        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        self.seq_len = seq_len
        splits = manifest["splits"]
        if split not in splits or not splits[split]["shards"]:
            raise UserError(f"{self.directory / MANIFEST} has no '{split}' shards")
        entries = splits[split]["shards"]
        for entry in entries:
            self._check_size(entry)
        if verify_checksums:
            verify_shards(self.directory, entries)
        self.files = [self.directory / entry["file"] for entry in entries]
        self.shards = self._map()
        self.starts = np.cumsum([0] + [len(shard) for shard in self.shards])  # token offset of each shard
        self.tokens = int(self.starts[-1])
        self.vocab_size = int(manifest["tokenizer"]["vocab_size"])
        if self.tokens < seq_len + 1:
            raise UserError(
                f"'{split}' split of {self.directory} has {self.tokens} tokens, fewer than one window "
                f"of seq_len + 1 = {seq_len + 1}"
            )

    def _check_size(self, entry: dict) -> None:
        path = self.directory / entry["file"]
        if not path.is_file():
            raise UserError(f"shard {path} listed in the manifest is missing")
        size = path.stat().st_size
        if size != entry["tokens"] * DTYPE().itemsize:
            raise UserError(f"shard {path} has {size} bytes, manifest says {entry['tokens']} tokens (x2 bytes)")

    def _map(self) -> list[np.memmap]:
        return [np.memmap(path, dtype=DTYPE, mode="r") for path in self.files]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "shards": None}  # file names travel, not the mapped data

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.shards = self._map()

    def __len__(self) -> int:
        return (self.tokens - 1) // self.seq_len

    def window(self, index: int) -> np.ndarray:
        """Tokens [index * seq_len, index * seq_len + seq_len + 1), copied out of the shards."""
        return self.span(index * self.seq_len, index * self.seq_len + self.seq_len + 1)

    def span(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the split, copied out of the shards."""
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        offset = start - self.starts[shard]
        if stop <= self.starts[shard + 1]:
            return np.array(self.shards[shard][offset : offset + stop - start])
        pieces = []
        while start < stop:  # straddles a shard boundary
            end = min(stop, int(self.starts[shard + 1]))
            pieces.append(self.shards[shard][start - self.starts[shard] : end - self.starts[shard]])
            start, shard = end, shard + 1
        return np.concatenate(pieces)

    def batch(self, indices) -> np.ndarray:
        """Windows at `indices` stacked into a (len(indices), seq_len + 1) int64 array."""
        out = np.empty((len(indices), self.seq_len + 1), dtype=np.int64)
        for row, index in enumerate(indices):
            out[row] = self.window(int(index))
        return out
