#!/usr/bin/env bash
# Build the flash-attn package (transformers' `flash_attention_2` backend) from its source distribution into a
# wheel that `pip install` takes, for ONE GPU architecture, offline, resumably.
#
#   tools/build_flash_attn.sh [SDIST]           # SDIST: flash_attn-<version>.tar.gz (default: .carry/flash_attn-*.tar.gz)
#
# A full build (8 head dims x 2 dtypes x causal/not x forward/backward/split-KV, 73 objects) takes about 20 minutes
# on 16 cores. FA_HEAD_DIMS and FA_DTYPES build a subset instead; the built package then refuses other head dims and
# dtypes with a clear error (a head dim routes to the smallest built one at least as large, as flash-attn itself
# does, so 32 runs on the 64 kernels and 96 on the 128 ones), and records the subset in `flash_attn.LABKIT_BUILD`.
#
# Settings (environment):
#   FA_ARCH=90              compute capability to build for (90 = Hopper, 80 = Ampere A100)
#   FA_HEAD_DIMS=64,128     head dims to build ("all" = 32,64,96,128,192,256); 64 and 128 cover SmolLM2 and Llama
#   FA_DTYPES=bf16          bf16 and/or fp16 ("bf16,fp16")
#   FA_BUILD_DIR=/tmp/flash-attn-build   where the sources are unpacked and compiled; run the script again with the
#                           same settings and it resumes: ninja keeps the objects that finished
#   FA_WHEEL_DIR=dist/flash-attn         where the wheel goes
#   MAX_JOBS (default: one per object, at most the cores), NVCC_THREADS (default 1)
#
# Getting the source distribution on a machine with network (the GPU machine may have none), in the lab's .venv:
#   FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-build-isolation --no-binary :all: \
#       flash-attn==2.8.3.post2 -d .carry
# With network and a matching prebuilt wheel, none of this is needed: `pip install flash-attn --no-build-isolation`.
set -euo pipefail

die() { echo "build_flash_attn: $*" >&2; exit 2; }

sdist=${1:-}
if [ -z "$sdist" ]; then
  sdist=$(ls .carry/flash_attn-*.tar.gz 2>/dev/null | sort | tail -n 1 || true)
fi
[ -n "$sdist" ] && [ -f "$sdist" ] || die "no source distribution: pass its path, or download it into .carry/ (see the \
header of $0)"
sdist=$(cd "$(dirname "$sdist")" && pwd)/$(basename "$sdist")

arch=${FA_ARCH:-90}
head_dims=${FA_HEAD_DIMS:-64,128}
[ "$head_dims" = all ] && head_dims=32,64,96,128,192,256
dtypes=${FA_DTYPES:-bf16}
build_dir=${FA_BUILD_DIR:-/tmp/flash-attn-build}
wheel_dir=$(mkdir -p "${FA_WHEEL_DIR:-dist/flash-attn}" && cd "${FA_WHEEL_DIR:-dist/flash-attn}" && pwd)
python=${PYTHON:-python3}

for d in ${head_dims//,/ }; do
  case $d in 32|64|96|128|192|256) ;; *) die "FA_HEAD_DIMS=$head_dims: $d is not one of 32,64,96,128,192,256";; esac
done
for t in ${dtypes//,/ }; do
  case $t in bf16|fp16) ;; *) die "FA_DTYPES=$dtypes: $t is not bf16 or fp16";; esac
done
[[ $arch =~ ^[0-9]+$ ]] || die "FA_ARCH=$arch: give a compute capability as digits, e.g. 90 for Hopper"
command -v nvcc >/dev/null || die "nvcc not found: flash-attn compiles CUDA code; put the CUDA toolkit's bin on PATH"
"$python" -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' \
  || die "$python's torch has no CUDA: flash-attn builds against a CUDA build of torch"

config="sdist=$(basename "$sdist") arch=$arch head_dims=$head_dims dtypes=$dtypes"
src=$build_dir/src
if [ -f "$build_dir/config" ] && [ "$(cat "$build_dir/config")" != "$config" ]; then
  die "$build_dir holds a build with other settings ($(cat "$build_dir/config")); remove it or set FA_BUILD_DIR"
fi
if [ ! -f "$build_dir/config" ]; then
  echo "unpacking $(basename "$sdist") into $src"
  rm -rf "$src" && mkdir -p "$src"
  tar -xzf "$sdist" -C "$src" --strip-components=1
  # keep only the chosen kernels, and make the dispatch refuse the others instead of failing to load
  "$python" - "$src" "$head_dims" "$dtypes" <<'PY'
import re, sys
from pathlib import Path
src, dims, dtypes = Path(sys.argv[1]), [int(d) for d in sys.argv[2].split(",")], sys.argv[3].split(",")
dims = sorted(set(dims))
setup = src / "setup.py"
text = setup.read_text()
def keep(m):
    name = m.group(1)
    k = re.search(r"hdim(\d+)_(bf16|fp16)", name)
    return m.group(0) if k is None or (int(k.group(1)) in dims and k.group(2) in dtypes) else ""
text, n = re.subn(r'\s*"(csrc/flash_attn/src/flash_[a-z_]+hdim\d+_(?:bf16|fp16)[a-z_]*_sm80\.cu)",', keep, text)
assert n == 72, f"expected 72 kernel sources in setup.py, found {n}: this script knows flash-attn 2.8's layout"
setup.write_text(text)
switch = src / "csrc/flash_attn/src/static_switch.h"
h = switch.read_text()
branches = "".join(f"    {'if' if i == 0 else '} else if'} (HEADDIM <= {d}) {{ \\\n"
                   f"      constexpr static int kHeadDim = {d}; \\\n      return __VA_ARGS__(); \\\n"
                   for i, d in enumerate(dims))
refuse = (f'    }} \\\n    TORCH_CHECK(false, "this flash-attn build has kernels for head dims <= {dims[-1]} only '
          f'(built: {",".join(map(str, dims))}); got ", HEADDIM, ". Rebuild with FA_HEAD_DIMS"); \\\n')
new = f"#define HEADDIM_SWITCH(HEADDIM, ...) \\\n  [&] {{ \\\n{branches}{refuse}  }}()\n"
h, n = re.subn(r"#define HEADDIM_SWITCH\(HEADDIM, \.\.\.\).*?\}\(\)\n", lambda _: new, h, flags=re.S)
assert n == 1, "HEADDIM_SWITCH not found in static_switch.h"
if dtypes != ["bf16", "fp16"] and dtypes != ["fp16", "bf16"]:
    only, kind = ("cutlass::bfloat16_t", "bf16") if dtypes == ["bf16"] else ("cutlass::half_t", "fp16")
    wrong = "COND" if kind == "bf16" else "!(COND)"
    fp16 = (f"#define FP16_SWITCH(COND, ...) \\\n  [&] {{ \\\n"
            f'    TORCH_CHECK(!({wrong}), "this flash-attn build has {kind} kernels only. Rebuild with FA_DTYPES"); \\\n'
            f"    using elem_type = {only}; \\\n    return __VA_ARGS__(); \\\n  }}()\n")
    h, n = re.subn(r"#define FP16_SWITCH\(COND, \.\.\.\).*?\}\(\)\n", lambda _: fp16, h, flags=re.S)
    assert n == 1, "FP16_SWITCH not found in static_switch.h"
switch.write_text(h)
# the same refusal in Python, before the extension is called: a clear RuntimeError on any torch build
(src / "flash_attn/_labkit_build.py").write_text(f'''"""Written by the lab's tools/build_flash_attn.sh: this build of
flash-attn has kernels for head dims {dims} and dtypes {dtypes} only; other inputs are refused here."""
import torch
import flash_attn_2_cuda as _extension

HEAD_DIMS, DTYPES = {dims}, {dtypes}
_NAMES = {{torch.bfloat16: "bf16", torch.float16: "fp16"}}
_CHECKED = ("fwd", "varlen_fwd", "bwd", "varlen_bwd", "fwd_kvcache")


def check(tensor):
    """Refuse a head dim above the largest built one, or a dtype that was not built (the fix named)."""
    if tensor.shape[-1] > max(HEAD_DIMS):
        raise RuntimeError(f"this flash-attn build has kernels for head dims up to {{max(HEAD_DIMS)}} (built: "
                           f"{{HEAD_DIMS}}); got head dim {{tensor.shape[-1]}}. Rebuild with FA_HEAD_DIMS")
    if _NAMES.get(tensor.dtype) not in (None, *DTYPES):
        raise RuntimeError(f"this flash-attn build has {{DTYPES}} kernels only; got {{tensor.dtype}}. "
                           "Rebuild with FA_DTYPES")


class _Extension:
    """flash_attn_2_cuda, with the first tensor of each attention call checked (q, or dout in backward)."""

    def __getattr__(self, name):
        function = getattr(_extension, name)
        if name not in _CHECKED:
            return function

        def checked(first, *args, **kwargs):
            check(first)
            return function(first, *args, **kwargs)

        return checked


flash_attn_gpu = _Extension()
''')
interface = src / "flash_attn/flash_attn_interface.py"
code = interface.read_text()
assert code.count("    import flash_attn_2_cuda as flash_attn_gpu\n") == 1, "flash_attn_interface.py changed layout"
interface.write_text(code.replace("    import flash_attn_2_cuda as flash_attn_gpu\n",
                                  "    from flash_attn._labkit_build import flash_attn_gpu\n"))
init = src / "flash_attn/__init__.py"
init.write_text(init.read_text() + f"\n# built by the lab's tools/build_flash_attn.sh: only these kernels exist\n"
                f"LABKIT_BUILD = {{'head_dims': {dims}, 'dtypes': {dtypes}}}\n")
print(f"kept {text.count('hdim')} kernel sources: head dims {dims}, dtypes {dtypes}")
PY
  echo "$config" > "$build_dir/config"
else
  echo "resuming the build in $src ($config)"
fi

objects=$(grep -c '_sm80\.cu",' "$src/setup.py")
cores=$(nproc)
export MAX_JOBS=${MAX_JOBS:-$(( objects + 1 < cores ? objects + 1 : cores ))}
export NVCC_THREADS=${NVCC_THREADS:-1}
export FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTN_CUDA_ARCHS=$arch
done_objects() { find "$src/build" -name '*.o' 2>/dev/null | wc -l; }
echo "building $objects kernel objects + the API for sm_$arch with MAX_JOBS=$MAX_JOBS NVCC_THREADS=$NVCC_THREADS" \
     "($(done_objects) objects already built)"
start=$(date +%s)
( while sleep 60; do echo "  $(( ($(date +%s) - start) / 60 )) min: $(done_objects) of $(( objects + 1 )) objects"; done ) &
ticker=$!
trap 'kill $ticker 2>/dev/null' EXIT
(cd "$src" && "$python" -m pip wheel --no-build-isolation --no-deps --no-cache-dir -w "$wheel_dir" . \
   > "$build_dir/build.log" 2>&1) || { tail -n 40 "$build_dir/build.log"; die "the build failed (log: $build_dir/build.log); \
run the script again to resume it"; }
wheel=$(ls -t "$wheel_dir"/flash_attn-*.whl | head -n 1)
echo "built $wheel ($(du -h "$wheel" | cut -f1)) in $(( $(date +%s) - start )) s: head dims $head_dims, dtypes $dtypes," \
     "sm_$arch"
echo "install it with: pip install --no-deps $wheel"
