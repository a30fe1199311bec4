#!/bin/sh
# Lines of labkit's runner code: the experiments, the benchmark command (labkit.bench, labkit.cli), result files
# (labkit.results), and the benchmark code in the library layers (labkit.measure, the attention sweep, kernel
# benchmark and Triton FA2 benchmark). Files that do not exist are skipped, so the same command counts any
# version of the tree: `sh etc/runner_lines.sh` from the repository root.
cd "$(dirname "$0")/.." || exit 1
files=$(find labkit/experiments labkit/bench labkit/results labkit/measure -name '*.py' 2>/dev/null; \
        ls labkit/cli.py labkit/attention/triton_fa2_bench.py labkit/attention/sweep.py labkit/attention/kernels.py \
        2>/dev/null)
# shellcheck disable=SC2086
wc -l $files | sort -n | tail -1
