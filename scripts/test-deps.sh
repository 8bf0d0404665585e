#!/usr/bin/env bash
# Everything `cargo test --workspace` needs besides the Rust toolchain:
#   - the real sample models (scripts/fetch-sample-models.sh), and
#   - the Python packages of the real-client tests (openai and anthropic, and trustme for a
#     throwaway TLS certificate authority), installed into a cache folder, never into the system
#     Python: the tests find them through SEEK_PYDEPS (default below).
#
#   scripts/test-deps.sh && cargo test --workspace
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/fetch-sample-models.sh"

PY=${PYTHON:-python3}
pydeps=${SEEK_PYDEPS:-${XDG_CACHE_HOME:-$HOME/.cache}/seek/pydeps}
if PYTHONPATH="$pydeps" "$PY" -c "import openai, anthropic, trustme" 2>/dev/null; then
  echo "ok  $pydeps (openai, anthropic, trustme)"
else
  echo "  installing openai, anthropic and trustme into $pydeps" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check --target "$pydeps" \
    "openai>=1.40" "anthropic>=0.40" "trustme>=1.1" >&2
  echo "new $pydeps (openai, anthropic, trustme)"
fi
