"""Shared fixtures: tiny corpora written as jsonl and prepared with the real `prepare`."""

import gzip
import json
import random
from contextlib import contextmanager
from pathlib import Path

import pytest
import zstandard

from lm.data.prepare import ShardWriter, prepare

WORDS = "the of a model token data python loss step window shard source mixture café naïve 数据 🙂".split()


@contextmanager
def shard_writes_fail_at(call: int, error: Exception):
    """Inside the block, the `call`-th ShardWriter.add raises `error`: a prepare interrupted part-way."""
    real_add, calls = ShardWriter.add, []

    def failing_add(self, *args):
        calls.append(1)
        if len(calls) == call:
            raise error
        real_add(self, *args)

    ShardWriter.add = failing_add
    try:
        yield
    finally:
        ShardWriter.add = real_add


def make_docs(count: int, seed: int = 0, words: tuple[int, int] = (5, 60)) -> list[str]:
    """Deterministic pseudo-text documents; one of them contains the literal '<|endoftext|>'."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) for _ in range(count)]
    docs[count // 2] = "before <|endoftext|> after, not a separator"
    return docs


def write_jsonl(path, docs: list[str], field: str = "text") -> str:
    with open(path, "w") as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({field: doc, "id": i}) + "\n")
    return str(path)


def dclm_mirror(root: Path, docs: list[str]) -> Path:
    """DCLM-baseline's layout and schema: global-shard_XX_of_10/local-shard_Y_of_10/shard_*_processed.jsonl.zst."""
    files = [
        f"global-shard_0{g}_of_10/local-shard_{local}_of_10/shard_0000000{n}_processed.jsonl.zst"
        for g in (1, 2)
        for local in (0, 1)
        for n in (0,)
    ]
    per_file = -(-len(docs) // len(files))
    for i, name in enumerate(files):
        rows = [
            {
                "bff_contained_ngram_count_before_dedupe": 0,
                "language_id_whole_page_fasttext": {"en": 0.93},
                "metadata": {
                    "Content-Length": "2818",
                    "Content-Type": "application/http; msgtype=response",
                    "WARC-Date": "2013-05-18T05:48:59Z",
                    "WARC-Type": "conversion",
                },
                "previous_word_count": len(text.split()),
                "text": text,
                "url": f"http://example.com/{i}/{j}",
                "warcinfo": "robots: classic\r\nhostname: ip-10-60-113-42.ec2.internal",
                "fasttext_openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train_prob": 0.018,
            }
            for j, text in enumerate(docs[i * per_file : (i + 1) * per_file])
        ]
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return root


def c4_mirror(root: Path, docs: list[str]) -> Path:
    """allenai/c4's layout and schema: en/c4-train.NNNNN-of-01024.json.gz with text, timestamp, url."""
    (root / "en").mkdir(parents=True, exist_ok=True)
    half = len(docs) // 2
    for n, part in enumerate((docs[:half], docs[half:])):
        rows = [
            {"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://c4.example/{n}/{i}"}
            for i, t in enumerate(part)
        ]
        with gzip.open(root / "en" / f"c4-train.{n:05d}-of-01024.json.gz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return root


def prepared(root, name: str, docs: list[str], **kwargs) -> str:
    """Prepare `docs` into root/name (val_fraction 0.1, num_proc 1 unless given)."""
    src = write_jsonl(root / f"{name}.jsonl", docs)
    options = {"val_fraction": 0.1, "num_proc": 1, **kwargs}
    return str(prepare(source="local", out=str(root / name), path=src, **options))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> str:
    """One prepared source: 400 documents, small shards so windows straddle shard boundaries."""
    return prepared(tmp_path_factory.mktemp("corpus"), "tiny", make_docs(400), shard_tokens=3000)


@pytest.fixture(scope="session")
def blend(tmp_path_factory) -> dict[str, str]:
    """Four prepared sources named like the production blend."""
    root = tmp_path_factory.mktemp("blend")
    names = ["fineweb-edu", "dclm", "finemath", "cosmopedia"]
    return {name: prepared(root, name, make_docs(150, seed=i)) for i, name in enumerate(names)}
