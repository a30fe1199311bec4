"""Making 8-bit fast on the GPU: INT8 and FP8 feed-forward layers against bf16, eager and compiled (notebook 03b).

Four parts (`--parts`, all by default; GPU only):
  kernel   labkit's INT8 Triton kernel alone on the Llama-2-7B feed-forward shapes: launch-configuration sweep,
           correctness against an fp64 reference, latency and achieved memory bandwidth against bf16 cuBLAS and
           against a measured device-to-device copy;
  block    one feed-forward block (gate/up 4096->11008, down 11008->4096, SiLU) at M = 1 ... 8192 tokens: bf16,
           torchao INT8 weight-only, torchao INT8 dynamic (w8a8), labkit INT8, FP8 row-wise; eager and compiled;
           the CUDA kernels each one ran (an INT8 variant that ran no integer/labkit kernel fails its check);
  decode   llama-2-7b shape, random weights: greedy decode, batch 1, static KV cache, 128-token prompt, 136 new
           tokens, eager and compiled (CUDA graphs): bf16 against INT8 feed-forward on labkit's kernel;
  prefill  the same shape at 8k tokens, eager and compiled: bf16, FP8 row-wise FF, INT8 w8a8 FF, FP8 all linear,
           labkit INT8 FF.
One command runs them all into a run folder, runs/fast8bit_<gpu>_<time>/ (labkit.results.run): every measurement
is appended to result.jsonl as it is made and result.json is rewritten; failures and out-of-memory are data
points. When a run is cut short (Ctrl-C, a time limit), the same command with `--resume --out <run folder>` makes
only the measurements its JSONL lacks. `--update-reference` copies a complete full-profile run to
data/reference/fast8bit_<gpu>.json. Exit status 0 complete, 1 failed (a part could not run at all), 2 bad
arguments (checked before any work), 130 interrupted.
"""

from labkit.experiments.fast8bit.block import kernel_check
from labkit.experiments.fast8bit.common import BLOCK_VARIANTS, FEED_FORWARD
from labkit.experiments.fast8bit.driver import run
from labkit.experiments.fast8bit.options import _check_args, add_arguments, check  # noqa: F401 - _check_args: tests
from labkit.experiments.fast8bit.tables import block_table, e2e_table, kernel_table, load_reference
from labkit.experiments.fast8bit.targets import evaluate_targets

__all__ = ["BLOCK_VARIANTS", "FEED_FORWARD", "add_arguments", "block_table", "check", "e2e_table", "evaluate_targets",
           "kernel_check", "kernel_table", "load_reference", "run"]
