import subprocess
from pathlib import Path

import pytest
import torch

from lm.provenance import environment, git_state

ROOT = Path(__file__).resolve().parents[1]


def test_git_state_names_the_commit_of_this_checkout():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an unpacked source archive)")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    status = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert git_state() == {"git_commit": head.stdout.strip(), "git_dirty": bool(status.stdout.strip())}


def test_environment_records_what_changes_a_cpu_result():
    env = environment(torch.device("cpu"))
    assert env["device"] == "cpu"
    assert env["threads"] == torch.get_num_threads()
    assert env["deterministic"] == torch.are_deterministic_algorithms_enabled()
    assert env["versions"]["torch"] == torch.__version__
