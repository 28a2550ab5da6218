"""`python -m lm.data.bench`: throughput of prepare (tokens/s per num_proc) and of the training loader.

A benchmark, not a test: numbers depend on the machine. The corpus is the python-docs docstrings repeated
into a parquet file (real prose and code, about `--tokens` tokens), so it runs offline.
"""

import json
import resource
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from jsonargparse import CLI

from lm.data.datamodule import TokenDataModule
from lm.data.prepare import prepare
from lm.data.sources import python_docstrings


def corpus_parquet(path: Path, tokens: int, doc_bytes: int) -> Path:
    """python-docs docstrings joined into ~doc_bytes-byte documents, repeated to about `tokens` tokens.

    Web corpora average ~3 KB per document (fineweb: ~670 tokens); docstrings alone average ~200 bytes, where
    per-document overhead (tiktoken's batch thread pool, Arrow rows) dominates.
    """
    docs, current = [], ""
    for doc in python_docstrings():
        current = f"{current}\n\n{doc}" if current else doc
        if len(current.encode()) >= doc_bytes:
            docs.append(current)
            current = ""
    repeats = max(1, round(tokens * 3.6 / sum(len(d.encode()) for d in docs)))  # ~3.6 bytes per token
    pq.write_table(pa.table({"text": docs * repeats}), path)
    return path


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the tokenizer pool)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_prepare(root: Path, source: Path, num_proc: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and tokens of one end-to-end prepare (load, tokenize, write shards).

    Tokens per CPU second is the per-core rate even when other jobs share the machine.
    """
    begin, cpu = time.perf_counter(), cpu_seconds()
    out = prepare(source="local", out=str(root / f"out{num_proc}"), path=str(source), num_proc=num_proc)
    seconds, cpu = time.perf_counter() - begin, cpu_seconds() - cpu
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    return seconds, cpu, splits["train"]["tokens"] + splits["val"]["tokens"]


def bench_loader(sources: dict[str, str], num_workers: int, batches: int, seq_len: int, batch_size: int) -> float:
    """Input tokens per second delivered by train_dataloader() (batch_size x seq_len per batch)."""
    dm = TokenDataModule(sources, seq_len=seq_len, batch_size=batch_size, num_workers=num_workers)
    loader = iter(dm.train_dataloader())
    next(loader)  # worker start-up is not throughput
    begin = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * batch_size * seq_len / (time.perf_counter() - begin)


def main(tokens: int = 20_000_000, doc_bytes: int = 3000, procs: list[int] | None = None, batches: int = 3000) -> None:
    """Print prepare and loader throughput.

    Args:
        tokens: Approximate corpus size for the prepare benchmark.
        doc_bytes: Approximate document size (1 keeps single docstrings: the short-document worst case).
        procs: num_proc values to time prepare with (default 1 and 2).
        batches: Batches of 16 x 1024 tokens to time the loader over.
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = corpus_parquet(root / "corpus.parquet", tokens, doc_bytes)
        out = None
        for num_proc in procs or [1, 2]:
            seconds, cpu, count = bench_prepare(root, source, num_proc)
            wall, per_cpu = count / seconds / 1e6, count / cpu / 1e6
            print(f"prepare num_proc={num_proc}: {count:,} tokens in {seconds:.1f} s = {wall:.2f} M tok/s", end="")
            print(f" ({per_cpu:.2f} M tok per CPU second)")
            out = str(root / f"out{num_proc}")
        for workers in (0, 2):
            for sources in ({"one": out}, {name: out for name in ("a", "b", "c", "d")}):
                rate = bench_loader(sources, workers, batches, 1024, 16)
                print(f"loader {len(sources)} source(s), num_workers={workers}: {rate / 1e6:.1f} M tok/s (16 x 1025)")


if __name__ == "__main__":
    CLI(main)
