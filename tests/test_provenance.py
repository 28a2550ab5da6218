import subprocess
from pathlib import Path

import pytest
import torch

from lm.provenance import environment, git_file, git_object, git_state

ROOT = Path(__file__).resolve().parents[1]


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_git_state_names_the_commit_of_this_checkout():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an unpacked source archive)")
    assert git_state()["git_commit"] == git(ROOT, "rev-parse", "HEAD")


def test_a_changed_file_is_dirty_but_a_rewritten_experiment_report_is_not(tmp_path):
    files = {"lm/model.py": "n_layer = 4\n", "experiments/demo/results.md": "5.06\n", "README.md": "lm\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": False}

    (tmp_path / "experiments/demo/results.md").write_text("5.07\n")  # what `experiment report` writes
    (tmp_path / "experiments/demo/results.json").write_text("{}")  # untracked
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": False}

    (tmp_path / "lm/model.py").write_text("n_layer = 6\n")
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": True}


def test_git_objects_and_files_at_a_commit(tmp_path):
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm/model.py").write_text("n_layer = 4\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert git_object(head, "lm", tmp_path) == git(tmp_path, "rev-parse", "HEAD:lm")
    assert git_file(head, "lm/model.py", tmp_path) == "n_layer = 4"
    assert git_object(head, "configs/missing.yaml", tmp_path) is None and git_object("0" * 40, "lm", tmp_path) is None
    assert git_file(None, "lm/model.py", tmp_path) is None and git_object(head, "lm", tmp_path / "lm") is None


def test_environment_records_what_changes_a_cpu_result():
    env = environment(torch.device("cpu"))
    assert env["device"] == "cpu"
    assert env["threads"] == torch.get_num_threads()
    assert env["deterministic"] == torch.are_deterministic_algorithms_enabled()
    assert env["versions"]["torch"] == torch.__version__
