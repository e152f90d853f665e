# The two commands of the README. Both create and reuse a project-local virtual environment (.venv).
# Users with a GPU can pick another torch build: make test TORCH_SPEC='torch==2.13.*' PIP_EXTRA='--index-url ...'
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.*
PIP_EXTRA ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_EXTRA) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet $(PIP_EXTRA) -e ".[data,cli,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m visattn.demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2

clean:
	rm -rf $(VENV)
