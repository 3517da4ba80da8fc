# Every target that needs the virtualenv depends on it, so each works on a fresh clone alone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint protos clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m xds_operator.demo run --dir config/samples

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check xds_operator tests bench
	$(BIN)/ruff format --check xds_operator tests bench

protos: $(STAMP)
	$(BIN)/python -m xds_operator.api.build_protos

clean:
	rm -rf $(VENV) build *.egg-info
