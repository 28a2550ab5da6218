"""`python -m lm prepare`: raw text -> uint16 token shards + manifest.json.

Layout of `<out>/`: `train_00000.bin, train_00001.bin, ..., val_00000.bin, ...` (little-endian uint16 GPT-2 ids)
and `manifest.json` (tokenizer name + hash, vocab size, source, split rule, per-shard tokens, documents, source
bytes and xxh3 checksum). Design choices:

- Each document is *preceded* by EOT (50256), so a split reads `EOT doc0 EOT doc1 ...`; the model always sees a
  document's first token predicted from EOT. Literal "<|endoftext|>" inside text is ordinary text
  (`encode_ordinary`), never id 50256.
- Document i goes to val iff splitmix64(seed, i) / 2^64 < val_fraction: deterministic, order-independent.
- Tokenization runs in `datasets.Dataset.map(batched=True, num_proc=N)`, one tiktoken thread per process, over
  chunks of `chunk_docs` documents so a `--max_tokens` budget stops early and streaming sources work too.
- Shards hold exactly `shard_tokens` tokens (the last of a split fewer); documents may straddle shards, a
  shard's `documents`/`bytes` count the documents that start in it.
- The output is built in `<out>.partial/` (each shard written to a temporary file, then `os.replace`d) and
  renamed to `<out>` only when complete: a crash or bad input leaves no half-prepared `<out>`. A non-empty
  `<out>` is refused; there is no resume (rerunning discards an old `.partial`).
"""

import itertools
import json
import os
import shutil
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from jsonargparse import CLI
from tqdm import tqdm

from lm.data.packed import DTYPE, MANIFEST, tokenizer_hash
from lm.data.sources import load_source
from lm.data.tokenizer import EOT, TOKENIZER_NAME, get_encoding
from lm.errors import UserError
from lm.files import write_atomic

FEATURES = datasets.Features(
    {
        "tokens": datasets.Sequence(datasets.Value("uint16")),
        "bytes": datasets.Value("int64"),
        "val": datasets.Value("bool"),
    }
)


def prepare(
    *,
    source: str,
    out: str,
    path: str | None = None,
    dataset: str | None = None,
    subset: str | None = None,
    split: str | None = None,
    text_field: str | None = None,
    streaming: bool = False,
    val_fraction: float = 0.005,
    seed: int = 0,
    shard_tokens: int = 100_000_000,
    max_tokens: float | None = None,
    num_proc: int = os.cpu_count() or 1,
    chunk_docs: int = 50_000,
) -> Path:
    """Tokenize a text source with GPT-2 BPE into uint16 shards plus manifest.json.

    Args:
        source: python-docs (built in), local (needs --path), or a hub source: fineweb, fineweb-edu, dclm, finemath,
            cosmopedia.
        out: Output directory; must not exist or be empty.
        path: Files or globs (comma-separated) of .txt/.jsonl/.parquet. With a hub source: local files laid out
            like that dataset, read by the same code.
        dataset: Override the hub source's dataset id.
        subset: Override the hub source's config (subset) name, e.g. sample-100BT.
        split: Override the hub source's split.
        text_field: Column holding the text (default: the source's, or "text").
        streaming: Stream the dataset instead of downloading it first.
        val_fraction: Fraction of documents (chosen by a seeded hash of their index) that go to the val split.
        seed: Seed of the train/val split.
        shard_tokens: Tokens per shard file.
        max_tokens: Stop after this many tokens (train + val, whole documents), e.g. 2e9.
        num_proc: Tokenizer processes.
        chunk_docs: Documents tokenized per round of num_proc processes (bounds memory, work past --max_tokens
            and the time between progress updates).
    """
    out_dir = Path(out)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"output directory {out_dir} already exists and is not empty; choose another --out")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val_fraction must be in [0, 1), got {val_fraction}")
    get_encoding()  # fail now if the BPE cannot load; forked tokenizer processes then inherit it
    ds, description = load_source(source, path, dataset, subset, split, text_field, streaming)

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        splits = write_shards(
            ds,
            partial,
            source=source,
            val_fraction=val_fraction,
            seed=seed,
            shard_tokens=shard_tokens,
            max_tokens=max_tokens,
            num_proc=num_proc,
            chunk_docs=chunk_docs,
        )
        manifest = {
            "format": 1,
            "tokenizer": {"name": TOKENIZER_NAME, "hash": tokenizer_hash(), "vocab_size": get_encoding().n_vocab},
            "dtype": "uint16",
            "eot": EOT,
            "documents": "each document is preceded by EOT",
            "source": description,
            "split": {
                "val_fraction": val_fraction,
                "seed": seed,
                "rule": "doc i is val iff splitmix64(seed, i) < frac",
            },
            "shard_tokens": shard_tokens,
            "max_tokens": max_tokens,
            "splits": splits,
        }
        write_atomic(partial / MANIFEST, json.dumps(manifest, indent=2).encode())
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir


def write_shards(ds, directory: Path, *, source, val_fraction, seed, shard_tokens, max_tokens, num_proc, chunk_docs):
    """Stream tokenized documents into per-split shard writers until the corpus or the budget ends."""
    writers = {name: ShardWriter(directory, name, shard_tokens) for name in ("train", "val")}
    budget = int(max_tokens) if max_tokens else None
    total_tokens = total_docs = 0
    begin = time.perf_counter()
    datasets.disable_progress_bars()  # one bar, ours: tokens/s and docs/s
    bar = tqdm(total=budget, unit="tok", unit_scale=True, desc=f"prepare {source}")
    try:
        tables = tokenized_tables(ds, directory / "cache", chunk_docs, num_proc, seed, val_fraction)
        for table in tables:
            tokens = table.column("tokens").combine_chunks()
            offsets = np.asarray(tokens.offsets)
            lengths = np.diff(offsets)
            values = tokens.values.to_numpy()[offsets[0] : offsets[-1]]
            nbytes, val = table.column("bytes").to_numpy(), table.column("val").to_numpy(zero_copy_only=False)
            if budget is not None:  # keep whole documents up to (and including) the one crossing the budget
                keep = int(np.searchsorted(np.cumsum(lengths), budget - total_tokens)) + 1
                lengths, nbytes, val = lengths[:keep], nbytes[:keep], val[:keep]
                values = values[: lengths.sum()]
            for name, mask in (("train", ~val), ("val", val)):
                writers[name].add(values[np.repeat(mask, lengths)], lengths[mask], nbytes[mask])
            total_tokens += int(lengths.sum())
            total_docs += len(lengths)
            bar.update(int(lengths.sum()))
            bar.set_postfix_str(f"{total_docs / (time.perf_counter() - begin):,.0f} docs/s")
            if budget is not None and total_tokens >= budget:
                tables.close()  # removes the tokenizer's cache files
                break
    finally:
        datasets.enable_progress_bars()
        bar.close()
    splits = {name: writer.close() for name, writer in writers.items()}
    if splits["train"]["documents"] == 0:
        raise UserError(f"source '{source}' produced no training documents (empty corpus?)")
    if val_fraction > 0 and splits["val"]["documents"] == 0:
        raise UserError(f"no document of '{source}' fell in the val split; raise --val_fraction")
    return splits


def tokenized_tables(ds, cache: Path, chunk_docs: int, num_proc: int, seed: int, val_fraction: float):
    """Arrow tables of tokenized documents in corpus order, from `Dataset.map(num_proc)` over chunks of documents.

    Each chunk's map output goes to temporary Arrow files under `cache`, deleted once read.
    """
    for first_doc, chunk in doc_chunks(ds, chunk_docs):
        tokenized = chunk.with_format("arrow").map(
            tokenize,
            batched=True,
            with_indices=True,
            remove_columns=["text"],
            features=FEATURES,
            fn_kwargs={"first_doc": first_doc, "seed": seed, "val_fraction": val_fraction},
            num_proc=min(num_proc, len(chunk)) if num_proc > 1 else None,
            cache_file_name=str(cache / "tokens.arrow"),
            load_from_cache_file=False,
        )
        try:
            yield from tokenized.with_format("arrow").iter(batch_size=10_000)
        finally:
            del tokenized
            shutil.rmtree(cache, ignore_errors=True)


def doc_chunks(ds, chunk_docs: int):
    """(index of first document, Dataset of up to chunk_docs documents), in corpus order."""
    if isinstance(ds, datasets.Dataset):
        for start in range(0, len(ds), chunk_docs):
            yield start, ds.select(range(start, min(start + chunk_docs, len(ds))))
        return
    start = 0
    for batch in ds.iter(batch_size=chunk_docs):  # streaming: materialise one chunk at a time
        yield start, datasets.Dataset.from_dict(batch)
        start += len(batch["text"])


def tokenize(batch: pa.Table, indices: list[int], first_doc: int, seed: int, val_fraction: float) -> pa.Table:
    """Documents -> EOT-prefixed uint16 token lists, their UTF-8 byte counts and their split."""
    texts = [text or "" for text in batch.column("text").to_pylist()]
    # Parallelism comes from Dataset.map(num_proc). Inside a process, tiktoken's batch encoder would add a
    # thread-pool task per document (~40 µs), which halves throughput on short documents; encode directly.
    encode = get_encoding().encode_ordinary
    ids = [encode(text) for text in texts]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=DTYPE, count=int(lengths.sum()))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = np.insert(flat, starts, EOT)
    offsets = np.concatenate([[0], np.cumsum(lengths + 1)]).astype(np.int32)
    nbytes = pc.binary_length(pc.cast(batch.column("text"), pa.large_binary())).fill_null(0)
    val = val_mask(np.asarray(indices, dtype=np.uint64) + np.uint64(first_doc), seed, val_fraction)
    return pa.table(
        {
            "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
            "bytes": nbytes.cast(pa.int64()),
            "val": val,
        }
    )


def val_mask(doc_indices: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """splitmix64(seed, index) as a uniform in [0, 1) compared with fraction: a fixed, order-free split."""
    with np.errstate(over="ignore"):
        z = doc_indices.astype(np.uint64) + np.uint64(seed + 1) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


class ShardWriter:
    """Accumulates one split's tokens and writes them as fixed-size shards, each atomically."""

    def __init__(self, directory: Path, split: str, shard_tokens: int):
        self.directory, self.split, self.shard_tokens = directory, split, shard_tokens
        self.tokens = np.empty(0, dtype=DTYPE)
        self.doc_starts = np.empty(0, dtype=np.int64)  # offsets into self.tokens of pending documents
        self.doc_bytes = np.empty(0, dtype=np.int64)
        self.shards: list[dict] = []

    def add(self, tokens: np.ndarray, doc_lengths: np.ndarray, doc_bytes: np.ndarray) -> None:
        starts = len(self.tokens) + np.concatenate([[0], np.cumsum(doc_lengths)[:-1]]).astype(np.int64)
        self.tokens = np.concatenate([self.tokens, tokens])
        self.doc_starts = np.concatenate([self.doc_starts, starts[: len(doc_lengths)]])
        self.doc_bytes = np.concatenate([self.doc_bytes, doc_bytes])
        while len(self.tokens) >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> dict:
        """Write the remainder and return the split's summary for the manifest."""
        if len(self.tokens):
            self._flush(len(self.tokens))
        return {
            "tokens": sum(s["tokens"] for s in self.shards),
            "documents": sum(s["documents"] for s in self.shards),
            "bytes": sum(s["bytes"] for s in self.shards),
            "shards": self.shards,
        }

    def _flush(self, count: int) -> None:
        data, self.tokens = self.tokens[:count], self.tokens[count:]
        starting_here = self.doc_starts < count
        name = f"{self.split}_{len(self.shards):05d}.bin"
        write_atomic(self.directory / name, data.tobytes())
        self.shards.append(
            {
                "file": name,
                "tokens": int(count),
                "documents": int(starting_here.sum()),
                "bytes": int(self.doc_bytes[starting_here].sum()),
                "checksum": xxhash.xxh3_64_hexdigest(data),
            }
        )
        self.doc_starts, self.doc_bytes = self.doc_starts[~starting_here] - count, self.doc_bytes[~starting_here]


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m lm prepare`."""
    CLI(prepare, args=argv, as_positional=False, prog="python -m lm prepare")
