"""``streamctl demo`` as README tells a new user to run it: its own Redis, sandbox and worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_demo_runs_end_to_end_and_cleans_up(tmp_path: object) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCALEENGINE_", "STREAMCTL_"))}
    env.pop("REDIS_URL", None)  # the demo must not need a Redis of anyone else's
    temp = Path(str(tmp_path)) / "tmp"
    temp.mkdir()
    env["TMPDIR"] = str(temp)  # where the demo's temporary folder goes
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo", "--jobs", "12", "--concurrency", "4"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=str(tmp_path),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "The sandbox saw no replayed request" in done.stdout
    assert "jobs that needed retries" in done.stdout
    assert "stopped the worker, the sandbox and the embedded Redis" in done.stdout
    # Nothing left running: no worker process of this demo remains.
    leftover = subprocess.run(
        ["pgrep", "-f", "worker.cli worker --concurrency 4"], capture_output=True
    )
    assert leftover.stdout.strip() == b""
    # Nothing left in the temporary folder after a demo that went well (README says so).
    assert list(temp.iterdir()) == []
