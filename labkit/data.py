"""Datasets as `datasets.Dataset`: SST-2 and IMDB (text, label), WikiText-2 (text lines for language modelling).

Each loader looks in this order and uses the first source that has the dataset:
  1. the `data_dir` argument (if given, it must hold the dataset: no fallback past an explicit folder);
  2. the folder named by `$LABKIT_DATA_DIR`;
  3. the Hugging Face hub.
A folder is laid out like the lab's shared copy:
  sst2/train.tsv, sst2/dev.tsv                (header `sentence<TAB>label`)
  imdb/train.jsonl.gz, imdb/test.jsonl.gz     (one JSON object a line: text, label)
  wikitext2/wiki.valid.tokens, wiki.test.tokens (wiki.train.tokens if you have it)
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

DATA_VARIABLE = "LABKIT_DATA_DIR"


@dataclass(frozen=True)
class _Spec:
    title: str
    folder: str
    files: dict[str, str]  # split -> file name in the folder
    hub: tuple[str, str | None]  # (repo, config)
    hub_splits: dict[str, str]
    aliases: dict[str, str]


DATASETS: dict[str, _Spec] = {
    "sst2": _Spec(
        "SST-2", "sst2", {"train": "train.tsv", "validation": "dev.tsv"},
        ("stanfordnlp/sst2", None), {"train": "train", "validation": "validation"}, {"dev": "validation"},
    ),
    "imdb": _Spec(
        "IMDB", "imdb", {"train": "train.jsonl.gz", "test": "test.jsonl.gz"},
        ("stanfordnlp/imdb", None), {"train": "train", "test": "test"}, {},
    ),
    "wikitext2": _Spec(
        "WikiText-2", "wikitext2",
        {"train": "wiki.train.tokens", "validation": "wiki.valid.tokens", "test": "wiki.test.tokens"},
        ("Salesforce/wikitext", "wikitext-2-v1"), {"train": "train", "validation": "validation", "test": "test"},
        {"valid": "validation", "dev": "validation"},
    ),
}


class DataNotFoundError(FileNotFoundError):
    """No source had the dataset: the message names the dataset, each place tried, and the fix."""


def _spec(name: str) -> _Spec:
    key = name.lower().replace("-", "")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; labkit knows: {', '.join(DATASETS)}")
    return DATASETS[key]


def _split(spec: _Spec, split: str) -> str:
    split = spec.aliases.get(split, split)
    if split not in spec.files:
        raise ValueError(f"{spec.title} has no split {split!r}; choose one of {', '.join(spec.files)}")
    return split


class DataFormatError(ValueError):
    """A dataset file that is not in the expected format: the message names the file, the line and the fix."""


def _read_sst2(path: Path) -> dict[str, list]:
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        missing = [c for c in ("sentence", "label") if c not in header]
        if missing:
            raise DataFormatError(f"{path}, line 1: the header {header!r} has no column {missing[0]!r}; an SST-2 "
                                  "file starts with the tab-separated header `sentence<TAB>label`")
        col = {c: i for i, c in enumerate(header)}
        text, label = [], []
        for number, line in enumerate(fh, start=2):
            if not line.strip():
                continue
            cells = line.rstrip("\n").split("\t")
            try:
                text.append(cells[col["sentence"]])
                label.append(int(cells[col["label"]]))
            except (IndexError, ValueError):
                raise DataFormatError(
                    f"{path}, line {number}: expected {len(header)} tab-separated columns ({', '.join(header)}) "
                    f"with an integer label, got {line.rstrip()[:80]!r}; the file may be cut short or edited: "
                    "restore it from the lab's data copy") from None
    return {"text": text, "label": label}


def _read_imdb(path: Path) -> dict[str, list]:
    text, label = [], []
    number = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                record = json.loads(line)
                text.append(record["text"])
                label.append(int(record["label"]))
    except (gzip.BadGzipFile, EOFError, OSError) as err:
        where = f"line {number + 1}" if number else "its start"
        raise DataFormatError(f"{path}, {where}: not a readable gzip file ({type(err).__name__}: {err}); IMDB files "
                              "are gzip-compressed JSON lines (*.jsonl.gz): restore it from the lab's data copy"
                              ) from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataFormatError(f"{path}, line {number}: not a JSON object with `text` and an integer `label` "
                              f"({type(err).__name__}: {err}); restore the file from the lab's data copy") from None
    return {"text": text, "label": label}


def _read_folder(spec: _Spec, path: Path) -> dict[str, list]:
    """The rows of one dataset file; a file with no rows (empty, whitespace only, a header alone) is an error."""
    if spec.folder == "sst2":
        rows = _read_sst2(path)
    elif spec.folder == "imdb":
        rows = _read_imdb(path)
    else:
        with open(path, encoding="utf-8") as fh:  # wikitext: one line a row, as the hub's dataset has it
            rows = {"text": fh.readlines()}
    if not any(t.strip() for t in rows["text"]):
        what = "no text" if rows["text"] else "no rows"
        raise DataFormatError(f"{path} has {what} ({path.stat().st_size} bytes): a {spec.title} file cut short or "
                              "emptied; restore it from the lab's data copy, or point "
                              f"{DATA_VARIABLE} / data_dir at a folder whose {spec.folder}/{path.name} has rows")
    return rows


def _from_hub(spec: _Spec, split: str):
    import datasets

    repo, config = spec.hub
    ds = datasets.load_dataset(repo, config, split=spec.hub_splits[split])
    if "sentence" in ds.column_names:
        ds = ds.rename_column("sentence", "text")
    keep = ["text", "label"] if "label" in ds.column_names else ["text"]
    return ds.remove_columns([c for c in ds.column_names if c not in keep])


def _subset(ds, n: int | None, seed: int):
    if n is None:
        return ds
    if n < 1 or n > len(ds):
        raise ValueError(f"n={n} is out of range: this split has {len(ds)} rows (use n=None for all of them)")
    return ds.shuffle(seed=seed).select(range(n))


def load(name: str, split: str, n: int | None = None, seed: int = 0, data_dir: str | os.PathLike | None = None):
    """Load `split` of dataset `name` (sst2, imdb, wikitext2) from the first source that has it.

    `n` rows are drawn at random with `seed` (all rows when None). The source used is recorded in
    `ds.info.description`.
    """
    import datasets

    spec = _spec(name)
    split = _split(spec, split)
    tried: list[str] = []

    folders = []
    if data_dir is not None:
        folders.append(("data_dir argument", Path(data_dir).expanduser(), True))
    else:
        tried.append("data_dir argument: not given")
    env = os.environ.get(DATA_VARIABLE)
    if env:
        folders.append((f"${DATA_VARIABLE}", Path(env).expanduser(), False))
    else:
        tried.append(f"${DATA_VARIABLE}: not set")

    for label, root, explicit in folders:
        path = root / spec.folder / spec.files[split]
        if path.is_file():
            ds = datasets.Dataset.from_dict(_read_folder(spec, path))
            ds.info.description = f"{spec.title} {split} from {path}"
            return _subset(ds, n, seed)
        where = f"{label}: {path} does not exist" + ("" if root.is_dir() else f" (no folder {root})")
        if explicit:
            raise DataNotFoundError(
                f"{spec.title} ({split}) not found. {where}. Pass a folder laid out like the lab's shared copy "
                f"({spec.folder}/{spec.files[split]}), or leave data_dir out to use ${DATA_VARIABLE} or the hub."
            )
        tried.append(where)

    try:
        ds = _from_hub(spec, split)
    except Exception as err:  # noqa: BLE001 - offline, missing repo, auth ...: all reported below
        tried.append(f"hub {spec.hub[0]}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        raise DataNotFoundError(
            f"{spec.title} ({split}) could not be loaded from any source. Tried:\n  - "
            + "\n  - ".join(tried)
            + f"\nFix: set {DATA_VARIABLE} to a folder with {spec.folder}/{spec.files[split]} (the lab's copy is "
            f"../shared/data), pass data_dir=..., or connect to the Hugging Face hub."
        ) from err
    ds.info.description = f"{spec.title} {split} from the hub ({spec.hub[0]})"
    return _subset(ds, n, seed)


def load_sst2(split: str = "train", n: int | None = None, seed: int = 0, data_dir=None):
    """SST-2 sentences with labels (1 = positive); `validation` is GLUE's dev set (872 rows)."""
    return load("sst2", split, n, seed, data_dir)


def load_imdb(split: str = "train", n: int | None = None, seed: int = 0, data_dir=None):
    """IMDB movie reviews with labels (1 = positive)."""
    return load("imdb", split, n, seed, data_dir)


def load_text_classification(name: str = "sst2", split: str = "train", n: int | None = None, seed: int = 0,
                             data_dir=None):
    """SST-2 or IMDB by name, as (text, label) rows."""
    if _spec(name).folder not in ("sst2", "imdb"):
        raise ValueError(f"{name!r} is not a text-classification dataset; use 'sst2' or 'imdb'")
    return load(name, split, n, seed, data_dir)


def load_wikitext2(split: str = "test", data_dir=None):
    """WikiText-2 (tokenised variant) as text lines; the lab uses `validation` to train and `test` for perplexity."""
    return load("wikitext2", split, None, 0, data_dir)


def wikitext2_lines(split: str = "test", data_dir=None) -> list[str]:
    """WikiText-2 `split` as its text lines. Through `load_wikitext2`; on a machine without the `datasets`
    package (a bare GPU box) the same file is read straight from the folder (`data_dir` or $LABKIT_DATA_DIR)."""
    try:
        return list(load_wikitext2(split, data_dir=data_dir)["text"])
    except ImportError as err:  # `datasets` is not installed
        spec = DATASETS["wikitext2"]
        split = _split(spec, split)
        root = data_dir or os.environ.get(DATA_VARIABLE)
        path = Path(root).expanduser() / spec.folder / spec.files[split] if root else None
        if path is None or not path.is_file():
            raise ImportError(f"`datasets` cannot be imported ({err}) and no WikiText-2 file was found for split "
                              f"{split!r}: set {DATA_VARIABLE} to a folder with {spec.folder}/{spec.files[split]}"
                              ) from err
        print(f"note: `datasets` unavailable ({err}); reading {path} directly")
        return _read_folder(spec, path)["text"]


def source_of(ds) -> str:
    """Where a labkit-loaded dataset came from."""
    return ds.info.description or "unknown source"


def tokenize_classification(ds, tokenizer, max_length: int = 128, padding: bool | str = False):
    """Tokenise (text, label) rows, truncating to `max_length`; pad later with a collator unless `padding`."""
    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length, padding=padding)

    return ds.map(encode, batched=True, remove_columns=["text"], desc="tokenising")


def lm_token_blocks(ds, tokenizer, block_size: int, max_blocks: int | None = None) -> torch.Tensor:
    """Concatenate a text dataset, tokenise it once and cut it into `[n_blocks, block_size]` token ids."""
    if block_size < 2:
        raise ValueError("block_size must be at least 2 tokens")
    text = "".join(ds["text"])
    ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    n_blocks = len(ids) // block_size
    if max_blocks is not None:
        n_blocks = min(n_blocks, max_blocks)
    if n_blocks == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one block of {block_size}")
    return torch.tensor(ids[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)


def describe_sources(data_dir=None):
    """A table of every dataset split the lab uses: rows and where they come from (or why they can't load)."""
    import pandas as pd

    wanted = [("sst2", "train"), ("sst2", "validation"), ("imdb", "train"), ("imdb", "test"),
              ("wikitext2", "validation"), ("wikitext2", "test")]
    rows = []
    for name, split in wanted:
        try:
            ds = load(name, split, data_dir=data_dir)
            rows.append({"dataset": DATASETS[name].title, "split": split, "rows": len(ds), "source": source_of(ds)})
        except DataNotFoundError as err:
            rows.append({"dataset": DATASETS[name].title, "split": split, "rows": 0,
                         "source": "NOT FOUND: " + str(err).splitlines()[0]})
        except DataFormatError as err:
            rows.append({"dataset": DATASETS[name].title, "split": split, "rows": 0, "source": f"BROKEN: {err}"})
    return pd.DataFrame(rows)
