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
# Exact versions from the lock (tools/lock_deps.py writes it); pyproject.toml keeps the ranges.
LOCK="$ROOT/tools/requirements.lock"
echo "[setup] installing dependencies (extras: $EXTRAS, versions from tools/requirements.lock)"
mapfile -t REQUIREMENTS < <(python tools/lock_deps.py --requirements "$EXTRAS")
python -m pip install -q -c "$LOCK" "${REQUIREMENTS[@]}"
# A stale extension from an older build would shadow the fresh one.
rm -f pyft/_core*.so pyft/_core*.pyd
echo "[setup] building the Rust extension (release)"
maturin develop --release --extras "$EXTRAS" -q 2>&1 | grep -vE '^\s*(Compiling|Finished|Building|Running|Blocking)|Requirement already satisfied' || true
python -c "import pyft._core" || { echo "[setup] the extension failed to build or import" >&2; exit 1; }
