"""The log file that takes Ray's start-up notices is the sweep's, fixed when the run starts: a relative
workdir and a later change of the process's folder (a notebook, a test) do not move it."""
from __future__ import annotations

import logging

from orchestrator.execution.ray_session import ToLogFile


def test_a_relative_log_path_stays_where_the_run_started(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    log = logging.getLogger("test.ray_session.to_log_file")
    to_file = ToLogFile(tmp_path.joinpath("a", "wd", "logs", "ray.log").relative_to(tmp_path / "a"))
    log.addFilter(to_file)
    try:
        monkeypatch.chdir(tmp_path / "b")
        log.warning("a notice after the run")
    finally:
        log.removeFilter(to_file)
    assert "a notice after the run" in (tmp_path / "a" / "wd" / "logs" / "ray.log").read_text()
    assert not (tmp_path / "b" / "wd").exists()
