import json
import math

import pytest

from lm.cli import main
from lm.plot import plot, read_metrics


def write_run(run_dir, steps=range(10, 101, 10), lr=1e-3) -> str:
    """A synthetic metrics.jsonl: train lines every 10 steps, a validation line every 50."""
    run_dir.mkdir()
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step in steps:
            tokens = step * 1024
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "tokens": tokens,
                        "lr": lr,
                        "train/loss": 10 / math.log(step + 1),
                        "perf/tokens_per_sec": 5000.0,
                    }
                )
                + "\n"
            )
            if step % 50 == 0:
                f.write(json.dumps({"step": step, "tokens": tokens, "val/loss": 11 / math.log(step + 1)}) + "\n")
    return str(run_dir)


def test_plot_writes_a_png_for_several_runs(tmp_path, capsys):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b", lr=3e-4)
    out = tmp_path / "plot.png"
    main(["plot", a, b, "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert f"wrote {out}" in capsys.readouterr().out


def test_replayed_steps_of_a_resumed_run_replace_the_old_ones(tmp_path):
    run = write_run(tmp_path / "run", steps=[10, 20, 30])
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 20, "tokens": 20 * 1024, "train/loss": 1.0}) + "\n")
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [10, 20] and rows[-1]["train/loss"] == 1.0


def test_missing_or_broken_metrics_are_one_line_errors(tmp_path):
    with pytest.raises(SystemExit, match="error: no metrics.jsonl in"):
        main(["plot", str(tmp_path)])
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "tokens": 1}\n{broken\n')
    with pytest.raises(SystemExit, match="line 2: not JSON"):
        main(["plot", str(tmp_path)])


def test_an_experiments_seeds_share_their_variants_colour_and_legend_entry(tmp_path):
    """An experiment's runs are `<variant>/seed<k>`: the legend names the variant once, not "seed0" per run."""
    labels = ["stream/seed0", "stream/seed1", "aligned/seed0", "aligned/seed1"]
    for label in labels:
        (tmp_path / label).parent.mkdir(exist_ok=True)
    runs = [write_run(tmp_path / label) for label in labels]
    figure = plot(runs, out=str(tmp_path / "plot.png"), labels=labels)
    val = figure.axes[1]
    assert [text.get_text() for text in val.get_legend().get_texts()] == ["stream", "aligned"]
    stream0, stream1, aligned0, _ = val.get_lines()
    assert stream0.get_color() == stream1.get_color() != aligned0.get_color()
    assert stream0.get_linestyle() != stream1.get_linestyle()
