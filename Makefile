# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv if missing
# and installs what it needs, pinned by constraints.txt; `make test` also installs the system
# packages the aarch64 TVM tests need (apt, where it can), the aarch64 TVM runtime and the
# emulated Raspberry Pi's sysroot and wheels (cached in ~/.cache/edgec/emulate).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test lint format clean system-deps emulate-cache

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo derives students, so it needs the train extra (torch 2.13.0, the CPU build).
$(VENV)/.demo-installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[train]'
	touch $@

# The tests need the dev, train (torch 2.13.0 CPU build), tvm (Apache TVM 0.27), litert
# (ai-edge-litert 2.3.0) and trace (OpenTelemetry) extras.
$(VENV)/.test-installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[dev,train,tvm,litert,trace]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/edgec compile examples/digits/teacher.onnx --target raspberry-pi-4 \
		--data digits --budget-ms 5 -o out/demo --force
	$(BIN)/edgec check out/demo  # gates on the budget the bundle was compiled for

# The aarch64 cross compiler, its C library and qemu-user (apt-get, --no-install-recommends);
# without apt or root it warns, and the tests that need them skip and say why.
system-deps:
	@.ci/system-deps.sh

# The aarch64 TVM runtime the qemu test runs the Raspberry Pi build on (from the pinned
# wheels); without it (offline) that test skips and says why.
$(VENV)/aarch64-tvm-runtime/libtvm_runtime.so: $(VENV)/.test-installed
	@PYTHON=$(BIN)/python .ci/aarch64-tvm-runtime.sh $(VENV)/aarch64-tvm-runtime \
		|| echo "warning: no aarch64 TVM runtime; the qemu test will skip" >&2

# The emulated Raspberry Pi's files (`edgec run --emulate`, docs/emulate.md): Debian's arm64
# Python and the aarch64 wheels the emulation tests run, fetched once into
# ~/.cache/edgec/emulate (or EDGEC_EMULATE_CACHE); a no-op when cached. Offline it warns, and
# those tests skip.
EMULATE_WHEELS := numpy onnxruntime pillow ai-edge-litert apache-tvm apache-tvm-ffi \
	typing-extensions ml-dtypes
emulate-cache: $(VENV)/.test-installed
	@$(BIN)/python -m edgec.emulate.sysroot $(EMULATE_WHEELS) \
		|| echo "warning: no emulated-device cache; the --emulate tests will skip" >&2

test: $(VENV)/.test-installed system-deps $(VENV)/aarch64-tvm-runtime/libtvm_runtime.so \
		emulate-cache
	$(BIN)/ruff check src tests examples benchmarks docs
	$(BIN)/ruff format --check src tests examples benchmarks docs
	$(BIN)/pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests examples benchmarks docs

format: $(VENV)/.test-installed
	$(BIN)/ruff format src tests examples benchmarks docs

clean:
	rm -rf out build *.egg-info src/*.egg-info .pytest_cache
