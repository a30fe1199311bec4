"""Shared fixtures: a tiny dataset folder in the lab's layout, and offline defaults."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _import_triton_kernels_for_the_interpreter() -> None:
    """On a machine without CUDA, import Triton and labkit's Triton kernels with Triton's CPU interpreter on.

    Triton reads TRITON_INTERPRET when a kernel (its own `tl.zeros`, `tl.sum` ... included) is defined, so this
    must happen before anything imports triton. The switch is turned off again at once: the rest of the suite and
    the notebooks see a plain CPU machine, where the GPU-only backends say why they cannot run; the tests of
    the kernels switch it on for themselves (tests/test_triton_fa2.py) or call them on CPU tensors, which
    switches it on around the launch (labkit.quant.int8_kernel).
    """
    import importlib.util
    import sys

    import torch

    if ("triton" in sys.modules or "TRITON_INTERPRET" in os.environ or torch.cuda.is_available()
            or importlib.util.find_spec("triton") is None):
        return
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401

        import labkit.attention.triton_fa2  # noqa: F401
        import labkit.quant.int8_kernel  # noqa: F401
    finally:
        del os.environ["TRITON_INTERPRET"]


_import_triton_kernels_for_the_interpreter()

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_data_dir(tmp_path: Path) -> Path:
    """A folder laid out like ../shared/data with a few rows of each dataset."""
    (tmp_path / "sst2").mkdir()
    rows = ["sentence\tlabel", "a gorgeous film .\t1", "dull and lifeless .\t0", "warm , funny .\t1", "a mess .\t0"]
    (tmp_path / "sst2" / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "sst2" / "dev.tsv").write_text("\n".join(rows[:3]) + "\n", encoding="utf-8")
    (tmp_path / "imdb").mkdir()
    with gzip.open(tmp_path / "imdb" / "test.jsonl.gz", "wt", encoding="utf-8") as fh:
        for i, (text, label) in enumerate([("Loved it.", 1), ("Hated it.", 0)]):
            fh.write(json.dumps({"text": text, "label": label, "id": f"{i}_x.txt"}) + "\n")
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.tokens").write_text(
        " \n = Title = \n \n The cat sat on the mat . It was a <unk> day . \n", encoding="utf-8"
    )
    return tmp_path


@pytest.fixture
def shared_data_dir() -> Path:
    """The lab's real offline copies (`$LABKIT_DATA_DIR` or ../shared/data); skips when absent."""
    candidates = [os.environ.get("LABKIT_DATA_DIR"), str(REPO.parent / "shared" / "data")]
    for c in candidates:
        if c and (Path(c) / "sst2" / "dev.tsv").exists():
            return Path(c)
    pytest.skip("the lab's dataset copies are not here (set LABKIT_DATA_DIR)")


def simulate_eager_oom(monkeypatch, from_len: int) -> None:
    """Make eager attention run out of memory from `from_len` tokens on; other backends run for real."""
    import torch

    from labkit.measure import prefill as prefill_mod

    real = prefill_mod.prefill_callable

    def prefill_callable(model, input_ids):
        if model.config._attn_implementation == "eager" and input_ids.shape[1] >= from_len:
            def boom():
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB (simulated)")
            return boom
        return real(model, input_ids)

    monkeypatch.setattr(prefill_mod, "prefill_callable", prefill_callable)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Run each notebook once: a notebook that the browser test executes (Run All in JupyterLab, failing on any
    error output, as nbmake does) is not executed a second time by nbmake in the same session. Only when the
    browser test can run here and is selected; otherwise nbmake runs every notebook as before."""
    in_browser = {Path(item.callspec.params["notebook"]).resolve() for item in items
                  if getattr(item, "originalname", "") == "test_notebook_in_browser" and hasattr(item, "callspec")}
    if not in_browser:
        return
    import sys

    sys.path.insert(0, str(REPO / "tests" / "browser"))
    from lab_driver import why_no_browser

    if why_no_browser() is not None:
        return
    twice = [item for item in items if type(item).__name__ == "NotebookItem" and Path(item.path).resolve() in in_browser]
    if twice:
        config.hook.pytest_deselected(items=twice)
        items[:] = [item for item in items if item not in twice]


@pytest.fixture(scope="module")
def tiny():
    """A tiny random-weight Llama on the CPU (float32), shared by the hybrid tests of one module."""
    import torch

    from labkit.models import build_from_shape

    return build_from_shape("tiny-llama", dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def blocks():
    """(train, eval) token blocks for `tiny`: 4 and 8 rows of 32 tokens, seeded."""
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 32), generator=g), torch.randint(0, 256, (8, 32), generator=g)
