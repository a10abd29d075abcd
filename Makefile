# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv if missing
# and installs what it needs, pinned by constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo derives students, so it needs the train extra (torch 2.13.0, the CPU build).
$(VENV)/.demo-installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[train]'
	touch $@

# The tests need the dev, train (torch 2.13.0 CPU build) and tvm (Apache TVM 0.27) extras.
$(VENV)/.test-installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[dev,train,tvm]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/edgec compile examples/digits/teacher.onnx --target raspberry-pi-4 \
		--data digits --budget-ms 5 -o out/demo --force
	$(BIN)/edgec check out/demo --budget-ms 5

test: $(VENV)/.test-installed
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks
	$(BIN)/pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests examples benchmarks

format: $(VENV)/.test-installed
	$(BIN)/ruff format src tests examples benchmarks

clean:
	rm -rf out build *.egg-info src/*.egg-info .pytest_cache
