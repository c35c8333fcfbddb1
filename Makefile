# Every target creates or refreshes the virtual environment first, so a fresh machine needs only Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= cmbunet_demo_output

.PHONY: install demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first, from PyTorch's CPU wheel index added to pip's own configuration: a bare
# `torch` from PyPI is the CUDA build on Linux (gigabytes of nvidia-* wheels). The CPU index holds `2.13.0+cpu`,
# which pip prefers to PyPI's `2.13.0`. When the index cannot be reached (offline mirrors, local wheel folders),
# it is left out instead of letting pip retry it for every package, and torch comes from pip's configured
# sources. `make install TORCH_INDEX=` never adds it; `TORCH_INDEX=https://download.pytorch.org/whl/cu126`
# installs a CUDA build.
# TORCH_VERSION is the pin of constraints.txt.
TORCH_VERSION := 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
install: $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	@index=""; \
	if [ -n "$(TORCH_INDEX)" ]; then \
	  if $(BIN)/python -c "import sys, urllib.request; url = sys.argv[1].rstrip('/') + '/torch/'; \
	      urllib.request.urlopen(url + ('index.html' if url.startswith('file:') else ''), timeout=15)" "$(TORCH_INDEX)" 2>/dev/null; then \
	    index="--extra-index-url $(TORCH_INDEX)"; \
	  else \
	    echo "note: $(TORCH_INDEX) is not reachable; torch==$(TORCH_VERSION) comes from pip's configured sources"; \
	  fi; \
	fi; \
	echo "$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $$index"; \
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $$index
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	@$(BIN)/python -c "import torch; print('installed torch', torch.__version__, '(CUDA build)' if torch.version.cuda else '(CPU build)')"

demo: install
	$(BIN)/cmbunet_demo -o $(DEMO_DIR)

# pytest's exit code 5 ("no tests collected") is not a failure of the code under test.
test: install
	$(BIN)/python -m pytest -n 2 -q --durations=15 tests; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache build *.egg-info
