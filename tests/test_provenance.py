"""A result file records the profile that ran (not what $LABKIT_PROFILE said) and a command that re-runs it."""

from __future__ import annotations

import json

from labkit import env


def test_provenance_records_the_profile_that_ran(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    prov = env.provenance("python -m labkit.bench hybrid --profile full", profile="full")
    assert prov["profile"] == "full" and prov["command"] == "python -m labkit.bench hybrid --profile full"
    # a profile taken from the environment is written into the command, so the command alone re-runs it
    monkeypatch.setenv("LABKIT_PROFILE", "full")
    prov = env.provenance("python -m labkit.bench hybrid --model none", profile="full")
    assert prov["command"] == "python -m labkit.bench hybrid --model none --profile full"


def test_hybrid_file_says_full_when_full_ran_under_a_quick_environment(tmp_path, monkeypatch):
    """hybrid_cpu.json said "quick" for a `--profile full` run: the environment variable was recorded."""
    from labkit.bench import main

    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "hybrid.json"
    main(["hybrid", "--profile", "full", "--model", "none", "--shape", "none", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["profile"] == "full" and data["provenance"]["profile"] == "full"
    assert "--profile full" in data["provenance"]["command"]


def test_reference_devices_are_not_another_experiments_files():
    """hybrid_qat_fsdp_h200x2.json belongs to hybrid-qat; notebook 03 read it as a "hybrid" device and failed."""
    from labkit.results.reference import load_reference, reference_devices

    assert all("_" not in slug for slug in reference_devices("hybrid"))
    ref, _ = load_reference("hybrid")
    assert ref is None or ref.get("experiment") == "hybrid"
