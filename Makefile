# The two commands of the README. Both create and reuse a project-local virtual environment (.venv).
# Users with a GPU can pick another torch build: make test TORCH_SPEC='torch==2.13.*' PIP_EXTRA='--index-url ...'
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.*
PIP_EXTRA ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo photo-demo test clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_EXTRA) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet $(PIP_EXTRA) -e ".[data,cli,test,hub,video]"
	touch $(STAMP)

# The main job: train a small MaxViT on the built-in digits, evaluate it, benchmark its attention against global
# attention and draw its partitions and attention maps, all into a new $(DEMO_OUT) (a few minutes on 2 CPU cores;
# see docs/cli.md). Each run gets its own folder, so an earlier run is never overwritten.
DEMO_STAMP := $(shell date +%Y%m%d-%H%M%S)
DEMO_OUT ?= runs/demo-$(DEMO_STAMP)
demo: $(STAMP)
	@echo "main job output folder: $(DEMO_OUT)"
	$(VENV)/bin/visattn train --model maxvit_tiny --set stem_width=16 --set dims=32,64,128 --set depths=1,2,1 \
		--set head_dim=16 --set partition_size=4 --data digits --epochs 15 --batch-size 64 --lr 2e-3 \
		--bn-momentum 0.1 --out $(DEMO_OUT)
	$(VENV)/bin/visattn eval --checkpoint $(DEMO_OUT)
	$(VENV)/bin/visattn bench --attention multi_axis --set dim=32 --set head_dim=16 --sizes 8,16,32,48,64 \
		--out $(DEMO_OUT)/bench
	$(VENV)/bin/visattn show partition --size 8 --partition-size 4 --query 1,2 --out $(DEMO_OUT)/partition.png
	$(VENV)/bin/visattn show attention --checkpoint $(DEMO_OUT) --image digits:0 --query 0.3,0.6 \
		--out $(DEMO_OUT)/attention.png

# A 10-second look at a full-size MaxViT-T on a scikit-image photo of odd size (random weights).
photo-demo: $(STAMP)
	$(PY) -m visattn.demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal

clean:
	rm -rf $(VENV)
