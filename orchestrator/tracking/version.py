"""Which code produced a result: the package version and, when it runs from a git checkout, the commit
and whether the tree had uncommitted changes. Recorded in every fold record and on every MLflow run."""
from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]  # the checkout this package runs from (editable install)


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str | None]:
    """{package, git_commit, git_dirty}: git fields are None outside a git checkout or without git."""
    try:
        package = metadata.version("microau-sweep")
    except metadata.PackageNotFoundError:
        package = None
    commit = _git("rev-parse", "HEAD")
    dirty = None
    if commit is not None:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else str(bool(status.strip())).lower()
    return {"package": package, "git_commit": commit, "git_dirty": dirty}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def mlflow_tags() -> dict[str, str]:
    """The code version as MLflow tags (`mlflow.source.git.commit` is the tag MLflow's UI shows)."""
    v = code_version()
    tags = {"microau.version": v["package"] or "unknown"}
    if v["git_commit"]:
        tags["mlflow.source.git.commit"] = v["git_commit"]
        tags["microau.git_dirty"] = v["git_dirty"] or "unknown"
    return tags
