#!/usr/bin/env bash
# The package's Triton kernels under both ends of the supported range, triton >= 3.6 (torch 2.11
# ships 3.6.0, later torch 3.8 / 3.9).
#
#   tools/test_triton_versions.sh [MAIN_PYTHON]      # default: .venv/bin/python
#
# Run from the repository root after the README's set-up: the main test tier runs under that
# venv's triton (3.9.0) and compiles the default path's launches there.  This adds:
#
# - under the main venv's triton: the sm_90 compile of the fast erank's launches (those beyond the
#   default path; tests/test_triton_compile.py with --interpreter-full);
# - under triton 3.6.0, in a second venv (.venv-triton36: torch 2.13.0 CPU, the newest numpy, the
#   repository on PYTHONPATH with the extension the main venv built, same torch, so same ABI):
#   the sm_90 compile of every launch, and the interpreter tests of every Triton op.
set -euo pipefail
cd "$(dirname "$0")/.."
main_python=${1:-.venv/bin/python}
venv=.venv-triton36

if [ ! -x "$venv/bin/python" ]; then
  python3.11 -m venv "$venv"
fi
"$venv/bin/pip" install -q torch==2.13.0 numpy pytest hypothesis triton==3.6.0

compile_tests=tests/test_triton_compile.py
interpreter_tests="tests/test_triton_prune.py tests/test_triton_entropy.py tests/test_triton_eigh.py
  tests/test_triton_erank_fast.py tests/test_triton_properties.py tests/test_triton_launches.py tests/test_host_syncs.py"

echo "== triton $("$main_python" -c 'import triton; print(triton.__version__)'): the fast erank's sm_90 compile"
"$main_python" -m pytest -q -p no:cacheprovider "$compile_tests" --interpreter-full -k fast
echo "== triton $("$venv/bin/python" -c 'import triton; print(triton.__version__)'): sm_90 compile and interpreter"
# shellcheck disable=SC2086 # the test list is split on purpose
PYTHONPATH=$PWD "$venv/bin/python" -m pytest -q -p no:cacheprovider "$compile_tests" --interpreter-full $interpreter_tests
