"""`python -m lm experiment run|report <name>`: an experiment is a folder of configs; running it is a loop over the
lm commands a user would type.

`experiments/<name>/experiment.yaml` says what to run:

    question: Does the modern block beat the classic one at equal parameters?  # the report's heading
    prepare:                   # `python -m lm prepare` arguments; skipped when <out>/manifest.json exists
      - {source: python-docs, out: data/python-docs, val_fraction: 0.02}
    configs: [configs/demo.yaml]                  # shared by every variant, in this order
    variants:                                     # name -> config files and/or flags, after the shared configs
      classic: [experiments/x/classic.yaml]
      modern: ["--model.config.mlp_hidden=356"]
    init_from: {modern: runs/base/checkpoints/best.ckpt}  # optional: a path, or another (earlier) variant's name
    seeds: [0, 1]             # optional: each variant runs once per seed (--seed_everything), into <variant>/seed<k>
    grid:                     # optional: each variant (or the grid alone) crossed with every combination of these
      model.config.depth: [2, 4]      # keys' values, named after them: modern-depth2-max_flops1e+13, ...
      model.max_flops: [1.0e13, 3.0e13]
    scaling: {budget: model.max_flops, predict: [1.0e15]}  # optional: fit a scaling law to the grid (lm/scaling.py)
    baseline: classic         # optional: the reference of the report's comparison (see below)
    compare: {modern: classic}  # optional: another reference for some variants (default: the baseline; itself: none)
    hellaswag: data/hellaswag_val.jsonl           # optional: scored on each best.ckpt and on each init_from base
    eval:                                         # optional: `python -m lm eval` flags, run on the same checkpoints
      tasks: [hellaswag, arc_easy]                #   into runs/<name>/<variant>/eval/{best,base}.json
      limit: 1000

Design choices:
- Each step is a `python -m lm ...` subprocess, printed before it runs: a variant is exactly
  `python -m lm fit --config ... --trainer.default_root_dir runs/<name>/<variant>`, rerunnable by hand, and the
  runner adds no training code of its own.
- A variant whose run_summary.json says finished is skipped (delete its run directory to redo it); an
  interrupted one continues from its last.ckpt.
- Paths are relative to the working directory (the repository root), like every lm command; `--runs_root`
  puts the runs elsewhere (a scratch disk, a test's tmp directory).
- The report (results.md and results.png in the experiment folder) reads only run_summary.json,
  metrics.jsonl, hellaswag*.json and eval/*.json of each run, so it can be rebuilt at any time, also while runs go on.
- Besides a row per run, the report has a row per variant: its best val loss as mean ± standard deviation over
  seeds (a variant with one seed is marked so), and with a `baseline` the tokens each variant needs to reach the
  baseline's final val loss (mean over its seeds), that as a ratio of the baseline's own tokens, and the difference
  from its reference with Welch's t-test and the paired t-test over seeds (lm/statistics.py). Seeds change the
  initialisation only (`--seed_everything`); the data order is the config's `data.seed`.
"""

import functools
import itertools
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from jsonargparse import CLI

from lm import scaling
from lm.errors import UserError
from lm.eval.results import mean_accuracy, mean_accuracy_stderr, task_accuracies
from lm.plot import plot, read_metrics
from lm.provenance import CHECKOUT, git_file, git_object, git_state, newest_commit
from lm.statistics import mean_and_spread, paired_p_value, tokens_to_target, welch_p_value

EXPERIMENTS = Path("experiments")
KEYS = {
    *("question", "prepare", "configs", "variants", "init_from", "hellaswag", "eval"),
    *("seeds", "baseline", "compare", "grid", "scaling"),
}
# experiment.yaml's keys that only add runs or shape the report: changing them leaves finished runs as they were.
GROWTH_KEYS = {"variants", "grid", "seeds", "question", "baseline", "compare", "scaling"}
# Best val loss may differ by this much (nats) between a rerun and the committed table in another environment
# (threads, versions, device); see experiments/README.md for the differences measured.
VERIFY_TOLERANCE = 0.005


def load_experiment(name: str) -> dict:
    """experiments/<name>/experiment.yaml, checked before any compute is spent."""
    path = EXPERIMENTS / name / "experiment.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in EXPERIMENTS.glob("*/experiment.yaml"))
        raise UserError(f"no experiment {name!r}: {path} does not exist (known: {', '.join(known) or 'none'})")
    spec = yaml.safe_load(path.read_text()) or {}
    if set(spec) - KEYS:
        raise UserError(f"{path}: unknown keys {sorted(set(spec) - KEYS)} (known: {sorted(KEYS)})")
    if spec.get("grid") is not None:
        spec["variants"] = grid_variants(spec.get("variants") or {"": []}, spec["grid"], path)
    if not spec.get("variants"):
        raise UserError(f"{path}: no variants (list them under variants:, or declare a grid:)")
    if "eval" in spec and not (isinstance(spec["eval"], dict) and spec["eval"].get("tasks")):
        raise UserError(f"{path}: eval needs tasks (e.g. eval: {{tasks: [hellaswag, arc_easy]}})")
    variants = list(spec["variants"])
    seeds = spec.get("seeds")
    if seeds is not None and (not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) < len(seeds)):
        raise UserError(f"{path}: seeds must be a list of distinct integers (e.g. seeds: [0, 1]), got {seeds!r}")
    if seeds and spec.get("init_from"):
        raise UserError(f"{path}: seeds and init_from together are not supported: list a variant per seed instead")
    for key, reference in [("baseline", spec.get("baseline")), *spec.get("compare", {}).items()]:
        if key != "baseline" and key not in variants:
            raise UserError(f"{path}: compare names {key!r}, which is not a variant")
        if reference is not None and reference not in variants:
            raise UserError(f"{path}: {key} is compared with {reference!r}, which is not a variant")
    for variant, base in spec.get("init_from", {}).items():
        if variant not in variants:
            raise UserError(f"{path}: init_from names {variant!r}, which is not a variant")
        if base in variants and variants.index(base) >= variants.index(variant):
            raise UserError(f"{path}: variant {variant!r} starts from {base!r}, which must be listed before it")
    return spec


def grid_variants(variants: dict, grid: dict, path: Path) -> dict[str, list[str]]:
    """Every variant crossed with every combination of the grid's values, named after them:
    {"muon": [...]} × {"model.config.depth": [2, 4]} -> {"muon-depth2": [..., "--model.config.depth=2"], ...}."""
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise UserError(f"{path}: grid maps config keys to lists of values (e.g. grid: {{model.config.depth: [2, 4]}})")
    flag = lambda v: str(v).lower() if isinstance(v, bool) else str(v)  # a float's shortest exact form
    short = lambda v: f"{v:g}" if isinstance(v, float) else flag(v)  # in names: 6 significant digits
    crossed = {}
    for variant, args in variants.items():
        for values in itertools.product(*grid.values()):
            name = "-".join([variant] * bool(variant) + [f"{k.split('.')[-1]}{short(v)}" for k, v in zip(grid, values)])
            if name in crossed:
                raise UserError(
                    f"{path}: two of the grid's combinations are both named {name} (names keep 6 significant digits "
                    "of a float): make the values differ within them"
                )
            crossed[name] = [*args, *(f"--{key}={flag(v)}" for key, v in zip(grid, values))]
    return crossed


def flags(arguments: dict) -> list[str]:
    """{out: x, streaming: true} -> ["--out", "x", "--streaming", "true"]."""
    args = []
    for key, value in arguments.items():
        args += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def lm_command(*args: str, capture: bool = False) -> str:
    """Run `python -m lm <args>` in this Python; its output streams through (stdout returned when captured)."""
    command = shlex.join(["python", "-m", "lm", *args])
    print(f"$ {command}", flush=True)
    result = subprocess.run([sys.executable, "-m", "lm", *args], stdout=subprocess.PIPE if capture else None, text=True)
    if result.returncode:
        raise UserError(f"`{command}` failed (exit status {result.returncode})")
    return result.stdout


def base_checkpoint(spec: dict, variant: str, runs: Path) -> str | None:
    """What the variant starts from: another variant's best checkpoint, a path, or nothing (from scratch)."""
    base = spec.get("init_from", {}).get(variant)
    return str(runs / base / "checkpoints" / "best.ckpt") if base in spec["variants"] else base


def runs_of(spec: dict, variants: list[str] | None = None) -> list[tuple[str, str, int | None]]:
    """(run name, variant, seed) of every run, in experiment order: a variant's name, or <variant>/seed<k> when the
    experiment has `seeds` (seed None: the configs' own)."""
    seeds = spec.get("seeds") or [None]
    return [
        (variant if seed is None else f"{variant}/seed{seed}", variant, seed)
        for variant in spec["variants"]
        if variants is None or variant in variants
        for seed in seeds
    ]


def fit_args(spec: dict, variant: str, run_dir: Path, base: str | None, seed: int | None = None) -> list[str]:
    """`python -m lm fit` arguments of a run: the shared configs, the variant's configs and flags, its seed, its base,
    its run directory."""
    args = ["fit"]
    for item in [*spec.get("configs", []), *spec["variants"][variant]]:
        args += [item] if item.startswith("--") else ["--config", item]
    if seed is not None:
        args += [f"--seed_everything={seed}"]
    if base:
        args += ["--model.init_from", base]
    args += ["--trainer.default_root_dir", str(run_dir)]
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        args += ["--ckpt_path", "last"]  # interrupted: continue it exactly
    elif run_dir.exists():
        args += ["--overwrite", "true"]  # stopped before its first checkpoint: nothing to continue
    return args


def run_inputs(name: str, variant: str, commit: str | None, repo: Path = CHECKOUT) -> dict | None:
    """What a run of `variant` reads from the repository at `commit`: the experiment's settings but those that only
    add runs or shape the report (GROWTH_KEYS), the variant's arguments, and git's hashes of lm/ and of each config
    file they name. None where git cannot tell all of it: no checkout, an unknown commit, a variant the experiment
    did not have then, a config file git does not track."""
    path = EXPERIMENTS / name / "experiment.yaml"
    try:
        spec = yaml.safe_load(git_file(commit, path.as_posix(), repo) or "null")
        if spec.get("grid") is not None:
            spec["variants"] = grid_variants(spec.get("variants") or {"": []}, spec["grid"], path)
        arguments = list(spec["variants"][variant])
        files = ["lm", *(item for item in [*(spec.get("configs") or []), *arguments] if not item.startswith("--"))]
    except (yaml.YAMLError, AttributeError, KeyError, TypeError, UserError):  # not an experiment lm can read there
        return None
    hashes = {file: git_object(commit, file, repo) for file in files}
    if None in hashes.values():
        return None
    return {"settings": {k: v for k, v in spec.items() if k not in GROWTH_KEYS}, "arguments": arguments, **hashes}


def reproducing_commit(name: str, runs: dict[str, tuple[str, str | None]], repo: Path = CHECKOUT) -> str | None:
    """The commit that reproduces every run of a table ({run: (variant, commit)}): the runs' one commit; where they
    ran at several, the newest, if each run's inputs (run_inputs) were the same there as at its own commit: a sweep
    grows by committing variants without rerunning what finished. None otherwise."""
    commits = {commit for _, commit in runs.values()}
    if len(commits) == 1:
        return next(iter(commits))
    newest = newest_commit(commits - {None}, repo)
    inputs = functools.cache(lambda variant, commit: run_inputs(name, variant, commit, repo))
    same = lambda variant, commit: (
        inputs(variant, commit) is not None and inputs(variant, commit) == inputs(variant, newest)
    )
    return newest if None not in commits and all(same(*run) for run in runs.values()) else None


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def is_finished(run_dir: Path) -> bool:
    return bool((read_json(run_dir / "run_summary.json") or {}).get("finished"))


def score_hellaswag(data: str, checkpoint: str, out: Path) -> None:
    """HellaSwag of one checkpoint into out (JSON), unless out exists."""
    if not out.is_file():
        result = lm_command("hellaswag", "--ckpt_path", checkpoint, "--data", data, capture=True)
        out.write_text(result.strip().splitlines()[-1] + "\n")  # the command's last line is its result


def evaluate_suite(settings: dict, checkpoint: str, out: Path) -> None:
    """`python -m lm eval` of one checkpoint into out (JSON), unless out exists."""
    if not out.is_file():
        tasks = settings["tasks"]
        arguments = {**settings, "tasks": tasks if isinstance(tasks, str) else ",".join(tasks), "out": out}
        lm_command("eval", "--ckpt_path", checkpoint, *flags(arguments))


def check_inputs(spec: dict) -> None:
    """One-line errors for missing inputs, before any compute is spent."""
    hellaswag = spec.get("hellaswag")
    if hellaswag and not Path(hellaswag).is_file():
        raise UserError(f"HellaSwag data {hellaswag} not found: see docs/evaluation.md for where to get it")
    if spec.get("eval"):
        from lm.eval.suite import import_harness

        import_harness()  # lm-evaluation-harness missing: one line now, not after training
    for variant, base in spec.get("init_from", {}).items():
        if base not in spec["variants"] and not Path(base).exists():
            raise UserError(f"variant {variant!r} starts from {base}, which does not exist: train or fetch it first")


def prepare_data(spec: dict) -> None:
    for arguments in spec.get("prepare", []):
        if (Path(arguments["out"]) / "manifest.json").is_file():
            print(f"{arguments['out']}: already prepared")
        else:
            lm_command("prepare", *flags(arguments))


def run(name: str, runs_root: str = "runs", allow_mixed_commits: bool = False) -> None:
    """Prepare the data, train each variant not yet finished, score HellaSwag if asked, then write the report.

    Args:
        name: The experiment: a folder experiments/<name>/ holding experiment.yaml.
        runs_root: Variants run in <runs_root>/<name>/<variant>/.
        allow_mixed_commits: Train from a checkout with uncommitted changes, and report variants that ran different
            code or configs (each row of the table is then marked).
    """
    spec = load_experiment(name)
    runs = Path(runs_root, name)
    check_inputs(spec)
    state = git_state()
    if state["git_dirty"] and not allow_mixed_commits:
        raise UserError(
            "the lm checkout has uncommitted changes: a report's numbers must come from one clean commit, so commit "
            "first (or pass --allow_mixed_commits true to run anyway and mark the table)"
        )
    prepare_data(spec)
    for run_name, variant, seed in runs_of(spec):
        run_dir, base = runs / run_name, base_checkpoint(spec, variant, runs)
        if is_finished(run_dir):
            print(f"{run_dir}: finished, skipped (delete it to run it again)")
        else:
            lm_command(*fit_args(spec, variant, run_dir, base, seed))
        if spec.get("hellaswag"):
            score_hellaswag(spec["hellaswag"], str(run_dir / "checkpoints" / "best.ckpt"), run_dir / "hellaswag.json")
            if base:
                score_hellaswag(spec["hellaswag"], base, run_dir / "hellaswag_base.json")
        if spec.get("eval"):
            evaluate_suite(spec["eval"], str(run_dir / "checkpoints" / "best.ckpt"), run_dir / "eval" / "best.json")
            if base:
                evaluate_suite(spec["eval"], base, run_dir / "eval" / "base.json")
    report(name, runs_root, allow_mixed_commits)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 2 * 3600 else f"{seconds / 3600:.1f} h"


def commit(summary: dict) -> str:
    sha = summary.get("git_commit")
    return f"{sha[:8]}{'+dirty' if summary.get('git_dirty') else ''}" if sha else "?"


def environment(summary: dict) -> dict:
    """What decides a run's numbers besides its config and commit (see lm.provenance.environment)."""
    return {key: summary.get(key) for key in ("versions", "device", "threads", "deterministic")}


def describe(env: dict) -> str:
    versions = ", ".join(f"{name} {number}" for name, number in (env["versions"] or {}).items())
    deterministic = "on" if env["deterministic"] else "off"
    threads = f"{env['threads']} thread{'' if env['threads'] == 1 else 's'}"
    return f"{versions} on {env['device']}, {threads}, deterministic algorithms {deterministic}"


def result_row(variant: str, summary: dict | None, run_dir: Path, with_hellaswag: bool, with_base: bool) -> list[str]:
    """One table row from a run's run_summary.json (and hellaswag*.json)."""
    if summary is None:
        return [variant, "not run"]
    best = summary.get("best_val") or {}
    tokens_per_sec = summary.get("mean_tokens_per_sec")
    row = [
        variant if summary["finished"] else f"{variant} (unfinished)",
        f"{summary['params']:,}",
        f"{summary['tokens_seen']:,}",
        f"{best['val/loss']:.4f}" if best else "-",
        f"{best['val/bpb']:.4f}" if best.get("val/bpb") is not None else "-",
        f"{best['step']}" if best else "-",
        f"{tokens_per_sec:,.0f}" if tokens_per_sec else "-",
        duration(summary["wall_time_s"]),
        commit(summary),
    ]
    for wanted, file in ((with_hellaswag, "hellaswag.json"), (with_base, "hellaswag_base.json")):
        if wanted:
            scores = read_json(run_dir / file)
            row.append(f"{scores['acc_norm']:.2%} (n={scores['n']})" if scores else "-")
    return row


def suite_table(spec: dict, runs: Path) -> list[str]:
    """Report lines: each variant's (and base's) accuracy per harness task ± its standard error, and their mean."""
    evaluated = []
    for run_name, _, _ in runs_of(spec):
        for label, file in ((run_name, "best.json"), (f"{run_name}'s base", "base.json")):
            results = read_json(runs / run_name / "eval" / file)
            if results:
                evaluated.append((label, results))
    if not evaluated:
        return []
    tasks = list(dict.fromkeys(task for _, results in evaluated for task in task_accuracies(results)))
    percent = lambda value, stderr: f"{value:.2%}" + (f" ± {stderr:.2%}" if stderr is not None else "")
    rows = []
    for label, results in evaluated:
        scores = task_accuracies(results)
        row = [label] + [percent(*scores[task][1:]) if task in scores else "-" for task in tasks]
        mean = mean_accuracy(results)
        rows.append(row + [percent(mean, mean_accuracy_stderr(results)) if mean is not None else "-"])
    names = {
        task: f"{task} ({score[0]})" for _, results in evaluated for task, score in task_accuracies(results).items()
    }
    table = markdown_table(["model", *[names[task] for task in tasks], "mean"], rows)
    return [
        "## Downstream suite (lm-evaluation-harness)",
        "",
        table,
        "",
        "± is the standard error the harness reports. A difference between two rows is real (≈ 95%) when it exceeds "
        "2·sqrt(se₁² + se₂²); see docs/evaluation.md.",
        "",
    ]


def final_val_loss(run_dir: Path) -> float | None:
    losses = [row["val/loss"] for row in read_metrics(run_dir) if "val/loss" in row]
    return losses[-1] if losses else None


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    return [(row["tokens"], row["val/loss"]) for row in read_metrics(run_dir) if "val/loss" in row]


def seed_table(spec: dict, runs: Path, ran: dict[str, dict]) -> list[str]:
    """Report lines: a row per variant over its finished seeds (mean ± standard deviation of the best val loss), the
    tokens to reach the baseline's final val loss, and the difference from the variant's reference with Welch's
    t-test and the paired t-test over common seeds (lm/statistics.py). The reference is the one `compare` names,
    else the baseline, else the variant with the lowest mean: every row of several seeds gets a test."""
    finished = {}  # variant -> [(run name, seed, best val loss)]
    for run_name, variant, seed in runs_of(spec):
        summary = ran.get(run_name)
        if summary and summary["finished"] and summary.get("best_val"):
            finished.setdefault(variant, []).append((run_name, seed, summary["best_val"]["val/loss"]))
    if not finished:
        return []
    baseline, compare = spec.get("baseline"), spec.get("compare", {})
    target = None
    if baseline in finished:
        target = mean_and_spread([final_val_loss(runs / run_name) for run_name, _, _ in finished[baseline]])[0]
    # without a baseline, each row is tested against the lowest mean: "is this one worse than the best?"; not in a
    # ladder, whose rows are other budgets (its comparison is the scaling fit)
    lowest_mean = lambda variant: mean_and_spread([loss for *_, loss in finished[variant]])[0]
    best = None if spec.get("scaling") else min(finished, key=lowest_mean)
    reached = {}  # variant -> tokens to target of each seed (None: never reached it)
    for variant, results in finished.items():
        if variant == baseline:  # the target is where the baseline ends: its budget
            reached[variant] = [ran[run_name]["tokens_seen"] for run_name, _, _ in results]
        elif target is not None:
            reached[variant] = [tokens_to_target(val_curve(runs / run_name), target) for run_name, _, _ in results]
    header = ["variant", "seeds", "best val loss (mean ± sd)", "per seed"]
    if target is not None:
        header += [f"tokens to {target:.4f}", "× fewer tokens than the baseline"]
    header += ["Δ vs reference (p: Welch; paired)"]
    rows = []
    for variant in spec["variants"]:
        if variant not in finished:
            rows.append([variant, "0", "not run", *["-"] * (len(header) - 3)])
            continue
        losses = [loss for _, _, loss in finished[variant]]
        mean, spread = mean_and_spread(losses)
        row = [variant, f"{len(losses)}" + (" (one seed: no spread)" if spread is None else "")]
        row += [
            f"{mean:.4f}" + (f" ± {spread:.4f}" if spread is not None else ""),
            ", ".join(f"{x:.4f}" for x in losses),
        ]
        if target is not None:
            tokens = [t for t in reached[variant] if t is not None]
            if len(tokens) == len(reached[variant]):
                mean_tokens = mean_and_spread(tokens)[0]
                row += [f"{mean_tokens:,.0f}", f"{mean_and_spread(reached[baseline])[0] / mean_tokens:.2f}×"]
            else:
                row += [f"not reached ({len(tokens)} of {len(reached[variant])} seeds did)", "-"]
        reference = compare.get(variant, baseline or best)
        if reference in finished and reference != variant:
            other = [loss for _, _, loss in finished[reference]]
            p_value = welch_p_value(losses, other)
            paired = paired_p_value(*({seed: loss for _, seed, loss in finished[v]} for v in (variant, reference)))
            difference = mean - mean_and_spread(other)[0]
            if p_value is not None:
                tests = f"p = {p_value:.3f}; " + (f"{paired:.3f}" if paired is not None else "-")
            else:
                tests = "no test: " + ("one seed" if min(len(losses), len(other)) < 2 else "no spread")
            row += [f"{difference:+.4f} vs {reference} ({tests})"]
        else:
            row += ["the reference" if reference == variant and not baseline else "-"]
        rows.append(row)
    lines = ["## Over seeds", "", markdown_table(header, rows), ""]
    notes = "sd: sample standard deviation over the variant's finished seeds. Δ: difference of mean best val loss from"
    notes += " the reference (the one `compare` names, else the baseline, else, but in a ladder, the variant with the"
    notes += " lowest mean; one compared with itself is a reference, untested);"
    notes += " p: two-sided Welch's t-test over seeds;"
    notes += " then the two-sided paired t-test over the seeds both ran (seed k: the same initial weights where the"
    notes += " shapes agree, the same data order always)."
    if target is not None:
        notes += (
            f" Target: {baseline}'s final val loss (mean over its seeds); tokens to target: the first validation at or "
            f"below it (mean over seeds; the resolution is the validation interval), for {baseline} its budget; "
            f"× fewer: {baseline}'s budget over the variant's tokens to target."
        )
    return [*lines, notes, ""]


def config_value(summary: dict, key: str):
    """A dotted key (model.max_flops) of the run's resolved config, as run_summary.json records it."""
    value = summary["config"]
    for part in key.split("."):
        value = value[part]
    return value


def ladder_points(spec: dict, runs: Path, ran: dict[str, dict]) -> list[scaling.Point]:
    """A scaling point per finished run: its budget (the `scaling.budget` key), non-embedding parameters, tokens and
    final val loss; a run that stopped within its warmup is marked (its loss says nothing about its size)."""
    points = []
    for run_name, summary in ran.items():
        loss = final_val_loss(runs / run_name)
        if summary["finished"] and loss is not None:
            warmup = config_value(summary, spec["scaling"].get("warmup", "model.optim.warmup_steps"))
            points.append(
                scaling.Point(
                    budget=float(config_value(summary, spec["scaling"]["budget"])),
                    params=summary["non_embedding_params"],
                    tokens=summary["tokens_seen"],
                    loss=loss,
                    warmup_only=summary["step"] <= warmup,
                )
            )
    return points


def scaling_section(spec: dict, runs: Path, ran: dict[str, dict], out: Path) -> list[str]:
    """Report lines of a ladder: the IsoFLOP fit and its prediction for the `scaling.predict` budgets, the parametric
    fit with bootstrap intervals, the warnings of lm.scaling; scaling.csv and scaling.png beside the report."""
    points = ladder_points(spec, runs, ran)
    if not points:
        return []
    scaling.write_csv(points, out / "scaling.csv")
    used = scaling.usable(points)
    lines = ["## Scaling law", ""]
    lines += [
        f"{len(used)} runs fitted ({len(points) - len(used)} stopped within their warmup, left out); every point is"
        " in scaling.csv. N: non-embedding parameters; D: tokens; C: FLOPs by the model's own count.",
        "",
    ]
    lines += [f"- ⚠ {warning}" for warning in scaling.span_warnings(used)]
    try:
        iso = scaling.fit_isoflop(used)
    except ValueError as err:
        iso = None
        lines += [f"- IsoFLOP fit: not possible ({err})."]
    if iso:
        lines += [
            f"- **IsoFLOP** (parabola per budget): N* = {iso.params.coefficient:.3g} · C^({iso.params.exponent:.3f} ± "
            f"{iso.params.exponent_se:.3f}), D* = {iso.tokens.coefficient:.3g} · C^({iso.tokens.exponent:.3f} ± "
            f"{iso.tokens.exponent_se:.3f}) (± standard error of the slope)",
        ]
        lines += [f"  - ⚠ {warning}" for warning in scaling.isoflop_warnings(iso)]
        for flops in map(float, spec["scaling"].get("predict", [])):
            (n, d), n_range, d_range = iso.optimal(flops), iso.params.interval(flops), iso.tokens.interval(flops)
            lines += [
                f"  - for C = {flops:.3g} FLOPs: N* ≈ {n:,.0f} non-embedding parameters, D* ≈ {d:,.0f} tokens; "
                + (
                    f"95% confidence intervals of the power laws (Student's t, {iso.params.budgets - 2} degrees of "
                    f"freedom): N* {n_range[0]:.3g}–{n_range[1]:.3g}, D* {d_range[0]:.3g}–{d_range[1]:.3g}"
                    if n_range
                    else "no interval (a line through 2 budgets' optima has no residual to estimate one from)"
                )
                + (" (from unbracketed optima: not a measurement)" if iso.unbracketed else "")
            ]
    if len(used) >= 5:
        fit = scaling.fit_parametric(used, bootstrap=spec["scaling"].get("bootstrap", 100))
        interval = lambda name: "[{:.3g}, {:.3g}]".format(*fit.intervals[name]) if fit.intervals else "-"
        lines += [
            f"- **Parametric** L(N, D) = E + A/N^α + B/D^β: E = {fit.E:.3f} {interval('E')}, A = {fit.A:.3g} "
            f"{interval('A')}, B = {fit.B:.3g} {interval('B')}, α = {fit.alpha:.3f} {interval('alpha')}, "
            f"β = {fit.beta:.3f} {interval('beta')} (95% bootstrap intervals)"
        ]
        lines += [f"  - ⚠ {warning}" for warning in scaling.parametric_warnings(fit, used)]
    else:  # five constants: fewer points than that would fit anything
        lines += [f"- Parametric fit: not possible ({len(used)} usable runs; L(N, D) has 5 constants)."]
    scaling.plot_ladder(used, iso, out / "scaling.png")
    return [*lines, "", "![IsoFLOP curves and the compute-optimal frontier](scaling.png)", ""]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def report(name: str, runs_root: str = "runs", allow_mixed_commits: bool = False) -> None:
    """Write experiments/<name>/results.md (a table of the variants), results.png (curves against tokens) and
    results.json (what `experiment verify` compares a rerun with).

    Args:
        name: The experiment: a folder experiments/<name>/ holding experiment.yaml.
        runs_root: Variants ran in <runs_root>/<name>/<variant>/.
        allow_mixed_commits: Write the table even if no one commit reproduces its variants (reproducing_commit) or
            they ran from a checkout with uncommitted changes; every row is then marked.
    """
    spec = load_experiment(name)
    runs, out = Path(runs_root, name), EXPERIMENTS / name
    names = [run_name for run_name, _, _ in runs_of(spec)]
    summaries = {run_name: read_json(runs / run_name / "run_summary.json") for run_name in names}
    ran = {run_name: summary for run_name, summary in summaries.items() if summary}
    commits = {variant: commit(summary) for variant, summary in ran.items()}
    variant_of = {run_name: variant for run_name, variant, _ in runs_of(spec)}
    reproduced_at = reproducing_commit(name, {run: (variant_of[run], s.get("git_commit")) for run, s in ran.items()})
    dirty = any(summary.get("git_dirty") is not False for summary in ran.values())
    mixed = dirty or (bool(ran) and reproduced_at is None)
    if mixed and not allow_mixed_commits:
        raise UserError(
            f"{runs}: the variants did not all run the same code and configs at clean commits ("
            + ", ".join(f"{variant} at {sha}" for variant, sha in commits.items())
            + f"): rerun them at a clean commit (delete {runs}, then python -m lm experiment run {name}), or pass "
            "--allow_mixed_commits true to write the table with every row marked"
        )
    with_hellaswag, with_base = bool(spec.get("hellaswag")), bool(spec.get("hellaswag") and spec.get("init_from"))
    header = ["variant", "params", "tokens", "best val loss", "val bpb", "at step", "tokens/s", "wall time", "commit"]
    header += ["HellaSwag acc_norm"] * with_hellaswag + ["HellaSwag of its base"] * with_base
    rows = [result_row(v, summaries[v], runs / v, with_hellaswag, with_base) for v in names]
    if mixed:
        rows = [[f"{row[0]} ⚠", *row[1:]] for row in rows]
    lines = [f"# {name}", "", spec.get("question", "").strip(), ""]
    if mixed:
        lines += [
            "**⚠ Not one clean commit**: no one commit reproduces these variants (they ran different code or configs) "
            "or they ran from a checkout with uncommitted changes (see the commit column), so their numbers need not "
            "come back when rerun.",
            "",
        ]
    lines += [markdown_table(header, rows), ""]
    lines += seed_table(spec, runs, ran)
    if spec.get("scaling"):
        lines += scaling_section(spec, runs, ran, out)
    lines += suite_table(spec, runs)
    environments = {json.dumps(environment(summary)) for summary in ran.values()}
    shas = sorted(set(commits.values()))
    if mixed or not shas:
        at = "the commits above"
    else:
        at = (
            f"commit {shas[0]}"
            if len(shas) == 1
            else f"commits {', '.join(shas)} (each run reproduces at {reproduced_at[:8]})"
        )
    lines += [f"Ran at {at} with {describe(json.loads(env))}." for env in sorted(environments)]
    plotted = [run_name for run_name in names if (runs / run_name / "metrics.jsonl").is_file()]
    if plotted:
        plot([str(runs / run_name) for run_name in plotted], out=str(out / "results.png"), labels=plotted)
        lines += ["", "![train loss, val loss, learning rate and throughput against tokens](results.png)"]
    lines += [
        "",
        f"Written by `python -m lm experiment report {name}` from {runs}/*/run_summary.json; "
        f"`python -m lm experiment verify {name}` reruns the variants and compares them with this table.",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    results = {
        variant: {
            "best_val_loss": (summary.get("best_val") or {}).get("val/loss"),
            "best_step": (summary.get("best_val") or {}).get("step"),
            "tokens_seen": summary["tokens_seen"],
            "finished": summary["finished"],
            "git_commit": summary.get("git_commit"),
            "git_dirty": summary.get("git_dirty"),
            **environment(summary),
        }
        for variant, summary in ran.items()
    }
    (out / "results.json").write_text(json.dumps({"experiment": name, "variants": results}, indent=2) + "\n")
    print(f"wrote {out / 'results.md'} and results.json")


def verify(
    name: str, variant: list[str] | None = None, runs_root: str = "runs/verify", tolerance: float = VERIFY_TOLERANCE
) -> None:
    """Rerun variants of an experiment into a scratch directory and compare their best val loss with the committed
    table (experiments/<name>/results.json).

    Where the rerun's environment (device, thread count, deterministic setting, python/torch/lightning/lm versions)
    is the committed one's, the loss must match exactly; elsewhere it may differ by `tolerance`. Exits non-zero
    when a variant is off.

    Args:
        name: The experiment: a folder experiments/<name>/ holding experiment.yaml and results.json.
        variant: Variants to rerun (default: all): `--variant a`, `--variant a,b` or `--variant a --variant b`; a
            variant that starts from another variant reruns that one too.
        runs_root: Scratch runs go to <runs_root>/<name>/<variant>/, replaced on every verify.
        tolerance: Largest difference of best val loss (nats) accepted in another environment.
    """
    spec = load_experiment(name)
    path = EXPERIMENTS / name / "results.json"
    committed = (read_json(path) or {}).get("variants")
    if not committed:
        raise UserError(f"{path} not found: there is no committed table to verify (python -m lm experiment run {name})")
    committed_variants = list(dict.fromkeys(v for run_name, v, _ in runs_of(spec) if run_name in committed))
    chosen = variant or committed_variants
    for wanted in chosen:
        if wanted not in committed_variants:
            raise UserError(f"{path} has no variant {wanted!r} (it has: {', '.join(committed_variants)})")
    bases = {spec.get("init_from", {}).get(v) for v in chosen} & set(spec["variants"])
    chosen_runs = [run for run in runs_of(spec, list(set(chosen) | bases)) if run[0] in committed]  # bases first
    check_inputs(spec)
    prepare_data(spec)
    runs = Path(runs_root, name)
    rows, failed = [], []
    for v, variant_name, seed in chosen_runs:
        run_dir = runs / v
        shutil.rmtree(run_dir, ignore_errors=True)
        lm_command(*fit_args(spec, variant_name, run_dir, base_checkpoint(spec, variant_name, runs), seed))
        rerun, then = read_json(run_dir / "run_summary.json"), committed[v]
        loss = rerun["best_val"]["val/loss"]
        same = environment(rerun) == environment(then)
        allowed = 0.0 if same else tolerance
        difference = loss - then["best_val_loss"]
        ok = abs(difference) <= allowed
        verdict = ("exact" if difference == 0 else f"within {allowed}") if ok else f"OFF (allowed: {allowed})"
        rows.append(
            [
                v,
                f"{then['best_val_loss']:.6f}",
                f"{loss:.6f}",
                f"{difference:+.6f}",
                "same" if same else "different",
                verdict,
            ]
        )
        if not ok:
            failed.append(v)
    print(markdown_table(["variant", "committed", "rerun", "difference", "environment", "verdict"], rows))
    if failed:
        raise UserError(f"{name}: {', '.join(failed)} differ from {path} beyond the tolerance (table above)")


def gather_variants(argv: list[str]) -> list[str]:
    """Every `--variant` as one list, the form jsonargparse takes (`--variant=["a", "b"]`): from a bare name, a
    comma-separated list (or a YAML one) and repeats, which jsonargparse alone refuses or overwrites."""
    rest, variants = [], []
    args = iter(argv)
    for arg in args:
        option, equals, value = arg.partition("=")
        if option != "--variant":
            rest.append(arg)
            continue
        value = value if equals else next(args, "")
        variants += [name.strip() for name in value.strip("[]").split(",") if name.strip()]
    return rest + ([f"--variant={json.dumps(variants)}"] if variants else [])


def main(argv: list[str]) -> None:
    CLI([run, report, verify], args=gather_variants(argv), prog="python -m lm experiment")
