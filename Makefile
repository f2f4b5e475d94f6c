# qwen_vl_ros developer and CI entry points. `make test` is what .ci/run runs.
#
#   make venv       .venv with the pinned dependencies and qwen_vl_interfaces built into it
#   make install    venv + `pip install --no-deps .` of this package (always re-run: code changes)
#   make lint       ruff (pyflakes, pycodestyle, pydocstyle; ruff.toml) + Python 3.10 syntax check
#   make test       venv, then lint and pytest (both run; either failing fails the target)
#   make pytest     install, then pytest with the loopback ROS environment (PYTEST_ARGS=...)
#   make demo       install, then the node on a synthetic camera recording (MODEL_DIR=DIR: a real
#                   model; default: a tiny random-weight model exported once into demo_out/)
#   make bench      install, then bench/run_all.py: host-side benchmarks at the real model shapes
#                   (~2 min, ~1.8 GB of temporary stand-ins) -> bench/RESULTS.md
#   make soak       install, then bench/soak.py: 10 min of camera stream, timer and calls, then
#                   50 random stops (~17 min; not in make test) -> bench/SOAK.md
#   make interfaces rebuild qwen_vl_interfaces into the venv now
#   make clean      remove build products; make distclean also removes .venv
#
# Stamp files in .venv make a second run cheap: the dependencies are reinstalled only when
# scripts/requirements.txt changes, the interfaces rebuilt only when their sources change.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

REPO   := $(CURDIR)
PYTHON ?= python3
VENV   ?= $(REPO)/.venv
VPY    := $(VENV)/bin/python3
PIP    := $(VPY) -m pip --disable-pip-version-check
BUILD  := $(REPO)/build
# Optional pytest arguments, e.g. make test PYTEST_ARGS='-k image -x'
PYTEST_ARGS ?=
# Per-test limit (pytest-timeout), so that a hung ROS graph cannot eat CI's 90 minutes.
PYTEST_TIMEOUT ?= 600
# Python 3.10 (what Ubuntu 22.04 robots run) for the syntax check; skipped when absent.
PY310  ?= $(firstword $(wildcard /root/.pyenv/versions/3.10*/bin/python3) \
                      $(shell command -v python3.10 2>/dev/null))

INTERFACE_SRCS := $(wildcard qwen_vl_interfaces/msg/*.msg qwen_vl_interfaces/srv/*.srv \
                             qwen_vl_interfaces/action/*.action) \
                  qwen_vl_interfaces/CMakeLists.txt qwen_vl_interfaces/package.xml \
                  scripts/build_interfaces.sh

ROS_ENV := . $(REPO)/scripts/ros_env.sh $(VENV)

.PHONY: venv install lint test pytest demo interfaces clean distclean

venv: $(VENV)/.stamp-interfaces

$(VENV)/.stamp-python:
	$(PYTHON) -m venv $(VENV)
	touch $@

$(VENV)/.stamp-deps: scripts/requirements.txt $(VENV)/.stamp-python
	$(PIP) install -r scripts/requirements.txt
	command -v cmake >/dev/null || $(PIP) install 'cmake>=3.22,<5'
	touch $@

$(VENV)/.stamp-interfaces: $(INTERFACE_SRCS) $(VENV)/.stamp-deps
	scripts/build_interfaces.sh $(VENV) $(BUILD)/qwen_vl_interfaces
	touch $@

interfaces: $(VENV)/.stamp-deps
	scripts/build_interfaces.sh $(VENV) $(BUILD)/qwen_vl_interfaces
	touch $(VENV)/.stamp-interfaces

# A real install (not -e): only that puts data_files (package.xml, launch/, config/, the ament
# index marker) into the venv's share/. setuptools' build/lib would keep deleted modules: clear it.
install: venv
	rm -rf $(BUILD)/lib $(BUILD)/bdist.*
	$(PIP) install --quiet --no-deps --no-build-isolation .
	@# pip puts console scripts into bin/ whatever setup.cfg says; `ros2 run` and launch_ros
	@# look in lib/<package>/ (shared/ros2cli/README.md, known limits): link them there.
	mkdir -p $(VENV)/lib/qwen_vl_ros && ln -sf ../../bin/describe_node $(VENV)/lib/qwen_vl_ros/

lint: $(VENV)/.stamp-deps
	$(VENV)/bin/ruff check .
	@if [ -n "$(PY310)" ]; then \
	  $(PY310) scripts/syntax_check.py qwen_vl_ros test scripts launch setup.py; \
	else echo "lint: no Python 3.10 found, syntax check skipped"; fi

# Lint and the tests both run, so one report shows all that is wrong; either failing fails.
test: venv
	@status=0; \
	$(MAKE) --no-print-directory lint || { status=$$?; lint_failed=1; }; \
	$(MAKE) --no-print-directory pytest || status=$$?; \
	if [ -n "$${lint_failed:-}" ]; then echo "make test: lint failed (see the ruff output above)"; fi; \
	exit $$status

# The tests alone (no lint), against the installed package.
pytest: install
	$(ROS_ENV) && echo "pytest: ROS_DOMAIN_ID=$$ROS_DOMAIN_ID (loopback only)" && \
	  cd $(REPO) && $(VPY) -m pytest test -q --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS)

# The main job end to end (scripts/demo.py): model, recording, node in timer mode fed by
# qwen-vl-replay, service calls; prints every description with its source stamp and timings.
MODEL_DIR ?=
demo: install
	$(ROS_ENV) && cd $(REPO) && $(VPY) scripts/demo.py --out $(REPO)/demo_out \
	  $(if $(MODEL_DIR),--model-dir '$(MODEL_DIR)')

# Benchmarks, one at a time (bench/run_all.py); the ROS one needs the loopback environment.
.PHONY: bench
bench: install
	$(ROS_ENV) && cd $(REPO) && $(VPY) bench/run_all.py

# Ten minutes of a 30 Hz camera stream, timer and calls into the node, then 50 random stops
# (bench/soak.py, ~17 min; not part of make test) -> bench/SOAK.md. SOAK_ARGS='--minutes 2'.
SOAK_ARGS ?=
.PHONY: soak
soak: install
	$(ROS_ENV) && cd $(REPO) && $(VPY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(BUILD) *.egg-info .pytest_cache .ruff_cache

distclean: clean
	rm -rf $(VENV)
