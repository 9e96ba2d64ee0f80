# Two commands do all the set-up on a fresh machine (python3, java, mvn present):
#   make run   - local Kafka broker, topics, generated events, the pipeline on them, an audit
#   make test  - lint, types, import layers, and the whole test suite against a real broker
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint tools install kafka-stop clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The demo: 30k real-time events (with duplicates, late and invalid ones) flow through one
# worker while they are published; small windows so the last ones close in seconds; then an audit.
run: export STREAMS_WINDOW_SIZE_MS ?= 10000
run: export STREAMS_GRACE_MS ?= 2000
run: export STREAMS_IDLE_TIMEOUT_MS ?= 3000
run: $(STAMP)
	$(BIN)/streams kafka start
	$(BIN)/streams topics create
	$(BIN)/streams generate --count 30000 --rate 5000 --start-ts now --seed $$(date +%s) \
		--dup-ratio 0.02 --late-ratio 0.01 --bad-ratio 0.02 --topic events & \
	$(BIN)/streams worker --exit-when-idle 6; wait
	$(BIN)/streams verify

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

tools:
	deploy/tools/test-tools.sh

test: lint tools
	$(BIN)/pytest

kafka-stop: $(STAMP)
	$(BIN)/streams kafka stop

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .hypothesis
