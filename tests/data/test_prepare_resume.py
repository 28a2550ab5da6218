"""An interrupted prepare (kill -9, an exception, a failing stream) continues to the bytes of an uninterrupted one."""

import os
import shutil
import signal
import subprocess
import sys

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lm.data import prepare as prepare_module
from lm.data.prepare import PROGRESS, prepare
from lm.errors import UserError
from tests.data.conftest import make_docs, shard_writes_fail_at
from tests.reliability.helpers import ROOT, child_env, wait_until

DOCS = make_docs(1500)
OPTIONS = {"val_fraction": 0.1, "shard_tokens": 4000, "chunk_docs": 60, "num_proc": 1}


def snapshot(directory) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A parquet file of 1,500 documents (~40k tokens: 9 train shards, 25 chunks) and the bytes of its prepare."""
    root = tmp_path_factory.mktemp("resume")
    source = root / "docs.parquet"
    pq.write_table(pa.table({"text": DOCS}), source, row_group_size=100)
    reference = snapshot(prepare(source="local", path=str(source), out=str(root / "out"), **OPTIONS))
    shutil.rmtree(root / "out")
    return source, reference


@pytest.fixture
def out(corpus):
    """The reference's --out (manifests record it), emptied after each test."""
    out = corpus[0].parent / "out"
    yield out
    for path in (out, out.with_name("out.partial")):
        shutil.rmtree(path, ignore_errors=True)


def prepare_local(source, out, **options):
    return prepare(source="local", path=str(source), out=str(out), **{**OPTIONS, **options})


def test_kill_9_mid_prepare_then_the_same_command_finishes_it(corpus, out, tmp_path, capfd):
    source, reference = corpus
    args = ["--source", "local", "--path", str(source), "--out", str(out)]
    args += [f"--{key}={value}" for key, value in OPTIONS.items()]
    log = tmp_path / "prepare.log"
    with open(log, "wb") as f:
        process = subprocess.Popen(  # its own process group, so kill -9 reaches its tokenizer process too
            [sys.executable, str(ROOT / "tests" / "data" / "stall_prepare.py"), *args],
            cwd=ROOT,
            env={**child_env(), "STALL_AT": "25"},  # a dozen chunks in, some tokens written past progress.json
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_until(lambda: "STALLED" in log.read_text(), process, log)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = out.with_name("out.partial")
    assert not out.exists() and (partial / PROGRESS).is_file()

    prepare_local(source, out)
    assert "continuing" in capfd.readouterr().err
    assert snapshot(out) == reference


def test_an_exception_keeps_the_work_and_a_rerun_finishes_it(corpus, out, capfd):
    source, reference = corpus
    with shard_writes_fail_at(30, RuntimeError("disk on fire")), pytest.raises(RuntimeError, match="disk on fire"):
        prepare_local(source, out)
    assert "keeps the work done: run the same command again" in capfd.readouterr().err

    with pytest.raises(UserError, match=r"started with arguments.seed = 0, now 1; run the first command again"):
        prepare_local(source, out, seed=1)  # other arguments would not continue the same output
    prepare_local(source, out, num_proc=2)  # the process count is free
    assert snapshot(out) == reference


def stream(failures: dict, at: int = 700) -> datasets.IterableDataset:
    """DOCS as a stream of 3 files that raises ConnectionError at document `at` while failures["left"] > 0.

    failures["read"] counts the documents it produced.
    """

    def generate(shards):
        for shard in shards:
            for index in range(shard * 500, shard * 500 + 500):
                failures["read"] = failures.get("read", 0) + 1
                if index == at and failures["left"]:
                    failures["left"] -= 1
                    raise ConnectionError("connection reset by peer")
                yield {"text": DOCS[index]}

    return datasets.IterableDataset.from_generator(generate, gen_kwargs={"shards": [0, 1, 2]})


def test_a_read_error_mid_stream_is_retried(corpus, out, monkeypatch, capfd):
    _, reference = corpus
    failures = {"left": 2}
    monkeypatch.setattr(prepare_module, "load_source", lambda *args: (stream(failures), {"source": "local"}))
    monkeypatch.setattr(prepare_module, "RETRY_DELAY", 0.0)
    clean = prepare_local("unused", out)
    assert failures["left"] == 0
    assert "read error (ConnectionError: connection reset by peer); retry 2/10" in capfd.readouterr().err
    assert {name: data for name, data in snapshot(clean).items() if name != "manifest.json"} == {
        name: data
        for name, data in reference.items()
        if name != "manifest.json"  # another source description
    }


def test_giving_up_keeps_the_work_done(corpus, out, monkeypatch):
    _, reference = corpus
    failures = {"left": 99}
    monkeypatch.setattr(prepare_module, "load_source", lambda *args: (stream(failures, at=1300), {"source": "local"}))
    monkeypatch.setattr(prepare_module, "RETRY_DELAY", 0.0)
    monkeypatch.setattr(prepare_module, "RETRIES", 2)
    with pytest.raises(UserError, match=r"reading the source failed 3 times in a row \(ConnectionError"):
        prepare_local("unused", out)
    partial = out.with_name("out.partial")
    assert (partial / PROGRESS).is_file() and not out.exists()

    failures.update(left=0, read=0)  # the network is back
    prepare_local("unused", out)
    assert failures["read"] <= 1000  # the first file is skipped unread
    assert {name: data for name, data in snapshot(out).items() if name != "manifest.json"} == {
        name: data for name, data in reference.items() if name != "manifest.json"
    }
