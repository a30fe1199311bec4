"""labkit.data: each source in order (folder argument, environment variable, hub) and the missing-data error."""

import pytest
import torch

from labkit import data


def test_folder_argument_loads_each_dataset(tiny_data_dir, monkeypatch):
    monkeypatch.delenv(data.DATA_VARIABLE, raising=False)
    sst2 = data.load_sst2("train", data_dir=tiny_data_dir)
    assert sst2.column_names == ["text", "label"] and len(sst2) == 4
    assert sst2[0] == {"text": "a gorgeous film .", "label": 1}
    assert str(tiny_data_dir) in data.source_of(sst2)
    assert len(data.load_sst2("dev", data_dir=tiny_data_dir)) == 2  # alias of validation
    assert data.load_imdb("test", data_dir=tiny_data_dir)["label"] == [1, 0]
    wiki = data.load_wikitext2("test", data_dir=tiny_data_dir)
    assert wiki.column_names == ["text"] and "cat sat" in "".join(wiki["text"])


def test_environment_variable_is_used_when_no_argument(tiny_data_dir, monkeypatch):
    monkeypatch.setenv(data.DATA_VARIABLE, str(tiny_data_dir))
    ds = data.load_text_classification("sst2", "train")
    assert len(ds) == 4 and str(tiny_data_dir) in data.source_of(ds)


def test_argument_wins_over_environment_variable(tiny_data_dir, tmp_path_factory, monkeypatch):
    other = tmp_path_factory.mktemp("other")
    (other / "sst2").mkdir()
    (other / "sst2" / "train.tsv").write_text("sentence\tlabel\nonly row .\t1\n", encoding="utf-8")
    monkeypatch.setenv(data.DATA_VARIABLE, str(tiny_data_dir))
    assert data.load_sst2("train", data_dir=other)["text"] == ["only row ."]


def test_hub_is_tried_last(monkeypatch):
    import datasets

    monkeypatch.delenv(data.DATA_VARIABLE, raising=False)
    fake = datasets.Dataset.from_dict({"sentence": ["hub row"], "label": [1], "idx": [0]})
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, config, split: fake)
    ds = data.load_sst2("train")
    assert ds.column_names == ["text", "label"] and "hub" in data.source_of(ds)


def test_missing_everywhere_names_dataset_places_and_fix(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setenv(data.DATA_VARIABLE, str(tmp_path / "nowhere"))
    with pytest.raises(data.DataNotFoundError) as err:
        data.load_imdb("train")
    msg = str(err.value)
    assert "IMDB" in msg and "nowhere" in msg and "hub" in msg and data.DATA_VARIABLE in msg


def test_missing_explicit_folder_fails_without_fallback(tmp_path, tiny_data_dir, monkeypatch):
    monkeypatch.setenv(data.DATA_VARIABLE, str(tiny_data_dir))  # would work, but the argument is explicit
    with pytest.raises(data.DataNotFoundError, match="data_dir argument"):
        data.load_sst2("train", data_dir=tmp_path / "missing")


def test_unknown_dataset_and_split(tiny_data_dir):
    with pytest.raises(ValueError, match="unknown dataset 'mnli'"):
        data.load("mnli", "train", data_dir=tiny_data_dir)
    with pytest.raises(ValueError, match="no split 'test'"):
        data.load_sst2("test", data_dir=tiny_data_dir)
    with pytest.raises(ValueError, match="not a text-classification dataset"):
        data.load_text_classification("wikitext2", "test", data_dir=tiny_data_dir)


def test_subsetting_is_seeded(tiny_data_dir):
    a = data.load_sst2("train", n=2, seed=1, data_dir=tiny_data_dir)["text"]
    b = data.load_sst2("train", n=2, seed=1, data_dir=tiny_data_dir)["text"]
    assert a == b and len(a) == 2
    with pytest.raises(ValueError, match="out of range"):
        data.load_sst2("train", n=99, data_dir=tiny_data_dir)


class _CharTokenizer:
    """One token per character: enough to test tokenisation helpers without a model."""

    def __call__(self, text, truncation=False, max_length=None, padding=False, return_attention_mask=True):
        many = not isinstance(text, str)
        texts = text if many else [text]
        ids = [[ord(c) % 256 for c in t][: max_length if truncation else None] for t in texts]
        out = {"input_ids": ids if many else ids[0]}
        if return_attention_mask:
            out["attention_mask"] = [[1] * len(i) for i in ids] if many else [1] * len(ids[0])
        return out


def test_tokenize_classification_truncates(tiny_data_dir):
    ds = data.tokenize_classification(data.load_sst2("train", data_dir=tiny_data_dir), _CharTokenizer(), max_length=5)
    assert set(ds.column_names) == {"label", "input_ids", "attention_mask"}
    assert max(len(x) for x in ds["input_ids"]) == 5


def test_lm_token_blocks_shape(tiny_data_dir):
    wiki = data.load_wikitext2("test", data_dir=tiny_data_dir)
    blocks = data.lm_token_blocks(wiki, _CharTokenizer(), block_size=8)
    assert blocks.dtype == torch.long and blocks.shape[1] == 8 and blocks.shape[0] == len("".join(wiki["text"])) // 8
    assert data.lm_token_blocks(wiki, _CharTokenizer(), 8, max_blocks=2).shape == (2, 8)
    with pytest.raises(ValueError, match="fewer than one block"):
        data.lm_token_blocks(wiki, _CharTokenizer(), block_size=10_000)


def test_real_shared_copies_have_the_documented_sizes(shared_data_dir):
    assert len(data.load_sst2("validation", data_dir=shared_data_dir)) == 872
    assert len(data.load_wikitext2("validation", data_dir=shared_data_dir)) == 3760


@pytest.mark.parametrize("content", ["", " \n\n  \n", "\t\n"])
def test_an_empty_or_blank_wikitext_file_is_an_error_naming_it(tiny_data_dir, content):
    path = tiny_data_dir / "wikitext2" / "wiki.valid.tokens"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(data.DataFormatError, match=r"wiki\.valid\.tokens has no (rows|text)"):
        data.load_wikitext2("validation", data_dir=tiny_data_dir)
    with pytest.raises(data.DataFormatError, match="wiki.valid.tokens"):
        data.wikitext2_lines("validation", data_dir=tiny_data_dir)


def test_an_sst2_file_with_a_header_only_and_an_empty_imdb_file_are_errors(tiny_data_dir):
    (tiny_data_dir / "sst2" / "dev.tsv").write_text("sentence\tlabel\n\n", encoding="utf-8")
    with pytest.raises(data.DataFormatError, match=r"dev\.tsv has no rows"):
        data.load_sst2("validation", data_dir=tiny_data_dir)
    import gzip

    with gzip.open(tiny_data_dir / "imdb" / "test.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write("\n")
    with pytest.raises(data.DataFormatError, match=r"test\.jsonl\.gz has no rows"):
        data.load_imdb("test", data_dir=tiny_data_dir)
    table = data.describe_sources(data_dir=tiny_data_dir)
    assert table.set_index(["dataset", "split"]).loc[("SST-2", "validation"), "source"].startswith("BROKEN: ")
