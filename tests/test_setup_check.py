"""What notebook 00 tells the learner: each lesson's plan on this machine, the expected run times, the help block."""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
from pathlib import Path

import pytest

from labkit import env

ROOT = Path(__file__).resolve().parents[1]


def test_every_lesson_has_a_plan_in_order():
    lessons = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9]*.ipynb"))
    assert [lesson.stem for lesson in env.LESSONS] == lessons


def test_the_plan_follows_the_machine():
    cpu_with_triton = {r["lesson"]: r for r in env.lesson_plan(gpu=False, triton=True)}
    assert "interpreter" in cpu_with_triton["02b_triton_flash_attention"]["runs live here"]
    assert "committed H100" in cpu_with_triton["02_flash_attention_llama"]["shown from committed results"]
    mac = {r["lesson"]: r for r in env.lesson_plan(gpu=False, triton=False)}
    for stem in ("02b_triton_flash_attention", "03b_making_8bit_fast"):
        assert "triton is not installed" in mac[stem]["runs live here"]
        assert "their source is shown" in mac[stem]["shown from committed results"]
    assert mac["01b_deploy_bert_cpu"] == cpu_with_triton["01b_deploy_bert_cpu"]  # no Triton in the CPU deploy
    gpu = {r["lesson"]: r for r in env.lesson_plan(gpu=True, triton=True)}
    assert gpu["03_selective_hybrid"]["runs live here"].startswith("everything")
    assert "2+ GPUs" in gpu["04_qat_at_7b_fsdp"]["shown from committed results"]


def test_expected_minutes_scale_each_lesson_by_the_probe():
    record = {"provenance": {"date": "2026-12-07T12:00:00+00:00", "cpu": "AMD EPYC", "threads": 2},
              "lessons": {"00_setup_check": {"seconds": 60.0, "probe_ms": 40.0},
                          "01b_deploy_bert_cpu": {"seconds": 300.0, "probe_ms": 80.0}}}
    minutes, note = env.expected_lesson_minutes(record, probe_ms=20.0)  # this machine twice as fast as the first
    assert minutes == pytest.approx({"00_setup_check": 0.5, "01b_deploy_bert_cpu": 1.25})
    assert "recorded quick-profile run times" in note and "AMD EPYC" in note and "20 ms here" in note
    assert "other jobs" not in note
    record["provenance"]["load_average_at_start"] = 7.9
    assert "recorded while other jobs ran (load 7.9)" in env.expected_lesson_minutes(record, probe_ms=20.0)[1]


def test_the_committed_lesson_times_are_a_quick_run_that_says_what_it_lacks():
    path = ROOT / "data" / "reference" / env.LESSON_TIMES
    if not path.is_file():
        pytest.skip(f"{path.name} is not committed: notebook 00 says the times are not recorded")
    record = json.loads(path.read_text())
    assert record["provenance"]["profile"] == "quick" and record["status"] in ("complete", "partial")
    timed, known = set(record["lessons"]), {lesson.stem for lesson in env.LESSONS}
    assert timed <= known and timed
    if record["status"] == "partial":  # notebook 00 shows "not recorded" for the rest
        assert all(stem in record["reason"] for stem in known - timed)
    else:
        assert timed == known
    assert all(r["seconds"] > 0 and r["probe_ms"] > 0 for r in record["lessons"].values())


def test_the_speed_probe_is_cheap_and_positive():
    assert 0 < env.cpu_speed_probe(repeats=2) < 30_000


def test_the_help_block_has_what_helps_and_nothing_private(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    monkeypatch.setenv("LABKIT_DATA_DIR", str(tmp_path / "my-private-data"))
    text = env.help_block({"sdpa": "available", "fa2": "needs an NVIDIA GPU"})
    for needed in ("profile ", "cpu ", env.cpu_report().family, "gpu ", "torch ", "triton ", "onnxruntime",
                   "LABKIT_DATA_DIR set, the folder is missing", "sdpa: ok", "fa2: no"):
        assert needed in text, needed
    private = ["hf_secret_value_123", "my-private-data", str(tmp_path), os.path.expanduser("~"), socket.gethostname()]
    for value in private:
        assert value not in text, value
    user = getpass.getuser()
    if user != "root":  # a word the block may contain for other reasons
        assert not re.search(rf"\b{re.escape(user)}\b", text), user


def test_triton_status_and_kernel_source_without_importing_the_kernels():
    ok, why = env.triton_status()
    assert ok == (env.package_version("triton") is not None and why.startswith("Triton"))
    text = env.function_source("labkit.attention.triton_fa2", "_attention_fwd_inner")
    assert text.startswith("@triton.jit\ndef _attention_fwd_inner(")
    assert env.function_source("labkit.quant.int8_kernel", "_int8_weight_only_kernel").startswith("@triton.jit\ndef ")
    with pytest.raises(NameError, match="no function 'nope'"):
        env.function_source("labkit.attention.triton_fa2", "nope")
