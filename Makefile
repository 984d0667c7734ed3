# Set-up is implicit: every target that needs the environment builds it first (once).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run eval gate app gguf test test-fast lint bench bench-train bench-cache clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/harness models pull

## Main job: train the demo candidate on the embedded model, then evaluate base, adapter and merged.
run: setup
	@$(BIN)/harness pipeline trainers/configs/demo.yaml || { code=$$?; echo "make run: the pipeline finished; exit code $$code is the gate verdict (1 fail, 3 inconclusive; 2 bad input): see the summary above"; exit $$code; }

## Evaluate the embedded base model alone on golden/support_vi.
eval: setup
	$(BIN)/harness eval golden/support_vi

## The demo gate as pytest items (runs the pipeline once, reusing the cached candidate and results).
gate: setup
	$(BIN)/python -m pytest golden/support_vi

## Read-only report viewer on http://localhost:8501 (newest run first).
app: $(STAMP)
	$(BIN)/streamlit run streamlit_app.py

## Convert the newest run's merged model to GGUF with llama.cpp's own converter (fetched from PyPI once).
gguf: $(STAMP)
	@run=$$(ls -d reports/*/merged 2>/dev/null | sort | tail -n 1); \
	test -n "$$run" || { echo "make gguf: no reports/*/merged yet; run 'make run' first"; exit 2; }; \
	conv=$$(PYTHON=$(BIN)/python scripts/fetch_llama_cpp_converter.sh) && \
	$(BIN)/harness gguf "$$run" --converter "$$conv" --outfile "$${run%/merged}/merged-f16.gguf"

## All CPU tests: fast lane (tiny models) and slow lane (real embedded model). GPU tests skip without CUDA.
test: setup lint
	$(BIN)/python -m pytest --run-slow

## Static checks (ruff, configured in pyproject.toml); part of `make test`.
lint: $(STAMP)
	$(BIN)/ruff check .

test-fast: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/bench_eval.py

bench-train: setup
	$(BIN)/python benchmarks/bench_train.py

## The full demo gate from scratch, then unchanged: the rerun's share of the first run's time.
bench-cache: setup
	$(BIN)/python benchmarks/bench_cache.py

clean:
	rm -rf $(VENV)
