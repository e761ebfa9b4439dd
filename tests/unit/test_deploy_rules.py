"""The alert rules under deploy/ are valid and fire as their unit tests say (promtool, Debian's `prometheus`
package; CI installs it: scripts/install-ci-tools.sh). scripts/validate-deploy.sh checks the rest of deploy/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus); scripts/install-ci-tools.sh")
    return found


@pytest.mark.parametrize("command", [("check", "rules", "alerts.yaml"), ("test", "rules", "alerts_test.yaml")])
def test_promtool_accepts_the_alert_rules(command: tuple[str, ...]) -> None:
    done = subprocess.run([promtool(), *command], cwd=OBSERVABILITY, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
