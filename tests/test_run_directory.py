"""A run directory as a user sees it: read through a real TensorBoard server, and intact after validations."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from lm.cli import main
from tests.conftest import write_config

TAGS = ["train/loss", "lr", "perf/tokens_per_sec", "val/loss", "val/bpb"]


@pytest.fixture(scope="module")
def validated_run(text_corpus, tmp_path_factory) -> tuple[Path, str, dict[str, bytes]]:
    """A 6-step fit (logging every 2 steps, validating at 3 and 6), then two validations of its checkpoints.

    Returns the run directory, its config and the bytes of the fit's files before the validations.
    """
    tmp = tmp_path_factory.mktemp("tensorboard")
    run = tmp / "demo"
    config = write_config(tmp / "run.yaml", text_corpus, run, **{"trainer.log_every_n_steps": 2})
    main(["fit", "--config", config])
    fit_files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for checkpoint in ("best", "last"):
        main(["validate", "--config", config, "--ckpt_path", str(run / "checkpoints" / f"{checkpoint}.ckpt")])
    return run, config, fit_files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tensorboard(validated_run):
    """`tensorboard --logdir` on the run's parent, on a free loopback port; a function reading its HTTP data API."""
    run, _, _ = validated_run
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(run.parent), "--host", "127.0.0.1"]
        + ["--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def get(path: str, **query):
        url = f"http://127.0.0.1:{port}/data/{path}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline = time.monotonic() + 120
        while True:  # up, and done loading both runs
            try:
                if {"demo", "demo/validate/best"} <= set(get("runs")) and get(
                    "plugin/scalars/scalars", run="demo/validate/last", tag="val/loss"
                ):
                    break
            except (OSError, ValueError):
                pass
            assert server.poll() is None and time.monotonic() < deadline, "tensorboard did not come up"
            time.sleep(0.5)
        yield get
    finally:
        server.terminate()
        server.wait(timeout=30)


def steps(get, run: str, tag: str) -> list[int]:
    return [step for _, step, _ in get("plugin/scalars/scalars", run=run, tag=tag)]


def test_tensorboard_shows_every_logged_step_after_validations(tensorboard, validated_run):
    get = tensorboard
    run, _, _ = validated_run
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for tag in TAGS:
        expected = [line["step"] for line in logged if tag in line]
        assert steps(get, "demo", tag) == expected != [], tag
    assert steps(get, "demo", "val/loss") == [3, 6]
    assert steps(get, "demo", "train/loss") == [2, 4, 6]

    # The validations are runs of their own, each one point at its checkpoint's step.
    assert set(get("runs")) == {"demo", "demo/validate/best", "demo/validate/last"}
    for name in ("best", "last"):
        results = json.loads((run / "validate" / name / "metrics.json").read_text())
        [[_, step, value]] = get("plugin/scalars/scalars", run=f"demo/validate/{name}", tag="val/loss")
        assert step == results["step"] and value == pytest.approx(results["metrics"]["val/loss"])
    assert steps(get, "demo/validate/last", "val/loss") == [6]

    # The text sample of the end of training (SampleCallback's samples/0; torch's writer adds /text_summary).
    [sample] = get("plugin/text/text", run="demo", tag="samples/0/text_summary")
    assert sample["step"] == 6 and "<p>The " in sample["text"]  # rendered as markdown


def test_validate_leaves_the_fit_files_alone_and_config_yaml_reruns_the_run(validated_run, tmp_path):
    run, _, fit_files = validated_run
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == fit_files
    assert "ckpt_path: null" in (run / "config.yaml").read_text()

    rerun = tmp_path / "rerun"
    main(["fit", "--config", str(run / "config.yaml"), "--trainer.default_root_dir", str(rerun)])
    losses = [
        {k: v for k, v in json.loads(line).items() if not k.startswith("perf/")}
        for path in (run, rerun)
        for line in (path / "metrics.jsonl").read_text().splitlines()
    ]
    assert losses[: len(losses) // 2] == losses[len(losses) // 2 :]


def test_a_resumed_run_keeps_a_config_yaml_without_ckpt_path(validated_run, tmp_path):
    _, config, _ = validated_run
    run = tmp_path / "resumed"
    main(["fit", "--config", config, "--trainer.default_root_dir", str(run), "--trainer.max_steps", "3"])
    main(["fit", "--config", config, "--trainer.default_root_dir", str(run), "--ckpt_path", "last"])
    assert "ckpt_path: null" in (run / "config.yaml").read_text()
    assert "max_steps: 6" in (run / "config.yaml").read_text()


@pytest.mark.parametrize(
    "command", ["fit", "validate", "test", "prepare", "generate", "hellaswag", "export", "plot", "bench", "experiment"]
)
def test_every_command_names_itself_in_its_help(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    usage = capsys.readouterr().out.split("usage: ", 1)[1].splitlines()[0]
    assert usage.startswith("python -m lm") and f" {command}" in usage


def test_the_console_shows_no_tips_or_third_party_deprecations(validated_run, tmp_path):
    _, config, _ = validated_run
    command = [sys.executable, "-m", "lm", "fit", "--config", config, "--trainer.default_root_dir", str(tmp_path)]
    done = subprocess.run(command + ["--trainer.max_steps", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    console = done.stdout + done.stderr
    assert "Tip:" not in console and "deprecated" not in console.lower() and "Epoch" not in console
    assert "warning" not in console.lower(), console  # e.g. LightningCLI's about args and sys.argv both given
