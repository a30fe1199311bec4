"""Every pin of requirements*.txt installs from wheels on macOS arm64 and Linux aarch64 (scripts/check_platform_wheels).

The markers are evaluated for each target platform without the network; the wheel check asks PyPI through pip
and skips, saying why, when the index cannot be reached (as in an offline CI)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_platform_wheels.py"
_spec = importlib.util.spec_from_file_location("check_platform_wheels", SCRIPT)
wheels = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = wheels  # dataclasses look their module up there
_spec.loader.exec_module(wheels)


def _markers_hold(target: str) -> dict[str, bool]:
    env = wheels.TARGETS[target].environment("3.11")
    return {req.name: req.marker is None or req.marker.evaluate(env)
            for _, _, req in wheels.read_requirements(ROOT / "requirements.txt")}


def test_triton_installs_on_linux_x86_64_and_aarch64_only():
    assert _markers_hold("linux-x86_64")["triton"] and _markers_hold("linux-aarch64")["triton"]
    assert not _markers_hold("macos-arm64")["triton"]
    for target in wheels.TARGETS:  # everything else installs everywhere, but OpenVINO (no Linux aarch64 wheel)
        assert all(ok for name, ok in _markers_hold(target).items() if name not in ("triton", "openvino")), target


def test_openvino_installs_where_it_publishes_wheels():
    assert _markers_hold("linux-x86_64")["openvino"] and _markers_hold("macos-arm64")["openvino"]
    assert not _markers_hold("linux-aarch64")["openvino"]


def test_pyproject_installs_triton_where_requirements_does():
    text = (ROOT / "pyproject.toml").read_text()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith('"triton'))
    from packaging.requirements import Requirement

    req = Requirement(line.strip().strip(",").strip('"'))
    for target in wheels.TARGETS.values():
        assert req.marker.evaluate(target.environment("3.11")) == _markers_hold(target.name)["triton"], target.name


def test_every_requirement_is_pinned():
    for file in wheels.DEFAULT_FILES:
        for path, number, req in wheels.read_requirements(ROOT / file):
            assert [s.operator for s in req.specifier] == ["=="], f"{path.name}:{number} {req}"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900, cwd=ROOT)


def test_every_pin_has_wheels_for_macos_arm64_and_linux_aarch64():
    out = _run("--platform", "macos-arm64,linux-aarch64")
    if out.returncode == wheels.UNREACHABLE:
        pytest.skip(out.stdout.strip())
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "skip  macos-arm64" in out.stdout and "triton" in out.stdout


def test_a_pin_without_wheels_fails_the_check(tmp_path):
    bad = tmp_path / "requirements.txt"
    bad.write_text("triton==3.7.1  # no marker: Triton has no macOS wheels\n", encoding="utf-8")
    out = _run("--platform", "macos-arm64", str(bad))
    if out.returncode == wheels.UNREACHABLE:
        pytest.skip(out.stdout.strip())
    assert out.returncode == 1 and re.search(r"^FAIL +macos-arm64 .*triton==3.7.1", out.stdout, re.M), out.stdout
