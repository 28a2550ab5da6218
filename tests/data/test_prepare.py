import json
import os

import numpy as np
import pytest

from lm.data import prepare as prepare_module
from lm.data.packed import checksum, read_manifest
from lm.data.prepare import main, prepare, usable_cpus, val_mask
from lm.data.tokenizer import EOT, get_encoding
from lm.errors import UserError
from tests.data.conftest import make_docs, prepared, write_jsonl


def split_tokens(directory, split: str) -> np.ndarray:
    manifest = read_manifest(directory)
    return np.concatenate(
        [np.fromfile(f"{directory}/{s['file']}", dtype=np.uint16) for s in manifest["splits"][split]["shards"]]
    )


def expected_tokens(docs: list[str]) -> np.ndarray:
    enc = get_encoding()
    return np.array([t for doc in docs for t in [EOT, *enc.encode_ordinary(doc)]], dtype=np.uint16)


def test_round_trip_each_document_preceded_by_eot(corpus):
    docs = make_docs(400)
    is_val = val_mask(np.arange(len(docs)), seed=0, fraction=0.1)
    manifest = read_manifest(corpus)
    for split, mask in (("train", ~is_val), ("val", is_val)):
        split_docs = [d for d, m in zip(docs, mask) if m]
        tokens = split_tokens(corpus, split)
        np.testing.assert_array_equal(tokens, expected_tokens(split_docs))
        info = manifest["splits"][split]
        assert info["documents"] == len(split_docs) == int((tokens == EOT).sum())
        assert info["bytes"] == sum(len(d.encode()) for d in split_docs)
        assert info["tokens"] == len(tokens)
    assert len(manifest["splits"]["train"]["shards"]) > 1  # shard_tokens=3000 splits it
    assert all(s["tokens"] == 3000 for s in manifest["splits"]["train"]["shards"][:-1])
    for shard in manifest["splits"]["train"]["shards"]:
        assert checksum(__import__("pathlib").Path(corpus) / shard["file"]) == shard["checksum"]


def test_literal_endoftext_is_ordinary_text(corpus):
    docs = make_docs(400)
    literal = docs[200]
    assert "<|endoftext|>" in literal
    ids = get_encoding().encode_ordinary(literal)
    assert EOT not in ids
    train, val = split_tokens(corpus, "train"), split_tokens(corpus, "val")
    tokens = np.concatenate([train, val])
    assert (tokens == EOT).sum() == len(docs)  # one EOT per document, none from the literal


def test_split_is_deterministic_and_seeded(tmp_path):
    docs = make_docs(300)
    a = prepared(tmp_path, "a", docs, val_fraction=0.2)
    b = prepared(tmp_path, "b", docs, val_fraction=0.2, num_proc=2)  # parallel gives identical shards
    c = prepared(tmp_path, "c", docs, val_fraction=0.2, seed=1)
    shards = lambda d: [s["checksum"] for part in read_manifest(d)["splits"].values() for s in part["shards"]]
    assert shards(a) == shards(b) != shards(c)
    val_docs = read_manifest(a)["splits"]["val"]["documents"]
    assert 0.1 * 300 < val_docs < 0.3 * 300


@pytest.mark.parametrize("val_tokens", [None, 600], ids=["val_fraction", "val_tokens"])
def test_split_does_not_depend_on_chunk_docs(tmp_path, val_tokens):
    """chunk_docs sets how many documents are read at a time (and saved for a resume), never which go to val."""
    docs = make_docs(300)
    whole = prepared(tmp_path, "whole", docs, val_fraction=0.2, val_tokens=val_tokens)
    chunked = prepared(tmp_path, "chunked", docs, val_fraction=0.2, val_tokens=val_tokens, chunk_docs=7)
    for split in ("train", "val"):
        np.testing.assert_array_equal(split_tokens(chunked, split), split_tokens(whole, split))


def test_max_tokens_stops_at_budget(tmp_path):
    docs = make_docs(400)
    out = prepared(tmp_path, "cut", docs, max_tokens=2000, val_fraction=0.05)
    splits = read_manifest(out)["splits"]
    total = splits["train"]["tokens"] + splits["val"]["tokens"]
    assert 2000 <= total < 2000 + 200  # whole documents: overshoot by less than one document
    assert sorted(os.listdir(out)) == ["manifest.json", "train_00000.bin", "val_00000.bin"]  # no tokenizer cache


def test_cli_python_docs_with_budget_and_help(tmp_path, capsys):
    out = tmp_path / "pydocs"
    main(["--source", "python-docs", "--out", str(out), "--max_tokens", "3e4", "--num_proc", "2"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["source"] == "python-docs"
    assert manifest["tokenizer"]["vocab_size"] == 50257
    assert manifest["splits"]["train"]["tokens"] + manifest["splits"]["val"]["tokens"] >= 30_000
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "Tokenize a text source" in capsys.readouterr().out


def test_refuses_non_empty_output(corpus):
    with pytest.raises(UserError, match="already exists and is not empty"):
        prepare(source="python-docs", out=corpus)


def test_empty_output_directory_is_filled(tmp_path):
    (tmp_path / "out").mkdir()
    src = write_jsonl(tmp_path / "d.jsonl", make_docs(50))
    prepare(source="local", out=str(tmp_path / "out"), path=src, num_proc=1, val_fraction=0.2)
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert not (tmp_path / "out.partial").exists()


def test_val_tokens_sizes_the_val_split(tmp_path):
    docs = make_docs(400)
    out = prepared(tmp_path, "v", docs, val_fraction=0.3, val_tokens=800)
    # the hash rule picks val documents until val holds 800 tokens; every later document is train
    enc, val_docs, train_docs, held = get_encoding(), [], [], 0
    for doc, chosen in zip(docs, val_mask(np.arange(len(docs)), 0, 0.3)):
        if chosen and held < 800:
            val_docs.append(doc)
            held += len(enc.encode_ordinary(doc)) + 1
        else:
            train_docs.append(doc)
    np.testing.assert_array_equal(split_tokens(out, "val"), expected_tokens(val_docs))
    np.testing.assert_array_equal(split_tokens(out, "train"), expected_tokens(train_docs))
    assert 800 <= read_manifest(out)["splits"]["val"]["tokens"] < 800 + 100
    assert read_manifest(out)["split"]["val_tokens"] == 800
    with pytest.raises(UserError, match=r"--val_tokens 2e\+07 at --val_fraction 0.005 needs ~4e\+09 tokens of source"):
        prepare(source="python-docs", out=str(tmp_path / "x"), val_tokens=2e7, max_tokens=1e9)


def test_a_corpus_of_empty_documents_is_refused(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", ["", "", ""])
    with pytest.raises(UserError, match="all 3 documents of source 'local' are empty; check --text_field") as e:
        prepare(source="local", out=str(tmp_path / "out"), path=src, num_proc=1)
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["d.jsonl"]


def test_manifest_records_versions_and_arguments(corpus):
    manifest = read_manifest(corpus)
    assert manifest["versions"]["lm"] and manifest["versions"]["tiktoken"] and manifest["versions"]["datasets"]
    arguments = manifest["arguments"]
    assert (arguments["source"], arguments["shard_tokens"], arguments["val_fraction"]) == ("local", 3000, 0.1)
    assert "num_proc" not in arguments  # it does not change the output


def test_num_proc_defaults_to_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert usable_cpus() == 1  # a one-CPU SLURM allocation on a many-core node
    assert prepare_module.prepare.__kwdefaults__["num_proc"] is None  # resolved by usable_cpus()
