#!/usr/bin/env bash
# Create .venv with the pinned course stack and llmkit, and register the Jupyter kernel "llmkit".
# Safe to re-run: reinstalls only when requirements.txt or pyproject.toml changed.
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 bash setup.sh   picks a torch CUDA build first.
set -euo pipefail
cd "$(dirname "$0")"

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python_bin="$candidate"; break
    fi
  done
fi
if [ -z "$python_bin" ]; then
  echo "setup.sh: Python 3.11 not found; install it (e.g. conda create -n llmkit python=3.11) or set PYTHON=/path/to/python3.11" >&2
  exit 2
fi

[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
stamp=.venv/.llmkit-installed
wanted="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1) ${TORCH_INDEX_URL:-}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    .venv/bin/pip install "$(grep '^torch==' requirements.txt)" --index-url "$TORCH_INDEX_URL"
  fi
  .venv/bin/pip install --progress-bar off -r requirements.txt -e .
  echo "$wanted" > "$stamp"
fi
.venv/bin/python -m ipykernel install --user --name llmkit --display-name "Python (llmkit)" >/dev/null
echo "setup.sh: .venv ready (kernel 'llmkit' registered)"
