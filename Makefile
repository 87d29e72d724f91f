# The two commands of the README: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU-only torch for the offline stage and the torch references (PyPI's default build is CUDA,
# several GB). --retries 0: an unreachable index fails fast, and pip's find-links (where
# configured, as on the project's machines) still apply.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test bench lint venv clean

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --retries 0 --index-url $(TORCH_INDEX) torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m llark_jax demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs/demo
