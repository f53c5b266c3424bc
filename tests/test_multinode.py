"""The two-node cluster tests (:mod:`tests.multinode_cases`) in a pytest process of their own.

They start and kill Ray nodes with ``ray start`` and join them as this process's driver; run
inside the whole suite, the Ray and Ray Train state other modules leave in the process can
interfere, so they get a fresh interpreter, as a user's driver would. Its environment leaves
out the ``RAY_*`` variables Ray set in this process: a local cluster started by an earlier
module sets ``RAY_AUTH_MODE=token``, which Ray reads before the cases can change it, and the
driver then cannot start actors on the nodes, whose authentication is disabled.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_node_cluster_cases_in_a_fresh_process(tmp_path):
    cases = Path(__file__).with_name("multinode_cases.py")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
        env={key: value for key, value in os.environ.items() if not key.startswith("RAY_")},
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert "2 passed" in done.stdout
