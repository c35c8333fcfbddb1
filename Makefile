# Every target creates or refreshes the virtual environment first, so a fresh machine needs only Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= cmbunet_demo_output

.PHONY: install demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first: a bare `torch` requirement would pull the CUDA build.
install: $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"

demo: install
	$(BIN)/cmbunet_demo -o $(DEMO_DIR)

# pytest's exit code 5 ("no tests collected") is not a failure of the code under test.
test: install
	$(BIN)/python -m pytest -n 2 -q --durations=15 tests; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache build *.egg-info
