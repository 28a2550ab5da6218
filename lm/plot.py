"""`python -m lm plot runs/a runs/b`: compare runs from their metrics.jsonl, in one PNG.

Four panels against tokens seen (the budget that is comparable across batch sizes): train loss, val loss,
learning rate and throughput. matplotlib is an optional dependency (`pip install -e ".[plot]"`), imported
only here.
"""

import json
from pathlib import Path

from jsonargparse import ArgumentParser

from lm.errors import UserError

PANELS = [
    ("train/loss", "train loss"),
    ("val/loss", "val loss"),
    ("lr", "learning rate"),
    ("perf/tokens_per_sec", "tokens / s"),
]


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The lines of a run's metrics.jsonl; after a resume, replayed steps replace the earlier ones."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"no metrics.jsonl in {run_dir} (is it a run directory of a training run?)")
    rows = []
    with open(path) as f:
        for line_number, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}, line {line_number}: not JSON ({err})") from None
            if rows and row["step"] < rows[-1]["step"]:  # a resumed run replays the steps after its checkpoint
                rows = [r for r in rows if r["step"] < row["step"]]
            rows.append(row)
    return rows


def plot(runs: list[str], out: str = "plot.png", labels: list[str] | None = None):
    """Plot train loss, val loss, learning rate and throughput against tokens for one or more runs.

    Args:
        runs: Run directories (each holding a metrics.jsonl).
        out: Where to write the PNG.
        labels: The legend's name of each run (default: its directory's name). Runs labelled `<variant>/<seed>`, as
            an experiment's seeds are, share their variant's colour and legend entry, one line style per seed.

    Returns the (closed) matplotlib figure.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')") from None
    labels = labels or [Path(run).resolve().name for run in runs]
    variants = list(dict.fromkeys(label.split("/")[0] for label in labels))
    colours = matplotlib.colormaps["tab10" if len(variants) <= 10 else "tab20"]
    seeds_drawn = dict.fromkeys(variants, 0)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for run, label in zip(runs, labels):
        variant = label.split("/")[0]
        style = {
            "color": colours(variants.index(variant)),
            "linestyle": ["-", "--", ":", "-."][seeds_drawn[variant] % 4],
            "label": variant if seeds_drawn[variant] == 0 else None,
        }
        seeds_drawn[variant] += 1
        rows = read_metrics(run)
        for ax, (key, _) in zip(axes.flat, PANELS):
            points = [(row["tokens"], row[key]) for row in rows if key in row]
            if points:
                ax.plot(*zip(*points), **style, marker="o" if key == "val/loss" else None)
    for ax, (_, title) in zip(axes.flat, PANELS):
        ax.set(title=title, xlabel="tokens")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize="small", title="line style: seed" if len(labels) > len(variants) else None)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"wrote {out}")
    return fig


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m lm plot", description=plot.__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="Run directories (each holding a metrics.jsonl).")
    parser.add_function_arguments(plot, skip={"runs"})
    args = parser.parse_args(argv)
    plot(args.runs, args.out)
