# BoardLens: `make demo` runs the main job on the bundled model, `make test` runs the suite.
# Both create .venv and install everything first. TORCH_SPEC pins the CPU wheel that lies
# on this machine; GPU users set it to a CUDA build (e.g. TORCH_SPEC='torch==2.13.0' with
# PIP_INDEX_URL pointing at a CUDA index) or install torch themselves first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TOKENS ?= 1000000
GAME ?= othello

.PHONY: venv deps demo test lint bench clean example-reports

venv: $(VENV)/.installed

# constraints.txt pins the runtime dependencies (the image installs the same versions).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,interop]'
	# The reference library our SAE interop is tested against (its nnsight import is for its
	# LM buffer only, so no dependencies are installed).
	$(BIN)/pip install -q --no-deps dictionary-learning==0.1.0 einops tqdm
	touch $@

# System tools the tests need (scripts/system_deps.py says which and why): each installed from
# Debian with apt-get only when its command is missing (prometheus + promtool, stockfish,
# chromium, chromedriver; npm only where apt accepts it beside the machine's Node.js); then,
# from the npm registry, Grafana's published dashboard types with the TypeScript compiler.
deps:
	@$(PY) scripts/system_deps.py
	@test -d tests/deploy/grafana-schema/node_modules/@grafana/schema || \
	  npm ci --silent --no-audit --no-fund --prefix tests/deploy/grafana-schema

demo: venv
	$(BIN)/boardlens up --game $(GAME) --tokens $(TOKENS)

# Two workers: most tests wait on real processes and sockets, so the suite takes ~12 minutes
# on 2 cores instead of ~19 (TEST_WORKERS=0 runs it in one process).
TEST_WORKERS ?= 2
test: venv deps
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

lint: venv
	$(BIN)/ruff check .

# The committed example report (docs/reports/sweep-othello.html) from the bundled model again:
# about 25 minutes on 2 cores. tests/test_example_reports.py says when it is needed.
example-reports: venv
	$(BIN)/python docs/make_examples.py othello

bench: venv
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
