"""A two-source mixture through `python -m lm fit`: per-source validation and per-source token counts are logged."""

import json

import pytest

from lm.cli import main
from tests.conftest import stdlib_docs, write_config
from tests.data.conftest import prepared


def test_mixture_logs_per_source_validation_and_tokens(tmp_path):
    docs = stdlib_docs()
    sources = {"prose": prepared(tmp_path, "prose", docs[::2]), "more": prepared(tmp_path, "more", docs[1::2])}
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "mix.yaml", sources, run, **{"data.weights": {"prose": 3.0, "more": 1.0}, "trainer.max_steps": 3}
    )
    main(["fit", "--config", config])

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = next(line for line in lines if "val/loss" in line)
    # Both sources contribute the same number of val tokens, so the token-weighted mixture is their mean.
    assert val["val/loss"] == pytest.approx((val["val/prose/loss"] + val["val/more/loss"]) / 2, rel=1e-5)
    assert {"val/prose/bpb", "val/more/ppl"} <= val.keys()
    train = [line for line in lines if "data/prose/tokens" in line][-1]
    assert train["data/prose/tokens"] + train["data/more/tokens"] == train["step"] * 4 * 32
    assert train["data/prose/weight"] == pytest.approx(0.75)
