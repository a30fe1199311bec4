"""labkit and the CPU lessons without Triton, as on macOS or Windows (Triton ships for Linux only).

Each test runs a fresh Python with tests/no_triton first on PYTHONPATH: its sitecustomize makes `triton` absent
(`sys.modules["triton"] = None`), for labkit, for torch and for notebook kernels started from that process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HIDE = ROOT / "tests" / "no_triton"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HIDE), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("TRITON_INTERPRET", None)
    env.setdefault("LABKIT_PROFILE", "quick")
    return env


def _run(code: str, timeout: int = 600) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, (f"exit {out.returncode}\n--- stdout\n{out.stdout[-3000:]}\n"
                                 f"--- stderr\n{out.stderr[-3000:]}")
    return out.stdout


def test_triton_is_really_hidden():
    out = _run("""
        import importlib.util
        try:
            import triton
        except ModuleNotFoundError:
            print("import refused")
        print("spec", importlib.util.find_spec("triton"))
        import torch.utils._triton as t
        print("torch sees triton", t.has_triton())
    """)
    assert "import refused" in out and "spec None" in out and "torch sees triton False" in out


def test_every_labkit_module_imports_and_the_triton_ones_say_why_not():
    out = _run("""
        import importlib, pkgutil
        import labkit
        from labkit import env
        failed = {}
        for m in pkgutil.walk_packages(labkit.__path__, "labkit."):
            if m.name.rsplit(".", 1)[-1] == "__main__":
                continue
            try:
                importlib.import_module(m.name)
            except ImportError as err:
                failed[m.name] = str(err)
        print("failed", sorted(failed))
        print("why", failed.get("labkit.attention.triton_fa2", ""))
        print("status", env.triton_status())
    """)
    assert "failed ['labkit.attention.triton_fa2']" in out
    assert "needs Triton, which is not installed here" in out and "Linux on x86_64 and aarch64" in out
    assert "status (False, 'Triton is not installed here" in out


def test_what_the_cpu_lessons_call_runs_without_triton():
    out = _run("""
        import copy
        import torch
        from torchao.quantization import quantize_

        from labkit import attention, env
        from labkit.attention import set_backend
        from labkit.models import build_from_shape
        from labkit.quant import int8_kernel as ik
        from labkit.quant.int8_linear import LabkitInt8WeightOnlyConfig, labkit_int8_modules
        from labkit.quant.selection import selection_filter

        status = attention.backend_status("cpu")
        print("triton-fa2:", status["triton-fa2"])
        print("sdpa:", status["sdpa"])
        model = build_from_shape("tiny-llama", dtype=torch.float32, device="cpu")
        try:
            set_backend(model, "triton-fa2")
        except Exception as err:
            print("set_backend refused:", type(err).__name__, err)
        ok, why = ik.triton_available("cpu")
        print("kernel available:", ok, why)
        codes, scale = ik.quantize_per_channel(torch.randn(8, 16))
        try:
            ik.int8_weight_only_mm(torch.randn(1, 16, dtype=torch.bfloat16), codes, scale)
        except RuntimeError as err:
            print("kernel refused:", err)
        hybrid = build_from_shape("tiny-llama", dtype=torch.bfloat16, device="cpu")
        quantize_(hybrid, LabkitInt8WeightOnlyConfig(), filter_fn=selection_filter(hybrid, r"\\.mlp\\."))
        ids = torch.randint(0, hybrid.config.vocab_size, (1, 5))
        with torch.inference_mode():
            out = hybrid.generate(ids, max_new_tokens=3, do_sample=False)
        print("int8 linears:", len(labkit_int8_modules(hybrid)), "generated", out.shape[1] - ids.shape[1])
        print("source:", env.function_source("labkit.attention.triton_fa2", "_attention_fwd").splitlines()[1][:30])
        print(env.report())
    """)
    assert "triton-fa2: " in out and "triton-fa2: available" not in out and "sdpa: available" in out
    assert "set_backend refused:" in out
    assert "kernel available: False the triton package is not installed" in out and "kernel refused:" in out
    assert "int8 linears: 6 generated 3" in out  # the INT8 Linear's dequantize + matmul path
    assert "source: def _attention_fwd(" in out


@pytest.mark.slow
@pytest.mark.parametrize("notebook", ["02b_triton_flash_attention.ipynb", "03b_making_8bit_fast.ipynb"])
def test_the_triton_lessons_run_without_triton(notebook, tmp_path):
    """The lessons that run labkit's Triton kernels, executed as nbmake does, with Triton hidden: each kernel cell
    says why it skips and shows the committed results instead (about 30 s each)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbmake", "--nbmake-timeout=900",
         f"--rootdir={tmp_path}", str(ROOT / "notebooks" / notebook)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
