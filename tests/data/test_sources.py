import gzip
import hashlib
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lm.data.packed import read_manifest
from lm.data.prepare import prepare, val_mask
from lm.data.sources import HUB_SOURCES, load_source, python_docstrings
from lm.data.tokenizer import EOT, get_encoding
from lm.errors import UserError
from tests.data.conftest import c4_mirror, dclm_mirror, make_docs, shard_writes_fail_at, write_jsonl
from tests.data.test_prepare import expected_tokens, split_tokens


def fineweb_parquet(path, docs: list[str]) -> str:
    """A parquet file with fineweb's real columns."""
    n = len(docs)
    table = pa.table(
        {
            "text": docs,
            "id": [f"<urn:uuid:{i}>" for i in range(n)],
            "dump": ["CC-MAIN-2024-10"] * n,
            "url": [f"https://example.com/{i}" for i in range(n)],
            "date": ["2024-02-20T00:00:00Z"] * n,
            "file_path": ["s3://commoncrawl/x.warc.gz"] * n,
            "language": ["en"] * n,
            "language_score": [0.9] * n,
            "token_count": [len(d) for d in docs],
        }
    )
    pq.write_table(table, path)
    return str(path)


def texts(source: str, **kwargs) -> list[str]:
    ds, _ = load_source(source, **kwargs)
    return [row["text"] for row in ds]


def digest(docs) -> str:
    return hashlib.sha256("\0".join(docs).encode()).hexdigest()


def test_python_docs_is_deterministic_and_clean():
    docs = python_docstrings()
    assert len(docs) > 1000 and all(docs)
    assert any("Return" in d for d in docs)
    code = "from lm.data.sources import python_docstrings as p; from tests.data.test_sources import digest; "
    code += "print(digest(p()))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == digest(docs)  # another process, another hash seed: the same corpus


def test_local_jsonl_parquet_txt(tmp_path):
    docs = make_docs(20)
    assert texts("local", path=write_jsonl(tmp_path / "a.jsonl", docs, field="body"), text_field="body") == docs
    pq.write_table(pa.table({"content": docs, "n": list(range(20))}), tmp_path / "a.parquet")
    assert texts("local", path=str(tmp_path / "*.parquet"), text_field="content") == docs
    for i, doc in enumerate(docs[:3]):
        (tmp_path / f"doc{i}.txt").write_text(doc)
    assert texts("local", path=str(tmp_path / "doc*.txt")) == docs[:3]  # one document per file


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_source_reads_local_files_with_the_real_schema(tmp_path, streaming):
    docs = make_docs(60)
    fineweb_parquet(tmp_path / "000_00000.parquet", docs[:30])
    fineweb_parquet(tmp_path / "000_00001.parquet", docs[30:])
    out = prepare(
        source="fineweb",
        out=str(tmp_path / "out"),
        path=str(tmp_path / "*.parquet"),
        streaming=streaming,
        val_fraction=0.1,
        num_proc=1,
        chunk_docs=25,
    )
    manifest = read_manifest(out)
    assert manifest["source"]["dataset"] == HUB_SOURCES["fineweb"].dataset
    assert manifest["source"]["config"] == "sample-10BT"
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == 60
    first = np.fromfile(out / "train_00000.bin", dtype=np.uint16)
    assert first[0] == EOT and list(first[1:6]) == get_encoding().encode_ordinary(docs[0])[:5]


def test_hub_overrides(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", make_docs(5), field="content")
    _, description = load_source("finemath", path=path, subset="finemath-3plus", text_field="content")
    assert description["config"] == "finemath-3plus" and description["text_field"] == "content"


def test_any_hub_dataset_by_id(tmp_path):
    """`--source hub --dataset X`: datasets the table does not name (TinyStories, Alpaca, the Pile, code)."""
    path = write_jsonl(tmp_path / "stories.jsonl", make_docs(5), field="story")
    ds, description = load_source("hub", dataset="roneneldan/TinyStories", path=path, text_field="story")
    assert description["dataset"] == "roneneldan/TinyStories" and description["text_field"] == "story"
    assert [row["text"] for row in ds] == make_docs(5)
    with pytest.raises(UserError, match="source 'hub' needs --dataset"):
        load_source("hub", path=path)


def test_unreachable_hub_is_one_line(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no network here either way; fail fast
    with pytest.raises(UserError, match="could not load hub dataset 'mlfoundations/dclm-baseline-1.0'") as e:
        load_source("dclm", dataset="mlfoundations/dclm-baseline-1.0")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_match", "matches no files"),
        ("missing_field", "text field 'body' not found"),
        ("empty", "empty corpus"),
        ("unknown", "unknown source 'nope'"),
        ("no_path", "needs --path"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, case, message):
    src = write_jsonl(tmp_path / "d.jsonl", make_docs(10))
    (tmp_path / "empty.jsonl").write_text("")
    kwargs = {
        "no_match": dict(source="local", path=str(tmp_path / "missing/*.parquet")),
        "missing_field": dict(source="local", path=src, text_field="body"),
        "empty": dict(source="local", path=str(tmp_path / "empty.jsonl")),
        "unknown": dict(source="nope"),
        "no_path": dict(source="local"),
    }[case]
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message) as e:
        prepare(out=str(out), num_proc=1, **kwargs)
    assert "\n" not in str(e.value)
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_corpus_of_empty_rows_leaves_nothing(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", ["", "x"])
    with pytest.raises(UserError, match="val split"):
        prepare(source="local", out=str(tmp_path / "out"), path=src, num_proc=1, val_fraction=0.01)
    assert sorted(os.listdir(tmp_path)) == ["d.jsonl"]


def train_docs(docs: list[str], val_fraction: float) -> list[str]:
    is_val = val_mask(np.arange(len(docs)), 0, val_fraction)
    return [doc for doc, val in zip(docs, is_val) if not val]


def shard_checksums(directory) -> list[str]:
    return [s["checksum"] for split in read_manifest(directory)["splits"].values() for s in split["shards"]]


def test_dclm_mirror_of_jsonl_zst_prepares_through_the_dclm_source(tmp_path):
    docs = make_docs(90)
    mirror = dclm_mirror(tmp_path / "dclm-baseline-1.0", docs)
    out = prepare(
        source="dclm",
        out=str(tmp_path / "out"),
        path=str(mirror / "global-shard_*/local-shard_*/*.jsonl.zst"),
        val_fraction=0.1,
        num_proc=1,
        chunk_docs=20,
    )
    source = read_manifest(out)["source"]
    assert source["dataset"] == "mlfoundations/dclm-baseline-1.0" and source["streaming"] is True
    assert len(source["data_files"]) == 4
    np.testing.assert_array_equal(split_tokens(out, "train"), expected_tokens(train_docs(docs, 0.1)))

    # A local copy of the repository, found and decompressed by datasets itself (as from the hub), same shards.
    copy = prepare(source="dclm", dataset=str(mirror), out=str(tmp_path / "copy"), val_fraction=0.1, num_proc=1)
    assert shard_checksums(copy) == shard_checksums(out)
    assert read_manifest(copy)["source"]["revision"] is None  # a directory has no hub commit


def test_c4_mirror_of_json_gz(tmp_path):
    docs = make_docs(60, seed=3)
    mirror = c4_mirror(tmp_path / "c4", docs)
    out = prepare(
        source="c4", out=str(tmp_path / "out"), path=str(mirror / "en/c4-train.*.json.gz"), val_fraction=0.1, num_proc=1
    )
    source = read_manifest(out)["source"]
    assert (source["dataset"], source["config"], source["text_field"]) == ("allenai/c4", "en", "text")
    np.testing.assert_array_equal(split_tokens(out, "train"), expected_tokens(train_docs(docs, 0.1)))


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".json.gz", ".jsonl.zst", ".txt.gz"])
def test_compressed_local_files(tmp_path, suffix):
    docs = make_docs(12)
    compress = gzip.compress if suffix.endswith(".gz") else zstandard.ZstdCompressor().compress
    if suffix.startswith(".txt"):  # one document per file
        for i, doc in enumerate(docs):
            (tmp_path / f"doc{i:02d}{suffix}").write_bytes(compress(doc.encode()))
    else:
        (tmp_path / f"part{suffix}").write_bytes(
            compress("".join(json.dumps({"text": d}) + "\n" for d in docs).encode())
        )
    assert texts("local", path=str(tmp_path / f"*{suffix}")) == docs


@pytest.mark.parametrize(
    "names, message",
    [
        (["a.parquet.gz"], r"unsupported file type \['.parquet.gz'\]"),
        (["a.jsonl.zip"], r"unsupported file type \['.jsonl.zip'\]"),
        (["a.jsonl.zst", "b.parquet"], r"mixes file types \['.jsonl.zst', '.parquet'\]"),
    ],
)
def test_file_types_are_named(tmp_path, names, message):
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(UserError, match=message):
        load_source("local", path=",".join(str(tmp_path / name) for name in names))


def test_hub_sources_are_never_downloaded_whole():
    with pytest.raises(UserError, match="--streaming false would download all of 'mlfoundations/dclm-baseline-1.0'"):
        load_source("dclm", streaming=False)


def test_hub_revision_is_resolved_read_and_recorded(tmp_path, monkeypatch):
    """The hub cannot be reached here: its API answers with commits, and the repository is a local copy.

    An interrupted prepare continues at the commit it started on, even after the hub moved on.
    """
    mirror = dclm_mirror(tmp_path / "repo", make_docs(200))
    first, later = "a3b1d2c4" * 5, "ffee0011" * 5
    hub = {"head": first}
    asked = []

    def dataset_info(self, repo_id, revision=None, **kwargs):
        asked.append(("info", repo_id, revision))
        return SimpleNamespace(sha=revision or hub["head"])

    real_load = datasets.load_dataset

    def load_dataset(path, name=None, **kwargs):
        asked.append(("load", path, kwargs["revision"], kwargs["streaming"]))
        return real_load(str(mirror), name, **{**kwargs, "revision": None})

    monkeypatch.setattr("huggingface_hub.HfApi.dataset_info", dataset_info)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    options = {"out": str(tmp_path / "out"), "val_fraction": 0.1, "num_proc": 1, "chunk_docs": 40}
    with shard_writes_fail_at(3, ConnectionResetError("gone")), pytest.raises(ConnectionResetError):
        prepare(source="dclm", **options)
    assert asked == [
        ("info", "mlfoundations/dclm-baseline-1.0", None),
        ("load", "mlfoundations/dclm-baseline-1.0", first, True),
    ]

    hub["head"], asked[:] = later, []
    out = prepare(source="dclm", **options)
    assert asked == [
        ("info", "mlfoundations/dclm-baseline-1.0", first),
        ("load", "mlfoundations/dclm-baseline-1.0", first, True),
    ]
    assert read_manifest(out)["source"]["revision"] == first


@pytest.mark.parametrize("name", ["d.jsonl", "d.txt", "d.jsonl.gz"])
def test_a_file_that_is_not_utf8_is_one_line_naming_file_and_line(tmp_path, name):
    """The decode error comes from deep in datasets or pyarrow (or a tokenizer process) without a file name."""
    import gzip

    lines = [json.dumps({"text": doc}).encode() for doc in make_docs(3)]
    lines.insert(2, b'{"text": "caf\xe9 in latin-1"}')
    data = b"\n".join(lines) + b"\n"
    if name == "d.txt":
        data = data.replace(b"{", b"(")
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        prepare(source="local", out=str(out), path=str(tmp_path / name), num_proc=1)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / name} line 3 is not UTF-8 (byte 0xe9 at column 14)"), message
    assert "iconv" in message and "\n" not in message
    assert not out.exists() and not (tmp_path / "out.partial").exists()
