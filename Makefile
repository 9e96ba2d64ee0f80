# Two commands do all the set-up on a fresh machine (python3, java, mvn present):
#   make run   - local Kafka broker, topics, generated events, the pipeline on them
#   make test  - lint, types, and the whole test suite against a real broker
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint install kafka-stop clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/streams kafka start
	$(BIN)/streams topics create
	$(BIN)/streams generate --count 2000 --seed 7 --bad-ratio 0.02 --out - \
		| $(BIN)/streams publish events
	$(BIN)/streams demo --count 2000

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

kafka-stop: $(STAMP)
	$(BIN)/streams kafka stop

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis
