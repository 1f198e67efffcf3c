#!/usr/bin/env bash
# The C++ kernels' tests under AddressSanitizer: builds an instrumented copy of ada_vtp_kernels._C
# in a scratch folder (the working tree's files, not the installed build) and runs the tests that
# call the C++ op with gcc's libasan preloaded into python.  Any heap or stack overflow, use after
# free or out-of-bounds read aborts the run with ASan's report.
#
#   tools/asan_tests.sh                      # the default test files below
#   tools/asan_tests.sh tests/test_ops.py    # others
#
# Needs the venv of the README's test command (PYTHON=... for another interpreter).  Leak checking
# is off: CPython and torch keep allocations alive until exit by design.  About 5 minutes to build
# on two cores, then the tests at about 2x their usual time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
work=$(mktemp -d)
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work")
cd "$work"
CFLAGS="-fsanitize=address -fno-omit-frame-pointer" LDFLAGS="-fsanitize=address" \
  "$python" setup.py build_ext --inplace >build.log 2>&1 || { tail -30 build.log; exit 1; }
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  tests=(tests/test_conformance.py tests/test_prune_cpu.py tests/test_validation.py tests/test_properties.py
         tests/test_determinism.py tests/test_ops.py tests/test_erank_fast.py)
fi
# libstdc++ preloaded beside libasan: python itself does not link it, so ASan's __cxa_throw
# interceptor finds no real __cxa_throw at start-up and aborts on the first C++ exception (every
# ValueError the op raises is one) with "CHECK failed" and no report
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 LD_PRELOAD
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
# python -m pytest from this folder imports its ada_vtp_kernels (with the instrumented _C) first
"$python" -c "import ada_vtp_kernels; assert ada_vtp_kernels.__file__.startswith('$work'), ada_vtp_kernels.__file__"
"$python" -m pytest "${tests[@]}" -q -p no:cacheprovider
