"""A QAT run's trained models: saved with safetensors after each training stage, loaded back exactly (float
weights, the same fake quantizers for the QAT stage), refused when they do not fit."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from labkit.experiments.qat_bert.saved_models import (
    SavedModelError,
    load_trained,
    save_trained,
    saved_stages,
    stage_files,
    trained_info,
)
from labkit.quant.qat import convert_qat, prepare_qat, qat_state


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


def _trained(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


def test_float_stage_round_trip(tmp_path):
    base = _tiny()
    trained = _trained(copy.deepcopy(base))
    path = save_trained(tmp_path, 1, "fp32", trained, info={"steps": 3, "train_loss": 0.5}, model_name="tiny")
    assert path == tmp_path / "models" / "seed1" / "fp32.safetensors" and path.is_file()
    assert saved_stages(tmp_path / "result.json", 1) == ["fp32"] and saved_stages(tmp_path, 0) == []
    loaded = load_trained(tmp_path / "result.json", 1, "fp32", copy.deepcopy(base))
    for (k, a), (_, b) in zip(trained.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert trained_info(tmp_path, 1, "fp32")["info"] == {"steps": 3, "train_loss": 0.5}
    assert path.read_bytes()[:8] != b"\x80\x02\x8a\nlF"  # not a pickle


def test_qat_stage_comes_back_prepared_and_converts_alike(tmp_path):
    base = _tiny()
    model = prepare_qat(_trained(copy.deepcopy(base)), r"^3$", activations="int8-dynamic", embeddings=True)
    save_trained(tmp_path, 0, "qat", model)
    loaded = load_trained(tmp_path, 0, "qat", copy.deepcopy(base))
    assert qat_state(loaded).layers == ["3"] and qat_state(loaded).embeddings == ["0"]
    x = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(convert_qat(model)(x), convert_qat(loaded)(x))
    described = json.loads(stage_files(tmp_path, 0, "qat")[1].read_text())
    assert described["qat"]["activations"] == "int8-dynamic"


def test_converted_or_unknown_or_missing_is_refused(tmp_path):
    model = convert_qat(prepare_qat(_tiny(), r"^3$"))
    with pytest.raises(SavedModelError, match="before convert_qat"):
        save_trained(tmp_path, 0, "fp32", model)
    with pytest.raises(SavedModelError, match="not a training stage"):
        save_trained(tmp_path, 0, "ptq-static", _tiny())
    with pytest.raises(SavedModelError, match="no saved 'fp32-extra' model for seed 0"):
        load_trained(tmp_path, 0, "fp32-extra", _tiny())
    save_trained(tmp_path, 0, "fp32", _tiny())
    with pytest.raises(SavedModelError, match="does not fit"):
        load_trained(tmp_path, 0, "fp32", nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 3)))


def test_trained_pair_is_trained_once_then_loaded_from_the_user_cache(tiny_data_dir, tmp_path, monkeypatch):
    from labkit.experiments.qat_bert import QATBertConfig
    from labkit.experiments.qat_bert.pipeline import trained_pair
    from labkit.experiments.qat_bert.saved_models import cached_run

    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "cache"))
    cfg = QATBertConfig.for_profile("quick", n_train=4, n_eval=2, batch_size=2, fp32_steps=1, extra_steps=1,
                                    data_dir=str(tiny_data_dir))
    first = trained_pair(cfg)
    assert not first["info"]["from_cache"] and cached_run(cfg).is_relative_to(tmp_path / "cache")
    again = trained_pair(cfg)
    assert again["info"]["from_cache"] and again["info"]["folder"] == first["info"]["folder"]
    batch = {"input_ids": torch.randint(1000, 2000, (2, 8))}
    with torch.no_grad():
        for k in ("fp32", "qat"):
            assert torch.equal(first[k](**batch).logits, again[k](**batch).logits), k
    other = QATBertConfig.for_profile("quick", n_train=4, n_eval=2, batch_size=2, fp32_steps=2, extra_steps=1,
                                      data_dir=str(tiny_data_dir))
    assert cached_run(other) != cached_run(cfg)  # another budget never loads these weights
