# Two commands on a fresh machine (offline except package registries):
#   make run   - set up .venv and start the explorer app on the embedded default model
#   make test  - set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tame-installed
PORT ?= 8501

.PHONY: setup run test test-fast clean

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/streamlit run app.py --server.port $(PORT) --browser.gatherUsageStats false

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
