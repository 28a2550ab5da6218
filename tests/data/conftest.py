"""Shared fixtures: tiny corpora written as jsonl and prepared with the real `prepare`."""

import json
import random

import pytest

from lm.data.prepare import prepare

WORDS = "the of a model token data python loss step window shard source mixture café naïve 数据 🙂".split()


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
