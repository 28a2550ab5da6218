"""`python -m lm prepare`: raw text -> uint16 token shards + manifest.json, pipelined and resumable.

Layout of `<out>/`: `train_00000.bin, train_00001.bin, ..., val_00000.bin, ...` (little-endian uint16 GPT-2 ids)
and `manifest.json` (tokenizer name + hash, vocab size, source and its revision, split rule, the command's
arguments, lm/tiktoken/datasets versions, per-shard tokens, documents, source bytes and xxh3 checksum).
Design choices:

- Each document is *preceded* by EOT (50256), so a split reads `EOT doc0 EOT doc1 ...`; the model always sees a
  document's first token predicted from EOT. Literal "<|endoftext|>" inside text is ordinary text
  (`encode_ordinary`), never id 50256.
- Document i goes to val iff splitmix64(seed, i) / 2^64 < val_fraction: deterministic, order-independent. With
  `--val_tokens N` that rule fills val only until it holds N tokens (whole documents); later documents all train.
- Pipeline. The source is a stream (lm.data.sources). A reader thread pulls the next READ_DOCS documents
  (downloading and decoding parquet/JSON/zstd as it goes) while `num_proc` tokenizer processes encode the previous
  ones; the main process hands them ~1 MB batches of text, keeps four per process queued, and appends the results
  to the shard files in corpus order. Written by hand because `Dataset.map(num_proc)` starts a pool per call and
  waits for its slowest process, so the cores idle while the next chunk is read and the last one written, and a
  streaming dataset has no `map(num_proc)`.
- Shards hold exactly `shard_tokens` tokens (the last of a split fewer); documents may straddle shards, a shard's
  `documents`/`bytes` count the documents that start in it.
- Interruptions. The output grows in `<out>.partial/`. Every `chunk_docs` documents the shard files are fsynced
  and `progress.json` records the documents consumed, the stream's position (`IterableDataset.state_dict()`: a
  resumed stream skips the files before that position unread and re-reads the current one up to it), the
  finished shards and how much of each open shard is written. Running the same command again continues from
  there: open shards are cut back to the recorded length, the stream restarts after the recorded document, and
  the output is byte-identical to an uninterrupted prepare. Other arguments than the first run's are refused (one
  line naming the key). Read errors that are not about the data (network, filesystem, a truncated download) are
  retried `RETRIES` times with exponential backoff, restarting the stream after the last documents read; giving
  up keeps `<out>.partial` for the next run.
- When the stream or the `--max_tokens` budget ends, manifest.json is written and `<out>.partial` renamed to
  `<out>`. A non-empty `<out>` is refused.
"""

import contextlib
import itertools
import json
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from jsonargparse import CLI
from tqdm import tqdm

from lm.data.packed import DTYPE, MANIFEST, checksum, tokenizer_hash
from lm.data.sources import load_source, not_utf8
from lm.data.tokenizer import EOT, TOKENIZER_NAME, get_encoding
from lm.errors import UserError
from lm.files import write_atomic
from lm.provenance import package_version

PROGRESS = "progress.json"
SPLITS = ("train", "val")
READ_DOCS = 1000  # documents per read from the stream: the reader keeps about this far ahead of the tokenizers
TASK_BYTES = 1 << 20  # text per tokenizer task: ~0.1 s of work, so queueing costs ~1%
RETRIES = 10
RETRY_DELAY = 1.0  # seconds before the first retry; doubles after each failure, up to MAX_RETRY_DELAY
MAX_RETRY_DELAY = 120.0
DATA_ERRORS = (ValueError, TypeError, KeyError, UserError)  # malformed JSON/parquet, a bad column: retrying won't help


def prepare(
    *,
    source: str,
    out: str,
    path: str | None = None,
    dataset: str | None = None,
    subset: str | None = None,
    split: str | None = None,
    text_field: str | None = None,
    revision: str | None = None,
    streaming: bool = True,
    val_fraction: float = 0.005,
    val_tokens: float | None = None,
    seed: int = 0,
    shard_tokens: int = 100_000_000,
    max_tokens: float | None = None,
    num_proc: int | None = None,
    chunk_docs: int = 10_000,
) -> Path:
    """Tokenize a text source with GPT-2 BPE into uint16 shards plus manifest.json.

    An interrupted prepare (kill, crash, network failure) continues from where it last saved its progress when the
    same command is run again; the result is identical to an uninterrupted one.

    Args:
        source: python-docs (built in), local (needs --path), a named hub source (fineweb, fineweb-edu, dclm, c4,
            finemath, cosmopedia), or hub: any hub dataset, named by --dataset (text in --text_field, default text).
        out: Output directory; must not exist or be empty. Work in progress lives in <out>.partial.
        path: Files or globs (comma-separated) of .txt/.json/.jsonl/.parquet, text and JSON optionally compressed
            (.jsonl.zst, .json.gz...). With a hub source: local files laid out like that dataset, read by the
            same code.
        dataset: Override the hub source's dataset id (or name a local copy of its repository).
        subset: Override the hub source's config (subset) name, e.g. sample-100BT.
        split: Override the hub source's split.
        text_field: Column holding the text (default: the source's, or "text").
        revision: Hub revision (branch, tag or commit) to read; default: the latest. The commit read is recorded
            in the manifest.
        streaming: Stream the source (default). false reads local files into datasets' Arrow cache first; it is
            refused for hub sources, whose whole dataset it would download before --max_tokens applies.
        val_fraction: Fraction of documents (chosen by a seeded hash of their index) that go to the val split.
        val_tokens: Size the val split in tokens instead: documents chosen at --val_fraction's rate go to val until
            it holds this many tokens (whole documents), all later ones to train.
        seed: Seed of the train/val split.
        shard_tokens: Tokens per shard file.
        max_tokens: Stop after this many tokens (train + val, whole documents), e.g. 2e9.
        num_proc: Tokenizer processes (default: the CPUs this process may use, os.sched_getaffinity).
        chunk_docs: Progress is saved every chunk_docs documents (the granularity of a resume).
    """
    arguments = {name: value for name, value in locals().items() if name != "num_proc"}  # the manifest records them
    return prepare_stream(
        lambda revision: load_source(source, path, dataset, subset, split, text_field, revision, streaming),
        arguments,
        num_proc,
    )


def prepare_stream(open_source: Callable[[str | None], tuple], arguments: dict, num_proc: int | None = None) -> Path:
    """`prepare` once it knows how to open its source: `open_source(revision)` -> (stream, its description).

    `arguments` are prepare's arguments but num_proc: the settings, recorded in the manifest. (The benchmark passes
    a simulated stream here.)
    """
    out_dir, revision = Path(arguments["out"]), arguments["revision"]
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"output directory {out_dir} already exists and is not empty; choose another --out")
    check_arguments(**{key: arguments[key] for key in ("val_fraction", "val_tokens", "max_tokens", "shard_tokens")})
    for name, value in (("chunk_docs", arguments["chunk_docs"]), ("num_proc", num_proc or 1)):
        if value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    num_proc = num_proc or usable_cpus()
    partial = out_dir.with_name(out_dir.name + ".partial")
    progress = read_progress(partial)
    if progress and revision is None:  # continue reading the commit the first run read, even if the hub moved on
        revision = progress["head"]["source"].get("revision")
    get_encoding()  # fail now if the BPE cannot load
    with tokenizer_pool(num_proc) as pool:  # before the source starts any thread (fork safety)
        with utf8_only(arguments):
            ds, description = open_source(revision)
        head = manifest_head(description, arguments)
        if progress:
            check_same_run(partial, progress["head"], head)
            print(f"continuing {partial}: {progress['documents']:,} documents done", file=sys.stderr)
        else:
            shutil.rmtree(partial, ignore_errors=True)  # a run killed before it saved progress
            partial.mkdir(parents=True)
            progress = {"head": head, "documents": 0, "tokens": 0, "stream": None, "splits": {}}
        try:
            with utf8_only(arguments):
                splits = write_shards(ds, partial, progress, pool, num_proc, arguments)
        except BaseException as err:
            if not (partial / PROGRESS).exists():  # stopped before it saved progress: nothing to continue from
                shutil.rmtree(partial, ignore_errors=True)
            elif not isinstance(err, UserError):
                print(f"prepare stopped; {partial} keeps the work done: run the same command again", file=sys.stderr)
            raise
    check_splits(splits, partial, arguments["source"], arguments["val_fraction"], arguments["val_tokens"])
    write_atomic(partial / MANIFEST, json.dumps({**head, "splits": splits}, indent=2).encode())
    (partial / PROGRESS).unlink(missing_ok=True)
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked above)
    os.replace(partial, out_dir)
    return out_dir


@contextlib.contextmanager
def utf8_only(arguments: dict):
    """A file that is not UTF-8 (found by datasets, pyarrow or a tokenizer process) as one line naming it."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise not_utf8(arguments.get("path"), err) from None


def check_arguments(val_fraction, val_tokens, max_tokens, shard_tokens) -> None:
    """One line for each impossible combination, before any work."""
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val_fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise UserError(f"--shard_tokens must be at least 1, got {shard_tokens}")
    if val_tokens is None:
        return
    if val_tokens < 1 or val_fraction == 0:
        raise UserError(f"--val_tokens {val_tokens:g} needs a value ≥ 1 and --val_fraction > 0 (the rate it fills at)")
    if max_tokens and val_tokens > val_fraction * max_tokens:
        raise UserError(
            f"--val_tokens {val_tokens:g} at --val_fraction {val_fraction:g} needs ~{val_tokens / val_fraction:.3g} "
            f"tokens of source, more than --max_tokens {max_tokens:g}; raise --val_fraction to "
            f"{1.5 * val_tokens / max_tokens:.3g} or lower --val_tokens"
        )


def usable_cpus() -> int:
    """CPUs this process may run on (SLURM and cgroup CPU sets included), not all the machine has."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # macOS


def manifest_head(description: dict, arguments: dict) -> dict:
    """Everything of the manifest but the splits; a resumed prepare must produce the same."""
    return {
        "format": 1,
        "tokenizer": {"name": TOKENIZER_NAME, "hash": tokenizer_hash(), "vocab_size": get_encoding().n_vocab},
        "dtype": "uint16",
        "eot": EOT,
        "documents": "each document is preceded by EOT",
        "source": description,
        "split": {
            "val_fraction": arguments["val_fraction"],
            "val_tokens": arguments["val_tokens"],
            "seed": arguments["seed"],
            "rule": "doc i is val iff splitmix64(seed, i) < frac (and val holds < val_tokens before it)",
        },
        "shard_tokens": arguments["shard_tokens"],
        "max_tokens": arguments["max_tokens"],
        "versions": {name: package_version(name) for name in ("lm", "tiktoken", "datasets")},
        "arguments": arguments,
    }


def read_progress(partial: Path) -> dict | None:
    path = partial / PROGRESS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON; delete {partial} to start the prepare over") from None


def check_same_run(partial: Path, before: dict, now: dict, key: str = "") -> None:
    """Refuse to continue a prepare with settings that would change its output; the line names the first key."""
    if isinstance(before, dict) and isinstance(now, dict):
        for name in sorted(before.keys() | now.keys()):
            check_same_run(partial, before.get(name), now.get(name), f"{key}.{name}" if key else name)
    elif before != now:
        raise UserError(
            f"{partial} holds a prepare started with {key} = {json.dumps(before)}, now {json.dumps(now)}; run the "
            f"first command again to continue it, or delete {partial} to start over"
        )


def check_splits(splits: dict, partial: Path, source: str, val_fraction: float, val_tokens: float | None) -> None:
    """Refuse output a training run could not use (removing it); warn about a val split short of --val_tokens."""
    documents = splits["train"]["documents"] + splits["val"]["documents"]
    problem = None
    if documents == 0:
        problem = f"source '{source}' holds no documents"
    elif splits["train"]["bytes"] + splits["val"]["bytes"] == 0:
        problem = f"all {documents:,} documents of source '{source}' are empty; check --text_field and the files"
    elif splits["train"]["documents"] == 0:
        problem = f"source '{source}' produced no training documents (empty corpus?)"
    elif val_fraction > 0 and splits["val"]["documents"] == 0:
        problem = f"no document of '{source}' fell in the val split; raise --val_fraction"
    if problem:
        shutil.rmtree(partial)
        raise UserError(problem)
    if val_tokens and splits["val"]["tokens"] < val_tokens:
        print(
            f"warning: the val split holds {splits['val']['tokens']:,} tokens, fewer than --val_tokens "
            f"{val_tokens:g}: the source ended first; raise --val_fraction for a larger one",
            file=sys.stderr,
        )


def write_shards(ds, partial: Path, progress: dict, pool, num_proc: int, arguments: dict) -> dict:
    """Tokenize the stream from `progress` on into the shard files of `partial`; the splits' manifest entries."""
    seed, val_fraction, val_tokens = arguments["seed"], arguments["val_fraction"], arguments["val_tokens"]
    source, chunk_docs, max_tokens = arguments["source"], arguments["chunk_docs"], arguments["max_tokens"]
    writers = {
        name: ShardWriter(partial, name, arguments["shard_tokens"], progress["splits"].get(name)) for name in SPLITS
    }
    budget = int(max_tokens) if max_tokens else None
    datasets.disable_progress_bars()  # one bar, ours: tokens/s and docs/s
    bar = tqdm(total=budget, initial=progress["tokens"], unit="tok", unit_scale=True, desc=f"prepare {source}")
    begin, first_doc = time.perf_counter(), progress["documents"]

    def write(ids: np.ndarray, lengths: np.ndarray, nbytes: np.ndarray) -> bool:
        """Append one tokenized batch to the splits; True once the budget is reached."""
        val = val_mask(progress["documents"] + np.arange(len(lengths), dtype=np.uint64), seed, val_fraction)
        if val_tokens is not None:  # a val document stays val while val held fewer than val_tokens before it
            before = np.cumsum(np.where(val, lengths, 0)) - lengths
            val &= before < val_tokens - writers["val"].tokens
        if budget is not None:  # keep whole documents up to (and including) the one crossing the budget
            keep = int(np.searchsorted(np.cumsum(lengths), budget - progress["tokens"])) + 1
            ids, lengths, nbytes, val = ids[: lengths[:keep].sum()], lengths[:keep], nbytes[:keep], val[:keep]
        for name, mask in (("train", ~val), ("val", val)):
            writers[name].add(ids[np.repeat(mask, lengths)], lengths[mask], nbytes[mask])
        progress["documents"] += len(lengths)
        progress["tokens"] += int(lengths.sum())
        bar.update(int(lengths.sum()))
        bar.set_postfix_str(f"{(progress['documents'] - first_doc) / (time.perf_counter() - begin):,.0f} docs/s")
        return budget is not None and progress["tokens"] >= budget

    def checkpoint(stream_state: dict) -> None:
        progress["stream"] = stream_state
        progress["splits"] = {name: writer.state() for name, writer in writers.items()}  # fsynced first
        write_atomic(partial / PROGRESS, json.dumps(progress).encode())

    def tasks() -> Iterator[Future | dict]:
        """A tokenizer task per batch of text and, every chunk_docs documents, the stream state after them."""
        unsaved = 0
        for batches, count, stream_state in prefetched(
            read_batches(ds, min(READ_DOCS, chunk_docs), progress["stream"])
        ):
            yield from (pool.submit(encode_documents, batch) for batch in batches)
            unsaved += count
            if unsaved >= chunk_docs:
                yield stream_state
                unsaved = 0

    try:
        for item in ahead(tasks(), 4 * num_proc):
            if isinstance(item, dict):
                checkpoint(item)
            elif write(*item.result()):
                break
    finally:
        datasets.enable_progress_bars()
        bar.close()
    return {name: writer.close() for name, writer in writers.items()}


def ahead(items: Iterator, count: int) -> Iterator:
    """The items of `items` in order, each drawn `count` items before it is returned (so its work runs meanwhile)."""
    window = deque(itertools.islice(items, count))
    for item in items:
        window.append(item)
        yield window.popleft()
    yield from window


def prefetched(items: Iterator) -> Iterator:
    """The items of `items`, the next one produced in a background thread while the caller uses this one."""
    with ThreadPoolExecutor(1, thread_name_prefix="prepare-reader") as reader:
        upcoming = reader.submit(next, items, None)
        while (item := upcoming.result()) is not None:
            upcoming = reader.submit(next, items, None)
            yield item


def read_batches(ds: datasets.IterableDataset, docs: int, state: dict | None) -> Iterator[tuple[list, int, dict]]:
    """(text in batches of about TASK_BYTES, document count, stream state after them) for every `docs` documents.

    Starts at `state` (None: the beginning). An error that is not about the data is retried with exponential backoff,
    the stream restarting after the last documents it delivered; after RETRIES failures in a row it is given up.
    """
    ds = ds.with_format("arrow")
    tables, failures = None, 0
    while True:
        try:
            if tables is None:  # (re)start the stream after the last documents delivered
                if state is not None:
                    ds.load_state_dict(state)
                tables = ds.iter(batch_size=docs)
            table = next(tables, None)
        except DATA_ERRORS as err:
            raise UserError(f"bad data in the source ({type(err).__name__}: {first_line(err)})") from None
        except Exception as err:
            failures += 1
            if failures > RETRIES:
                raise UserError(
                    f"reading the source failed {failures} times in a row ({type(err).__name__}: {first_line(err)})"
                ) from None
            delay = min(RETRY_DELAY * 2 ** (failures - 1), MAX_RETRY_DELAY)
            print(
                f"read error ({type(err).__name__}: {first_line(err)}); retry {failures}/{RETRIES} in {delay:g} s",
                file=sys.stderr,
            )
            time.sleep(delay)
            tables = None
            continue
        if table is None:
            return
        state, failures = ds.state_dict(), 0
        yield text_batches(table.column("text").combine_chunks()), len(table), state


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def text_batches(texts: pa.Array) -> list[pa.Array]:
    """`texts` cut into compact arrays of about TASK_BYTES (a slice would pickle its whole parent buffer)."""
    ends = np.cumsum(pc.binary_length(texts).fill_null(0).to_numpy(zero_copy_only=False))
    cuts = np.searchsorted(ends, np.arange(TASK_BYTES, int(ends[-1]) if len(ends) else 0, TASK_BYTES)) + 1
    bounds = [0, *sorted(set(cuts.tolist()) - {0, len(texts)}), len(texts)]
    return [pa.concat_arrays([texts.slice(a, b - a)]) for a, b in itertools.pairwise(bounds) if b > a]


@contextlib.contextmanager
def tokenizer_pool(num_proc: int) -> Iterator[ProcessPoolExecutor]:
    """`num_proc` tokenizer processes (the platform's start method), started now; on exit pending tasks are dropped."""
    pool = ProcessPoolExecutor(num_proc, initializer=start_tokenizer_process)
    try:
        pool.submit(int).result()  # under fork every process starts on the first task: before any thread of ours
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def start_tokenizer_process() -> None:
    """Load the BPE, and leave when the parent does (a kill -9 of prepare must not leave the pool running)."""
    get_encoding()
    parent = os.getppid()

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()


def encode_documents(texts: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Documents -> (EOT-prefixed uint16 ids of all of them, each one's token count, each one's UTF-8 bytes)."""
    # One tiktoken call per document: its batch encoder adds a thread-pool task per document (~40 µs), which halves
    # throughput on short documents; parallelism comes from the processes.
    encode = get_encoding().encode_ordinary
    ids = [encode(text) if text else [] for text in texts.to_pylist()]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=DTYPE, count=int(lengths.sum()))
    flat = np.insert(flat, np.cumsum(lengths) - lengths, EOT)
    nbytes = pc.binary_length(pc.cast(texts, pa.large_binary())).fill_null(0).to_numpy()
    return flat, lengths + 1, nbytes.astype(np.int64)


def val_mask(doc_indices: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """splitmix64(seed, index) as a uniform in [0, 1) compared with fraction: a fixed, order-free split."""
    with np.errstate(over="ignore"):
        z = doc_indices.astype(np.uint64) + np.uint64(seed + 1) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


class ShardWriter:
    """Appends one split's tokens to shard files of `shard_tokens` tokens; `state()` is what a resume needs.

    A resumed writer cuts its open shard back to the length `state` recorded and deletes any later shard, so the
    files continue exactly as an uninterrupted run would have written them.
    """

    def __init__(self, directory: Path, split: str, shard_tokens: int, state: dict | None = None):
        self.directory, self.split, self.shard_tokens = directory, split, shard_tokens
        state = state or {"shards": [], "open": {"tokens": 0, "documents": 0, "bytes": 0}}
        self.shards: list[dict] = list(state["shards"])
        self.open = dict(state["open"])  # the shard being filled: tokens written, documents and bytes starting in it
        self.file = None
        for stale in directory.glob(f"{split}_*.bin"):
            if int(stale.stem.rpartition("_")[2]) > len(self.shards):
                stale.unlink()
        path, size = self.path(), self.open["tokens"] * DTYPE().itemsize
        if size == 0:
            path.unlink(missing_ok=True)
        elif path.exists() and path.stat().st_size >= size:
            os.truncate(path, size)
        else:
            raise UserError(f"{path} is shorter than {directory / PROGRESS} records; delete {directory} and start over")

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards) + self.open["tokens"]

    def path(self) -> Path:
        return self.directory / f"{self.split}_{len(self.shards):05d}.bin"

    def add(self, tokens: np.ndarray, doc_lengths: np.ndarray, doc_bytes: np.ndarray) -> None:
        starts = np.cumsum(doc_lengths) - doc_lengths  # where each document begins in `tokens`
        done = 0
        while done < len(tokens):
            count = min(self.shard_tokens - self.open["tokens"], len(tokens) - done)
            here = (starts >= done) & (starts < done + count)
            self.open["documents"] += int(here.sum())
            self.open["bytes"] += int(doc_bytes[here].sum())
            if self.file is None:
                self.file = open(self.path(), "ab")  # kept open across calls
            self.file.write(tokens[done : done + count].tobytes())
            self.open["tokens"] += count
            done += count
            if self.open["tokens"] == self.shard_tokens:
                self._finish_shard()

    def state(self) -> dict:
        """The writer's position, after making sure the files hold at least what it records."""
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
        return {"shards": list(self.shards), "open": dict(self.open)}

    def close(self) -> dict:
        """Finish the last shard and return the split's summary for the manifest."""
        if self.open["tokens"]:
            self._finish_shard()
        return {
            "tokens": sum(s["tokens"] for s in self.shards),
            "documents": sum(s["documents"] for s in self.shards),
            "bytes": sum(s["bytes"] for s in self.shards),
            "shards": self.shards,
        }

    def _finish_shard(self) -> None:
        path = self.path()
        if self.file is not None:
            self.file.close()
            self.file = None
        self.shards.append({"file": path.name, **self.open, "checksum": checksum(path)})
        self.open = {"tokens": 0, "documents": 0, "bytes": 0}


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m lm prepare`."""
    CLI(prepare, args=argv, as_positional=False, prog="python -m lm prepare")
