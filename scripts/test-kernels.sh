#!/usr/bin/env bash
# The numerics-sensitive tests once more, under other kernels than this CPU picks, so a result
# that holds only for this machine's SIMD/BLAS/oneDNN kernels or thread count fails here rather
# than on a user's machine (Intel with AMX, AMD without AVX-512, ...):
#   1. the baseline kernels: ATen's, oneDNN's (torch's and OpenVINO's convolutions) and MKL's
#      (torch's batch-1 path) without AVX2, NumPy's with none of its dispatched extensions, one thread;
#   2. AVX2 kernels (no AVX-512/AMX) from each of them, two threads.
# OpenBLAS's own choice (OPENBLAS_CORETYPE) is left to the host: some set it to stay correct.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTEST="${PYTEST:-.venv/bin/pytest}"
PYTHON="${PYTHON:-.venv/bin/python}"
# The tests marked `kernels` (pytest -m): preprocessing, reading, predictions, the shipped
# weights' accuracy and the engines' answers. Export parity (tests/test_export.py) runs the
# same engines on the same weights as test_engines.

# NumPy's dispatched extensions as this NumPy names them (X86_V3, AVX512_ICL, ... in 2.x).
dispatched() {
    "$PYTHON" - "$1" <<'EOF'
import sys
import numpy
try:
    from numpy._core._multiarray_umath import __cpu_dispatch__ as names
except ImportError:  # NumPy 1.x
    from numpy.core._multiarray_umath import __cpu_dispatch__ as names
keep = sys.argv[1]  # the extensions to keep: "none", or "avx2" (AVX2 and below)
avx2_or_less = {"SSE", "SSE2", "SSE3", "SSSE3", "SSE41", "POPCNT", "SSE42", "AVX", "F16C", "FMA3", "AVX2",
                "X86_V2", "X86_V3"}
print(" ".join(name for name in names if keep == "none" or name not in avx2_or_less))
EOF
}

# The passes run side by side (they are short and mostly single-threaded), each into its own log,
# printed whole when it ends; the script fails if either does.
logs="$(mktemp -d)"
pids=()
labels=()
trap 'rm -rf "$logs"' EXIT
trap 'kill "${pids[@]}" 2>/dev/null; exit 130' INT TERM
run() {
    local label="$1"
    shift
    env "$@" "$PYTEST" -q -p no:cacheprovider -m "kernels and not slow" tests \
        >"$logs/${#pids[@]}.log" 2>&1 &
    pids+=("$!")
    labels+=("$label")
}

# Plain assignments, so that set -e stops the script if a lookup fails (rather than run with all).
none="$(dispatched none)"
avx2="$(dispatched avx2)"
run "baseline kernels, 1 thread" ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 \
    NPY_DISABLE_CPU_FEATURES="$none" TINYDIGITS_THREADS=1
if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
    run "AVX2 kernels, 2 threads" ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        NPY_DISABLE_CPU_FEATURES="$avx2" TINYDIGITS_THREADS=2
else
    echo "test-kernels: this CPU has no AVX2; the AVX2 pass is left out"
fi

status=0
for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then result=passed; else result=FAILED; status=1; fi
    echo "test-kernels: ${labels[$i]}: $result"
    cat "$logs/$i.log"
done
exit "$status"
