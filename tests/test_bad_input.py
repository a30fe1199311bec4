"""Bad input names itself: a corrupt dataset file names the file and the line; a widget given a value outside
its choices lists them."""

from __future__ import annotations

import pytest
import torch

from labkit import data
from labkit.data import DataFormatError


def _sst2(tmp_path, text: str):
    (tmp_path / "sst2").mkdir(exist_ok=True)
    (tmp_path / "sst2" / "train.tsv").write_text(text, encoding="utf-8")
    return tmp_path


def test_sst2_cut_mid_line_names_file_and_line(tmp_path):
    folder = _sst2(tmp_path, "sentence\tlabel\na fine film .\t1\nhalf a li")
    with pytest.raises(DataFormatError, match=r"sst2/train\.tsv, line 3: expected 2 tab-separated columns"):
        data.load_sst2("train", data_dir=folder)


def test_sst2_wrong_header_names_the_missing_column(tmp_path):
    folder = _sst2(tmp_path, "text\tlabel\na fine film .\t1\n")
    with pytest.raises(DataFormatError, match=r"train\.tsv, line 1: the header .* has no column 'sentence'"):
        data.load_sst2("train", data_dir=folder)


def test_imdb_that_is_not_gzip_names_the_file(tmp_path):
    (tmp_path / "imdb").mkdir()
    (tmp_path / "imdb" / "test.jsonl.gz").write_text('{"text": "plain", "label": 1}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"imdb/test\.jsonl\.gz, its start: not a readable gzip file"):
        data.load_imdb("test", data_dir=tmp_path)


def test_imdb_bad_json_line_names_the_line(tmp_path):
    import gzip

    (tmp_path / "imdb").mkdir()
    with gzip.open(tmp_path / "imdb" / "test.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write('{"text": "ok", "label": 1}\n{"text": "cut\n')
    with pytest.raises(DataFormatError, match=r"test\.jsonl\.gz, line 2: not a JSON object"):
        data.load_imdb("test", data_dir=tmp_path)


def test_live_plot_unknown_backend_lists_the_choices():
    from labkit.widgets import ChoiceError, LiveSweepPlot

    with pytest.raises(ChoiceError, match=r"backends: 'fa3' is not one of the choices: 'eager', 'sdpa'"):
        LiveSweepPlot(backends=["sdpa", "fa3"], device="cpu")


def test_layer_picker_unknown_preset_lists_the_choices():
    from labkit.models import build_from_shape
    from labkit.widgets import ChoiceError, LayerPicker

    picker = LayerPicker(build_from_shape("tiny-llama", dtype=torch.float32, device="cpu"))
    with pytest.raises(ChoiceError, match=r"preset: 'everything' is not one of the choices: 'feed-forward only'"):
        picker.preset.value = "everything"
    with pytest.raises(ValueError, match="unknown preset 'everything'; choose one of feed-forward only"):
        LayerPicker(build_from_shape("tiny-llama", dtype=torch.float32, device="cpu"), preset="everything")


def test_an_empty_layer_selection_is_refused_and_the_head_is_selected_only_by_name():
    """SmolLM2's shape (meta device): 211 Linear layers, the last one `lm_head`, tied to the token embeddings."""
    from labkit.models import meta_model
    from labkit.quant.selection import EmptySelectionError, resolve_layers

    model = meta_model("smollm2-135m", "any_causal_lm")
    for empty in ("", "  ", [], ()):
        with pytest.raises(EmptySelectionError, match="empty"):
            resolve_layers(model, empty)
    for everything in (None, ".", ".*", "proj|head", lambda name, module: True):
        chosen = resolve_layers(model, everything)
        assert len(chosen) == 210 and "lm_head" not in chosen, everything
    assert resolve_layers(model, "lm_head") == ["lm_head"] == resolve_layers(model, ["lm_head"])
    assert resolve_layers(model, r"\.mlp\.down_proj$|lm_head")[-1] == "lm_head"
    with pytest.raises(EmptySelectionError, match="selected only when named"):
        resolve_layers(model, "head$")
    with pytest.raises(EmptySelectionError, match="matches no Linear layer"):
        resolve_layers(model, "no_such_layer")
    embeddings = resolve_layers(model, None, (torch.nn.Embedding,))  # asked for by type
    assert embeddings == ["model.embed_tokens"]


def test_an_empty_layers_argument_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys):
    import labkit.experiments.hybrid.bench as bench
    from labkit.bench import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "load_causal_lm", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exit_:
        main(["hybrid", "--profile", "quick", "--layers", ""])
    assert exit_.value.code == 2
    assert "--layers '' selects no Linear layer" in capsys.readouterr().err and not (tmp_path / "runs").exists()
