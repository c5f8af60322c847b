# ms-rcnn developer commands. `make demo` and `make test` set everything up on a fresh machine.
# Setup steps are stamped in $(VENV)/.stamps, so a second run with nothing changed reinstalls
# nothing. Pinned versions live in constraints.txt (one place, with reasons).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMPS := $(VENV)/.stamps
PYTEST_ARGS ?=
DETECTRON2_TESTS ?=
UPSTREAM_EXPECTED ?= tests/upstream/expected_failures_v0.6.txt
DEMO_ITERS ?=
DEMO_SEEDS ?= 1
# make test-main: a Detectron2 checkout (e.g. upstream main) and the venv it goes into.
DETECTRON2_SRC ?=
VENV_MAIN ?= .venv-main

.PHONY: setup test test-main test-upstream lint format demo demo-kudzu clean-venv help FORCE

help:
	@echo "make setup   create $(VENV) with torch, Detectron2 and ms-rcnn (idempotent)"
	@echo "make test    setup, lint, then the test suite"
	@echo "make test-main DETECTRON2_SRC=path [VENV_MAIN=.venv-main]"
	@echo "             the suite and a train/kill/resume/eval cycle on that Detectron2 checkout"
	@echo "make demo    setup, then train and compare Mask R-CNN vs MS R-CNN on generated data"
	@echo "make demo-kudzu [KUDZU_ROOT=path]  the same on the kudzu photographs"
	@echo "make lint    ruff check + ruff format --check"
	@echo "make test-upstream DETECTRON2_TESTS=path/to/detectron2/tests"
	@echo "             Detectron2's own tests against the installed one, vs $(UPSTREAM_EXPECTED)"
	@echo "make format  apply ruff's fixes and formatting"

setup: $(STAMPS)/package

$(STAMPS)/venv:
	$(PYTHON) -m venv $(VENV)
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/torch: constraints.txt $(STAMPS)/venv
	$(PIP) install -c constraints.txt torch torchvision setuptools
	@touch $@

$(STAMPS)/detectron2: scripts/install_detectron2.py scripts/detectron2_patches.py constraints.txt $(STAMPS)/torch
	$(PY) scripts/install_detectron2.py
	@touch $@

$(STAMPS)/package: setup.py pyproject.toml constraints.txt $(STAMPS)/detectron2
	$(PIP) install -c constraints.txt -e '.[dev]'
	@touch $@

# With DETECTRON2_SRC set (make test-main does it), Detectron2 comes from that checkout, built
# without compiled ops; the stamp follows the checkout's files, so a new commit reinstalls it.
# The plain detectron2 step after it then finds a working Detectron2 and keeps it.
ifneq ($(DETECTRON2_SRC),)
$(STAMPS)/detectron2: $(STAMPS)/detectron2-source $(STAMPS)/timm

$(STAMPS)/detectron2-source: $(STAMPS)/detectron2-source-id $(STAMPS)/torch
	$(PY) scripts/install_detectron2.py --source $(DETECTRON2_SRC)
	@touch $@

# ViTDet's ViT backbone (Detectron2 main) imports timm, which Detectron2 does not declare.
$(STAMPS)/timm: constraints.txt $(STAMPS)/torch
	$(PIP) install -c constraints.txt timm
	@touch $@

$(STAMPS)/detectron2-source-id: FORCE
	@mkdir -p $(STAMPS)
	@test -f $(DETECTRON2_SRC)/setup.py || { echo "DETECTRON2_SRC=$(DETECTRON2_SRC): no setup.py"; exit 2; }
	@{ echo $(abspath $(DETECTRON2_SRC)); cd $(DETECTRON2_SRC) && find . -path ./.git -prune \
		-o -type f -printf '%P %s %T@\n' | sort; } | cksum > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi
endif

FORCE:

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The whole suite and tools/train_net.py's train -> kill -> --resume -> eval cycle, against
# the Detectron2 checkout DETECTRON2_SRC, in its own venv (VENV_MAIN, set up like `make setup`).
# The tests read projects' configs (ViTDet) from that checkout through $DETECTRON2_SRC.
test-main:
	@test -n "$(DETECTRON2_SRC)" || { echo "usage: make test-main DETECTRON2_SRC=path/to/detectron2 [VENV_MAIN=$(VENV_MAIN)]"; exit 2; }
	$(MAKE) setup VENV=$(VENV_MAIN) DETECTRON2_SRC=$(abspath $(DETECTRON2_SRC))
	DETECTRON2_SRC=$(abspath $(DETECTRON2_SRC)) $(VENV_MAIN)/bin/python -m pytest $(PYTEST_ARGS)
	$(VENV_MAIN)/bin/python scripts/check_resume_cycle.py

# Upstream's suite takes ~6 min on 2 cores; one thread per process keeps it from oversubscribing.
test-upstream: setup
	@test -n "$(DETECTRON2_TESTS)" || { echo "usage: make test-upstream DETECTRON2_TESTS=path/to/detectron2/tests" >&2; exit 2; }
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) scripts/check_upstream_tests.py $(DETECTRON2_TESTS) --expected $(UPSTREAM_EXPECTED)

demo: setup
	$(PY) tools/demo.py --seeds $(DEMO_SEEDS) $(if $(DEMO_ITERS),--iters $(DEMO_ITERS),)

# The same comparison on real photographs (the kudzu set, not shipped: KUDZU_ROOT names it).
KUDZU_ROOT ?= ../shared/data/kudzu
demo-kudzu: setup
	$(PY) tools/demo.py --arms kudzu_mask_rcnn kudzu_ms_rcnn --kudzu-root $(KUDZU_ROOT) \
		--seeds $(DEMO_SEEDS) --output-dir output/kudzu $(if $(DEMO_ITERS),--iters $(DEMO_ITERS),)

clean-venv:
	rm -rf $(VENV)
