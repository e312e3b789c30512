"""The systemd units of deploy/systemd/: one per process kind, each running the command
the Procfile runs, all sandboxed alike, and valid by ``systemd-analyze verify``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from workers.runner import KINDS

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
INSTALLED = "/opt/geopush/bin/geopush"
COMMANDS = {"web": "serve", **{kind: f"worker {kind}" for kind in KINDS}}


def _service(unit: Path) -> str:
    return unit.read_text().partition("[Service]")[2].partition("\n[")[0]


def _sandbox(unit: Path) -> str:
    """The sandboxing block: from NoNewPrivileges to the end of [Service]."""
    service = _service(unit)
    return service[service.index("NoNewPrivileges="):].strip()


def test_every_process_kind_has_a_templated_unit_running_its_command() -> None:
    for kind, command in COMMANDS.items():
        unit = UNITS / f"geopush-{kind}@.service"
        assert f"\nExecStart={INSTALLED} {command}\n" in unit.read_text(), unit
        assert "Environment=GEOPUSH_METRICS_PORT=%i" in unit.read_text(), unit
    procfile = (REPO / "Procfile").read_text()
    for kind, command in COMMANDS.items():
        assert re.search(rf"^{kind}: geopush {command}$", procfile, re.M), kind


def test_every_unit_is_sandboxed_alike_and_restarts() -> None:
    services = sorted(UNITS.glob("*.service"))
    assert len(services) == len(COMMANDS) + 1   # and geopush-migrate.service
    sandboxes = {_sandbox(unit) for unit in services}
    assert len(sandboxes) == 1, "the units' sandboxing differs"
    [sandbox] = sandboxes
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=",
                 "SystemCallFilter=@system-service"):
        assert line in sandbox.splitlines()
    for unit in services:
        if unit.name != "geopush-migrate.service":
            assert "Restart=always" in _service(unit).splitlines(), unit


def test_systemd_analyze_verifies_every_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/install-system-deps.sh installs systemd"
    # verify checks that ExecStart exists: aim the copies at this checkout's geopush.
    geopush = Path(sys.executable).parent / "geopush"
    assert geopush.exists(), geopush
    for unit in UNITS.iterdir():
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, str(geopush)))
    names = [f"geopush-{kind}@{9100 + n}.service" for n, kind in enumerate(COMMANDS)]
    result = subprocess.run(
        [analyze, "verify", *names, "geopush-migrate.service", "geopush.target"],
        cwd=tmp_path, capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
