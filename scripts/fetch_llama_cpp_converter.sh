#!/usr/bin/env bash
# Fetch llama.cpp's HF -> GGUF converter (convert_hf_to_gguf.py) without git or network beyond PyPI.
#
# The llama-cpp-python sdist vendors llama.cpp; we download it with pip (nothing is built or installed)
# and extract only what the converter needs: convert_hf_to_gguf.py, its conversion/ package, gguf-py/
# (the converter puts it first on sys.path itself), LICENSE and the converter's requirements file.
# sentencepiece, which the converter imports for every Llama model (even one with no tokenizer.model),
# goes into <dest>/pydeps, never into the venv; `harness gguf` puts that folder on PYTHONPATH.
#
# Usage: scripts/fetch_llama_cpp_converter.sh [DEST]
#   DEST defaults to $LLAMA_CPP_DIR, else ${HARNESS_CACHE:-$HOME/.cache/lora-harness}/llama.cpp.
#   PYTHON picks the interpreter whose pip is used (default: .venv/bin/python if present, else python3).
# Prints the converter's path as the only line on stdout; idempotent (a second run only prints it).
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"          # verified: converts the harness's merged SmolLM2 folder
SENTENCEPIECE_SPEC="sentencepiece==0.2.3"  # within the converter's pin (>=0.1.98,<0.3.0)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo_root/.venv/bin/python" ]]; then PYTHON="$repo_root/.venv/bin/python"; else PYTHON="python3"; fi
fi
dest="${1:-${LLAMA_CPP_DIR:-${HARNESS_CACHE:-$HOME/.cache/lora-harness}/llama.cpp}}"
converter="$dest/convert_hf_to_gguf.py"
stamp="$dest/VERSION"

if [[ -f "$converter" && -f "$stamp" && "$(cat "$stamp")" == "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" ]]; then
    echo "$converter"
    exit 0
fi

if [[ -e "$dest" && ! -f "$stamp" && -n "$(ls -A "$dest" 2>/dev/null)" ]]; then
    # Never replace a folder this script did not write (a wrong DEST could be $HOME).
    echo "error: $dest exists, is not empty and was not written by this script; pick another DEST" >&2
    exit 1
fi
mkdir -p "$(dirname "$dest")"
work="$(mktemp -d "$(dirname "$dest")/.llama.cpp.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "fetching llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist (about 75 MB) with pip ..." >&2
if ! "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$work/dl" >&2; then
    echo "error: pip could not download llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (is PyPI reachable?)" >&2
    exit 1
fi
sdist="$(ls "$work"/dl/llama_cpp_python-*.tar.gz 2>/dev/null | head -n 1)"
if [[ -z "$sdist" ]]; then
    echo "error: pip finished but no llama_cpp_python-*.tar.gz is in $work/dl" >&2
    exit 1
fi

# Extract with Python's tarfile: same behaviour on GNU and BSD systems, and path traversal is refused.
"$PYTHON" - "$sdist" "$work/tree" <<'EOF'
import sys
import tarfile
from pathlib import Path

sdist, out = sys.argv[1], Path(sys.argv[2])
keep_files = {"convert_hf_to_gguf.py", "LICENSE", "requirements/requirements-convert_hf_to_gguf.txt",
              "requirements/requirements-convert_legacy_llama.txt"}
keep_dirs = ("conversion/", "gguf-py/gguf/")
found = 0
with tarfile.open(sdist, "r:gz") as tar:
    for member in tar.getmembers():
        parts = member.name.split("/", 3)  # llama_cpp_python-X/vendor/llama.cpp/<rel>
        if len(parts) < 4 or parts[1:3] != ["vendor", "llama.cpp"] or not member.isfile():
            continue
        rel = parts[3]
        if rel in keep_files or rel.startswith(keep_dirs) or rel == "gguf-py/LICENSE":
            if ".." in Path(rel).parts:
                sys.exit(f"error: refusing suspicious path {member.name}")
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            target.write_bytes(src.read())
            found += 1
for needed in ("convert_hf_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/__init__.py"):
    if not (out / needed).is_file():
        sys.exit(f"error: {needed} is not in {sdist}; this llama-cpp-python release has a different layout")
print(f"extracted {found} files", file=sys.stderr)
EOF

echo "installing $SENTENCEPIECE_SPEC into $dest/pydeps (not into the venv) ..." >&2
if ! "$PYTHON" -m pip install --quiet --no-deps --only-binary :all: --target "$work/tree/pydeps" "$SENTENCEPIECE_SPEC" >&2; then
    echo "error: pip could not install $SENTENCEPIECE_SPEC (no wheel for this platform?)" >&2
    exit 1
fi

echo "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" > "$work/tree/VERSION"
rm -rf "$dest"
mv "$work/tree" "$dest"
echo "$converter"
