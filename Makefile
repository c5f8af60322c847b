# ms-rcnn developer commands. `make demo` and `make test` set everything up on a fresh machine.
# Setup steps are stamped in $(VENV)/.stamps, so a second run with nothing changed reinstalls
# nothing. Pinned versions live in constraints.txt (one place, with reasons).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMPS := $(VENV)/.stamps
PYTEST_ARGS ?=
UPSTREAM_EXPECTED ?= tests/upstream/expected_failures_v0.6.txt
DEMO_ITERS ?=
DEMO_SEEDS ?= 1
# make check-mmdet: its venv (on top of $(VENV)) and its arguments, e.g. MMDET_ARGS="--depths 50".
MMDET_VENV ?= .venv-mmdet
MMDET_ARGS ?=
# Which Detectron2 `make setup` builds (scripts/install_detectron2.py; build matrix in
# docs/DETECTRON2_VERSIONS.md). DETECTRON2_SRC: a checkout or source tarball to compile, e.g.
# ../shared/detectron2/detectron2-main.tar.gz; without it, the pinned upstream commit of
# DETECTRON2_REF (main or v0.6) is cloned where git reaches github.com, else PyPI's v0.6 is
# built with the pure-Python stand-in for the compiled ops. DETECTRON2_OPS=no: the stand-in
# even where a compiler is there. DETECTRON2_EDITABLE=1: an editable install (pip install -e).
DETECTRON2_SRC ?=
DETECTRON2_REF ?= main
DETECTRON2_OPS ?= auto
DETECTRON2_EDITABLE ?=
D2_ARGS = --ref $(DETECTRON2_REF) $(if $(filter no,$(DETECTRON2_OPS)),--no-ops) \
	$(if $(DETECTRON2_EDITABLE),--editable) $(if $(DETECTRON2_SRC),--source $(DETECTRON2_SRC))
# make test-main: the suite on the Detectron2 of DETECTRON2_SRC, in its own venv.
VENV_MAIN ?= .venv-main
# make test-upstream: Detectron2's own tests/, from a checkout, its tests/ or a source tarball.
DETECTRON2_TESTS ?= $(DETECTRON2_SRC)

.PHONY: setup test test-main test-upstream lint format demo demo-kudzu check-mmdet clean-venv help FORCE

help:
	@echo "make setup   create $(VENV) with torch, Detectron2 and ms-rcnn (idempotent)"
	@echo "             [DETECTRON2_SRC=checkout-or-tarball] [DETECTRON2_REF=main|v0.6]"
	@echo "             [DETECTRON2_OPS=auto|no] [DETECTRON2_EDITABLE=1]"
	@echo "make test    setup, lint, then the test suite"
	@echo "make test-main DETECTRON2_SRC=path [VENV_MAIN=.venv-main]"
	@echo "             the suite and a train/kill/resume/eval cycle on that Detectron2 checkout"
	@echo "make demo    setup, then train and compare Mask R-CNN vs MS R-CNN on generated data"
	@echo "make demo-kudzu [KUDZU_ROOT=path]  the same on the kudzu photographs"
	@echo "make lint    ruff check + ruff format --check"
	@echo "make test-upstream DETECTRON2_TESTS=path/to/detectron2[/tests] or source tarball"
	@echo "             Detectron2's own tests against the installed one, vs $(UPSTREAM_EXPECTED)"
	@echo "make format  apply ruff's fixes and formatting"
	@echo "make check-mmdet [MMDET_ARGS=...]  converted weights vs mmdetection's own model"
	@echo "             (sets up .venv-mmdet on $(VENV); compiles mmcv once, 15-25 min)"

setup: $(STAMPS)/package

$(STAMPS)/venv:
	$(PYTHON) -m venv $(VENV)
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/torch: constraints.txt $(STAMPS)/venv
	$(PIP) install -c constraints.txt torch torchvision setuptools
	@touch $@

$(STAMPS)/detectron2: scripts/install_detectron2.py scripts/detectron2_patches.py \
		scripts/detectron2_sources.py scripts/detectron2_smoke.py scripts/pins.py constraints.txt \
		$(STAMPS)/torch $(STAMPS)/detectron2-options
	$(PY) scripts/install_detectron2.py $(D2_ARGS)
	@touch $@

$(STAMPS)/package: setup.py pyproject.toml constraints.txt $(STAMPS)/detectron2
	$(PIP) install -c constraints.txt -e '.[dev]'
	@touch $@

# Stamps whose content changes only when the options (or the source's files) do, so that a
# changed option rebuilds Detectron2 and an unchanged one does not.
$(STAMPS)/detectron2-options: FORCE
	@case "$(DETECTRON2_OPS)" in auto|no) ;; *) echo "DETECTRON2_OPS=$(DETECTRON2_OPS): use auto or no"; exit 2;; esac
	@mkdir -p $(STAMPS)
	@echo "$(DETECTRON2_REF) $(DETECTRON2_OPS) $(DETECTRON2_EDITABLE)" > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

# With DETECTRON2_SRC set, the stamp follows the checkout's files (or the tarball's bytes), so a
# new commit rebuilds. Without it, whatever Detectron2 works is kept (setting it again later
# rebuilds only if the source changed meanwhile).
ifneq ($(DETECTRON2_SRC),)
$(STAMPS)/detectron2: $(STAMPS)/detectron2-source-id $(STAMPS)/timm

# ViTDet's ViT backbone (Detectron2 main) imports timm, which Detectron2 does not declare.
$(STAMPS)/timm: constraints.txt $(STAMPS)/torch
	$(PIP) install -c constraints.txt timm
	@touch $@

$(STAMPS)/detectron2-source-id: FORCE
	@mkdir -p $(STAMPS)
	@test -e "$(DETECTRON2_SRC)" || { echo "DETECTRON2_SRC=$(DETECTRON2_SRC): no such file or folder"; exit 2; }
	@{ echo $(abspath $(DETECTRON2_SRC)); if [ -d "$(DETECTRON2_SRC)" ]; then cd "$(DETECTRON2_SRC)" && \
		find . -path ./.git -prune -o -type f -printf '%P %s %T@\n' | sort; \
		else cksum < "$(DETECTRON2_SRC)"; fi; } | cksum > $@.new
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
	$(VENV_MAIN)/bin/python -c "from ms_rcnn.env import version_text; print(version_text())"
	DETECTRON2_SRC=$(abspath $(DETECTRON2_SRC)) $(VENV_MAIN)/bin/python -m pytest $(PYTEST_ARGS)
	$(VENV_MAIN)/bin/python scripts/check_resume_cycle.py

# Upstream's suite takes ~6 min on 2 cores; one thread per process keeps it from oversubscribing.
test-upstream: setup
	@test -n "$(DETECTRON2_TESTS)" || { echo "usage: make test-upstream DETECTRON2_TESTS=path/to/detectron2/tests (or a checkout or source tarball)" >&2; exit 2; }
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) scripts/check_upstream_tests.py $(DETECTRON2_TESTS) --expected $(UPSTREAM_EXPECTED)

demo: setup
	$(PY) tools/demo.py --seeds $(DEMO_SEEDS) $(if $(DEMO_ITERS),--iters $(DEMO_ITERS),)

# The same comparison on real photographs (the kudzu set, not shipped: KUDZU_ROOT names it).
KUDZU_ROOT ?= ../shared/data/kudzu
demo-kudzu: setup
	$(PY) tools/demo.py --arms kudzu_mask_rcnn kudzu_ms_rcnn --kudzu-root $(KUDZU_ROOT) \
		--seeds $(DEMO_SEEDS) --output-dir output/kudzu $(if $(DEMO_ITERS),--iters $(DEMO_ITERS),)

# mmdetection's own MS R-CNN vs the converted one, stage by stage (scripts/check_mmdet_parity.py;
# figures in docs/PUBLISHED_WEIGHTS.md). Its own venv, layered on $(VENV); mmcv is compiled the
# first time (15-25 min on 2 cores, cached in ~/.cache/ms-rcnn). Not in CI: too slow to set up.
check-mmdet: setup
	$(PY) scripts/setup_mmdet_env.py --venv $(MMDET_VENV) --base $(VENV)
	$(MMDET_VENV)/bin/python scripts/check_mmdet_parity.py $(MMDET_ARGS)

clean-venv:
	rm -rf $(VENV)
