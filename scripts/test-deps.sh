#!/usr/bin/env bash
# Everything `cargo test --workspace` needs besides the Rust toolchain:
#   - the real sample models (scripts/fetch-sample-models.sh), and
#   - the Python packages of the real-client tests (openai, anthropic, langchain-openai, litellm,
#     and trustme for a throwaway TLS certificate authority), installed into a cache folder,
#     never into the system Python: the tests find them through SEEK_PYDEPS (default below).
#
#   scripts/test-deps.sh && cargo test --workspace
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/fetch-sample-models.sh"

PY=${PYTHON:-python3}
pydeps=${SEEK_PYDEPS:-${XDG_CACHE_HOME:-$HOME/.cache}/seek/pydeps}
packages="openai, anthropic, trustme, langchain_openai, litellm"
if PYTHONPATH="$pydeps" "$PY" -c "import $packages" 2>/dev/null; then
  echo "ok  $pydeps ($packages)"
else
  echo "  installing $packages into $pydeps" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check --target "$pydeps" \
    "openai>=1.40" "anthropic>=0.40" "trustme>=1.1" "langchain-openai>=0.3" "litellm>=1.60" >&2
  echo "new $pydeps ($packages)"
fi
