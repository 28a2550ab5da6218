"""`python -m lm.data.bench`: end-to-end prepare throughput (local parquet, a simulated stream) and loader throughput.

A benchmark, not a test: numbers depend on the machine. The corpus is the python-docs docstrings joined into
~`--doc_bytes` documents and repeated to about `--tokens` tokens (real prose and code), so it runs offline.

Prepare is timed end to end (open, read, tokenize, write shards and manifest) and reported as tokens per wall
second; tokens per CPU second of this process and its tokenizer processes (getrusage): the per-core rate, also on a
machine whose cores other jobs share; and how busy the tokenizer processes were: "fed" is the time they were
running or ready to run (Linux schedstat: waiting for a core that other jobs held counts, waiting for work does
not) over num_proc x wall time, 100% when the pipeline never leaves a tokenizer waiting for text; "on CPU" is their
CPU time over the same, lower than "fed" on a loaded machine.

The simulated stream is a `datasets.IterableDataset` whose generator yields the same documents at a fixed rate, as
a download would, offered at multiples of the rate measured on the parquet file: faster than the cores can
tokenize, they should stay busy; slower, prepare should keep pace with the stream (reading overlaps tokenizing).
"""

import functools
import inspect
import json
import os
import resource
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from jsonargparse import CLI

from lm.data.datamodule import TokenDataModule
from lm.data.prepare import prepare, prepare_stream, usable_cpus
from lm.data.sources import python_docstrings


def corpus(tokens: int, doc_bytes: int) -> list[str]:
    """python-docs docstrings joined into ~doc_bytes-byte documents, repeated to about `tokens` tokens.

    Web corpora average ~3 KB per document (fineweb: ~670 tokens); docstrings alone average ~200 bytes, where
    per-document overhead dominates.
    """
    docs, current = [], ""
    for doc in python_docstrings():
        current = f"{current}\n\n{doc}" if current else doc
        if len(current.encode()) >= doc_bytes:
            docs.append(current)
            current = ""
    repeats = max(1, round(tokens * 3.6 / sum(len(d.encode()) for d in docs)))  # ~3.6 bytes per token
    return docs * repeats


def paced(docs: list[str], docs_per_second: float):
    """The documents, no faster than `docs_per_second` (sleeping between them, as a network read waits)."""
    begin = time.perf_counter()
    for index, doc in enumerate(docs):
        ahead = begin + index / docs_per_second - time.perf_counter()
        if ahead > 0.001:
            time.sleep(ahead)
        yield {"text": doc}


def cpu_seconds() -> tuple[float, float]:
    """CPU time of this process, and of its finished children (the tokenizer processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


class RunnableTime:
    """Seconds the child processes of this one spent running or ready to run, sampled from /proc (Linux)."""

    def __init__(self):
        self.latest: dict[str, float] = {}  # pid -> running + runnable seconds at its last sample
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.done.wait(0.05):
            for children in Path("/proc/self/task").glob("*/children"):
                for pid in children.read_text().split():
                    try:
                        running, waiting = Path(f"/proc/{pid}/schedstat").read_text().split()[:2]
                    except (OSError, ValueError):  # it just ended
                        continue
                    self.latest[pid] = (int(running) + int(waiting)) / 1e9

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    @property
    def seconds(self) -> float | None:
        return sum(self.latest.values()) if os.path.exists("/proc/self/schedstat") else None


def timed(run, out: Path, num_proc: int) -> dict:
    """Run one prepare into `out`: tokens, wall seconds, rates, and how busy its tokenizer processes were."""
    (own, children), begin = cpu_seconds(), time.perf_counter()
    with RunnableTime() as runnable:
        run()
    seconds = time.perf_counter() - begin
    own_after, children_after = cpu_seconds()
    own, children = own_after - own, children_after - children
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    tokens = splits["train"]["tokens"] + splits["val"]["tokens"]
    return {
        "tokens": tokens,
        "seconds": seconds,
        "wall_rate": tokens / seconds,
        "cpu_rate": tokens / (own + children),
        "fed": runnable.seconds / (num_proc * seconds) if runnable.seconds is not None else float("nan"),
        "on_cpu": children / (num_proc * seconds),
        "main_cpus": own / seconds,
    }


def bench_parquet(root: Path, source: Path, num_proc: int) -> dict:
    out = root / f"parquet{num_proc}"
    return timed(lambda: prepare(source="local", out=str(out), path=str(source), num_proc=num_proc), out, num_proc)


def bench_stream(root: Path, docs: list[str], docs_per_second: float, num_proc: int) -> dict:
    out = root / f"stream{num_proc}-{docs_per_second:.0f}"
    arguments = {
        **{name: p.default for name, p in inspect.signature(prepare).parameters.items() if name != "num_proc"},
        "source": "simulated-stream",
        "out": str(out),
    }
    stream = datasets.IterableDataset.from_generator(functools.partial(paced, docs, docs_per_second))
    description = {"source": "simulated-stream", "docs_per_second": docs_per_second}
    return timed(lambda: prepare_stream(lambda revision: (stream, description), arguments, num_proc), out, num_proc)


def bench_loader(sources: dict[str, str], num_workers: int, batches: int, seq_len: int, batch_size: int) -> float:
    """Input tokens per second delivered by train_dataloader() (batch_size x seq_len per batch)."""
    dm = TokenDataModule(sources, seq_len=seq_len, batch_size=batch_size, num_workers=num_workers)
    loader = iter(dm.train_dataloader())
    next(loader)  # worker start-up is not throughput
    begin = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * batch_size * seq_len / (time.perf_counter() - begin)


def line(what: str, result: dict) -> str:
    return (
        f"{what}: {result['tokens'] / 1e6:.1f}M tokens in {result['seconds']:.1f} s = "
        f"{result['wall_rate'] / 1e6:.2f} M tok/s, {result['cpu_rate'] / 1e6:.2f} M tok per CPU second; "
        f"tokenizers fed {result['fed']:.0%} of the time (on a CPU {result['on_cpu']:.0%}), "
        f"main process {result['main_cpus']:.2f} CPU"
    )


def main(
    tokens: int = 20_000_000,
    doc_bytes: int = 3000,
    procs: list[int] | None = None,
    stream_rates: list[float] | None = None,
    batches: int = 3000,
) -> None:
    """Print prepare and loader throughput.

    Args:
        tokens: Approximate corpus size for the prepare benchmarks.
        doc_bytes: Approximate document size (1 keeps single docstrings: the short-document worst case).
        procs: num_proc values to time prepare with (default 1 and all usable CPUs).
        stream_rates: Rates of the simulated stream, as multiples of the parquet rate with the most processes
            (default 2 and 0.5).
        batches: Batches of 16 x 1024 tokens to time the loader over.
    """
    procs = procs or sorted({1, usable_cpus()})
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"{date.today()}, {usable_cpus()} usable CPUs, load average {load}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        docs = corpus(tokens, doc_bytes)
        source = root / "corpus.parquet"
        pq.write_table(pa.table({"text": docs}), source)
        for num_proc in procs:
            parquet = bench_parquet(root, source, num_proc)
            print(line(f"prepare parquet, num_proc={num_proc}", parquet))
        docs_per_token = len(docs) / parquet["tokens"]
        for multiple in stream_rates or [2.0, 0.5]:
            offered = multiple * parquet["wall_rate"]
            result = bench_stream(root, docs, offered * docs_per_token, procs[-1])
            print(line(f"prepare stream offering {offered / 1e6:.2f} M tok/s, num_proc={procs[-1]}", result))
        out = str(root / f"parquet{procs[-1]}")
        for workers in (0, 2):
            for sources in ({"one": out}, {name: out for name in ("a", "b", "c", "d")}):
                rate = bench_loader(sources, workers, batches, 1024, 16)
                print(f"loader {len(sources)} source(s), num_workers={workers}: {rate / 1e6:.1f} M tok/s (16 x 1025)")


if __name__ == "__main__":
    CLI(main)
