# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs install clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mrbridge demo -o out/demo

test: $(STAMP)
	$(BIN)/ruff check mrbridge tests bench docs
	$(BIN)/mypy
	$(BIN)/pytest -q

# the docs site (mkdocs-material + mkdocstrings) into out/site; offline, ~4 s; --strict: a warning fails it
# (tests/test_docs.py builds it too, so `make test` covers it)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

lint: $(STAMP)
	$(BIN)/ruff check mrbridge tests bench docs
	$(BIN)/mypy

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
