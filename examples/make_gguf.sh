#!/usr/bin/env bash
# Convert the example's merged folder to a q8_0 GGUF with the repository's own tooling.
#
# Why: a team that trained elsewhere often ships a GGUF (llama.cpp, Ollama, LM Studio) rather than a folder;
# this makes the file the evaluator would be handed. The converter is llama.cpp's convert_hf_to_gguf.py,
# fetched once from the pinned llama-cpp-python sdist on PyPI; `harness gguf` runs it and checks the file
# (architecture, tensor count, embedded tokenizer).
#
# Usage: examples/make_gguf.sh [OUT]     OUT defaults to examples/out (holds merged/ from train_trl_peft.py)
# Writes OUT/merged-q8_0.gguf. Run from anywhere; paths are taken from the repository root.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
out="${1:-examples/out}"
if [[ ! -f "$out/merged/config.json" ]]; then
    echo "error: $out/merged/ is not a model folder; run .venv/bin/python examples/train_trl_peft.py first" >&2
    exit 2
fi

start=$(date +%s)
conv="$(PYTHON=.venv/bin/python scripts/fetch_llama_cpp_converter.sh)"
.venv/bin/harness gguf "$out/merged" --converter "$conv" --outtype q8_0 --outfile "$out/merged-q8_0.gguf"
echo "make_gguf: wrote $out/merged-q8_0.gguf in $(( $(date +%s) - start )) s" >&2
