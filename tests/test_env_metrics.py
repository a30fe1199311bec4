"""labkit.env (report and profile on a CPU) and labkit.metrics (offline evaluate metrics)."""

import pytest
import torch

from labkit import env, metrics


def test_profile_defaults_and_validation(monkeypatch, capsys):
    monkeypatch.delenv(env.PROFILE_VARIABLE, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine too: quick unless asked
    assert env.get_profile() == "quick"
    profile, why = env.explain_profile()
    assert profile == "quick" and "LABKIT_PROFILE is not set" in why and "LABKIT_PROFILE=full" in why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(env.PROFILE_VARIABLE, "full")
    assert env.show_profile() == "full"
    out = capsys.readouterr().out
    assert out.startswith("profile full: LABKIT_PROFILE=full is set") and "No CUDA GPU" in out
    monkeypatch.setenv(env.PROFILE_VARIABLE, "FULL")
    assert env.get_profile() == "full"
    monkeypatch.setenv(env.PROFILE_VARIABLE, "fast")
    with pytest.raises(ValueError, match="quick, full"):
        env.get_profile()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU report")
def test_report_on_cpu(monkeypatch):
    monkeypatch.setenv(env.PROFILE_VARIABLE, "quick")
    from labkit.attention import backend_status

    rep = env.report(backends=backend_status())
    assert rep.device == "cpu" and rep.compute_capability is None and rep.profile == "quick"
    assert rep.versions["torch"] == torch.__version__ and "torchao" in rep.versions and "flash-attn" in rep.versions
    assert rep.threads == torch.get_num_threads()
    # every registered backend is listed with "available" or the reason it is not
    assert rep.backends, "the attention backend registry reported nothing"
    assert rep.backends["eager"] == "available"
    text = str(rep)
    assert "profile" in text and "attention backends" in text


def test_provenance_has_what_result_files_need():
    prov = env.provenance(command="python -m labkit.bench test --profile full", profile="full")
    for key in ("date", "command", "device", "device_name", "cpu", "threads", "versions", "profile"):
        assert key in prov
    assert prov["command"] == "python -m labkit.bench test --profile full"


def test_metrics_offline_match_hand_computed_values():
    out = metrics.classification_metrics([1, 0, 1, 1], [1, 0, 0, 1])
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["f1"] == pytest.approx(0.8)  # precision 2/3, recall 1


def test_trainer_compute_metrics_takes_logits():
    import numpy as np

    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert metrics.trainer_compute_metrics((logits, np.array([1, 0, 0]))) == pytest.approx({"accuracy": 2 / 3, "f1": 2 / 3})  # P=1/2, R=1


def test_metrics_are_evaluate_modules():
    import evaluate

    assert isinstance(metrics.load_metric("accuracy"), evaluate.EvaluationModule)


def test_labkit_leaves_plotly_renderer_alone_in_kernels(monkeypatch):
    """Saving a notebook must not embed plotly.js (~5 MB): only `make run` asks for the HTML renderer."""
    import importlib
    import sys
    import types

    import plotly.io as pio

    import labkit

    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype")
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    importlib.reload(labkit)
    assert pio.renderers.default == "plotly_mimetype"


def test_make_run_alone_adds_plotly_html_renderer_for_the_export():
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("no make here")
    repo = Path(__file__).resolve().parents[1]
    dry = {t: subprocess.run(["make", "-n", t], cwd=repo, capture_output=True, text=True,
                             check=True).stdout for t in ("run", "lab")}
    assert "PLOTLY_RENDERER=${PLOTLY_RENDERER:-plotly_mimetype+notebook" in dry["run"]
    assert "PLOTLY_RENDERER" not in dry["lab"]
