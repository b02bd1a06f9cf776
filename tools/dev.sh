#!/usr/bin/env bash
# Rebuild the extension in place (release) inside an existing .venv: the quick dev loop.
# Extra arguments go to `maturin develop` (e.g. --profile profiling).
set -euo pipefail
cd "$(dirname "$0")/.."
export VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH"
rm -f pyft/_core*.so pyft/_core*.pyd
maturin develop --release --skip-install "$@"
