"""What decides a run's numbers besides its config: the code (git commit) and the environment it ran in.

Recorded in every run_summary.json; `python -m lm experiment report` refuses a table whose variants ran different
code or configs (lm.experiment.run_inputs), and `experiment verify` compares environments before it demands an exact
match.
"""

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CHECKOUT = Path(__file__).resolve().parents[1]  # lm/provenance.py -> the checkout
# Written by `experiment report`: an experiment's report is not code, and running a second experiment after the
# first one's report must not count as running from uncommitted changes.
REPORTS = ":(exclude,glob)experiments/*/results.*"


def git_state(repo: Path = CHECKOUT) -> dict:
    """The commit of the lm checkout and whether it had uncommitted changes besides experiment reports (None for an
    installed copy of lm)."""
    git, unknown = ["git", "-C", str(repo)], {"git_commit": None, "git_dirty": None}
    if not (repo / ".git").exists():
        return unknown
    try:
        sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", ".", REPORTS], capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):  # no git program, or a broken checkout
        return unknown
    return {"git_commit": sha.strip(), "git_dirty": bool(status.stdout.strip())}


def git_object(commit: str | None, path: str, repo: Path = CHECKOUT) -> str | None:
    """git's hash of a file or folder of the checkout at `commit` (equal hashes: equal contents); None without git,
    a checkout, the commit or the path."""
    return _git(repo, "rev-parse", "--verify", "--quiet", f"{commit}:{path}") if commit else None


def git_file(commit: str | None, path: str, repo: Path = CHECKOUT) -> str | None:
    """The text of a file of the checkout at `commit`; None where git cannot give it."""
    return _git(repo, "show", f"{commit}:{path}") if commit else None


def newest_commit(commits: set[str], repo: Path = CHECKOUT) -> str | None:
    """The most recent of `commits` by commit date; None where git cannot tell."""
    return _git(repo, "rev-list", "--no-walk", "--max-count=1", *sorted(commits)) if commits else None


def _git(repo: Path, *args: str) -> str | None:
    if not (repo / ".git").exists():
        return None
    try:
        result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    except OSError:  # no git program
        return None
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:  # lm run from a source tree that was not pip-installed
        return None


def environment(device: "torch.device") -> dict:
    """What a run's numbers depend on besides its config and code: package versions, the device, and on the CPU the
    thread count (it changes the order of float sums) and whether torch's deterministic algorithms are enforced."""
    import torch  # here, not at the top: `lm prepare` records versions through this module and runs without torch

    versions = {
        "python": platform.python_version(),
        **{name: package_version(name) for name in ("torch", "lightning", "lm")},
    }
    return {
        "versions": versions,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
