# Shared setup for tools/demo and tools/test (sourced, not run).
# Creates or refreshes .venv, installs pyft's dependencies and builds the Rust extension in
# release mode into the source tree (pyft/_core.abi3.so).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
EXTRAS="${PYFT_EXTRAS:-train}"
echo "[setup] installing dependencies (extras: $EXTRAS)"
python -m pip install -q "maturin>=1.9.4,<2"
# A stale extension from an older build would shadow the fresh one.
rm -f pyft/_core*.so pyft/_core*.pyd
echo "[setup] building the Rust extension (release)"
maturin develop --release --extras "$EXTRAS" -q 2>&1 | grep -vE '^\s*(Compiling|Finished|Building|Running|Blocking)|Requirement already satisfied' || true
python -c "import pyft._core" || { echo "[setup] the extension failed to build or import" >&2; exit 1; }
