# qwen_vl_ros developer and CI entry points. `make test` is what .ci/run runs.
#
#   make venv       .venv with the pinned dependencies and qwen_vl_interfaces built into it
#   make install    venv + `pip install --no-deps .` of this package (always re-run: code changes),
#                   its executables linked into .venv/lib/qwen_vl_ros (ros2 run / ros2 launch)
#   make ros2cli    the ros2 command line from ../shared/ros2cli into .venv (when it exists)
#   make lint       ruff (pyflakes, pycodestyle, pydocstyle; ruff.toml) + Python 3.10 syntax check
#   make test       venv, then lint, pytest, test-jazzy, test-tf5 and test-export (all run; any
#                   failing fails)
#   make pytest     install, then pytest with the loopback ROS environment (PYTEST_ARGS=...);
#                   -rs: every skipped test is listed with its reason
#   make demo       install, then the node on a synthetic camera recording (MODEL_DIR=DIR: a real
#                   model; default: a tiny random-weight model exported once into demo_out/)
#   make bench      install, then bench/run_all.py: host-side benchmarks at the real model shapes
#                   (~2 min, ~1.8 GB of temporary stand-ins) -> bench/RESULTS.md
#   make test-jazzy .venv-jazzy (Python 3.12, ROS 2 Jazzy wheels, numpy 1.26, transformers 4.49):
#                   the suite again, reusing the tiny models `make pytest` left in build/test_models
#   make test-tf5   .venv-tf5 (transformers 5.x, no torch, no ROS): the core tests again
#   make test-export .venv-export (torch, transformers 5.x, made by pip install '.[export]'): the
#                   exporter's tests, and checkpoints written by 4.49 / 4.57 / 5.x read by each
#   make soak       install, then bench/soak.py: 10 min of camera stream, timer and calls, then
#                   50 random stops (~17 min; not in make test) -> bench/SOAK.md
#   make fullsize   the real Qwen2.5-VL-3B size on this PC (issue 16; ~45 min, ~23 GB of memory at
#                   its peak, ~40 GB of disk in FULLSIZE_DIR; not in make test; run nothing heavy
#                   beside it): a random-weight checkpoint from the real config, exported float32
#                   and int8 by a venv made with pip install '.[export]', against transformers
#                   -> bench/FULLSIZE.md
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
# Python 3.12 (Ubuntu 24.04's, with ROS 2 Jazzy: a Raspberry Pi 5 with an M.2 card) for the
# Jazzy suite; skipped when absent.
PY312  ?= $(firstword $(wildcard /root/.pyenv/versions/3.12*/bin/python3) \
                      $(shell command -v python3.12 2>/dev/null))

INTERFACE_SRCS := $(wildcard qwen_vl_interfaces/msg/*.msg qwen_vl_interfaces/srv/*.srv \
                             qwen_vl_interfaces/action/*.action) \
                  qwen_vl_interfaces/CMakeLists.txt qwen_vl_interfaces/package.xml \
                  scripts/build_interfaces.sh

ROS_ENV := . $(REPO)/scripts/ros_env.sh $(VENV)
# The team's shared folder beside the clone (absent in a user's clone).
SHARED  ?= $(abspath $(REPO)/../shared)
ROS2CLI := $(SHARED)/ros2cli

.PHONY: venv install ros2cli lint test pytest demo interfaces clean distclean

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
	$(VPY) scripts/link_ros_executables.py

# The real ROS 2 command line (ros2 launch/run/service/param/topic/lifecycle) from the team's
# ../shared/ros2cli, for the tests that drive the node with it; its install.sh keeps its own
# stamp (a repeat is a no-op). Without ../shared (a user's clone) those tests skip.
ros2cli: venv
	@if [ -f "$(ROS2CLI)/install.sh" ]; then bash "$(ROS2CLI)/install.sh" $(VENV); \
	else echo "ros2cli: no $(ROS2CLI): the ros2 command-line tests will be skipped"; fi

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
	$(MAKE) --no-print-directory test-jazzy || status=$$?; \
	$(MAKE) --no-print-directory test-tf5 || status=$$?; \
	$(MAKE) --no-print-directory test-export || status=$$?; \
	if [ -n "$${lint_failed:-}" ]; then echo "make test: lint failed (see the ruff output above)"; fi; \
	exit $$status

# The tests alone (no lint), against the installed package. The tiny models and transformers'
# reference values it builds (with torch) go to TEST_MODELS, where test-jazzy / test-tf5 find them.
pytest: install ros2cli
	$(ROS_ENV) && echo "pytest: ROS_DOMAIN_ID=$$ROS_DOMAIN_ID (loopback only)" && \
	  cd $(REPO) && QVR_TEST_MODELS=$(TEST_MODELS) \
	  $(VPY) -m pytest test -q -rs --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS)

# -- other distros and library versions -------------------------------------------------------
# test-jazzy: ROS 2 Jazzy wheels (rclpy 7.1, close to Humble's API) on Python 3.12 with
# numpy 1.26 (Ubuntu 24.04's stack, as on a Raspberry Pi 5) and transformers 4.49, qwen_vl_interfaces built with Jazzy's rosidl; the whole
# suite (what needs torch or the ros2 CLI skips and says so). test-tf5: the ROS-free core under
# transformers 5.x (Python 3.11). Neither has torch: both reuse TEST_MODELS from `make pytest`.
TEST_MODELS := $(BUILD)/test_models
JAZZY_VENV  ?= $(REPO)/.venv-jazzy
TF5_VENV    ?= $(REPO)/.venv-tf5
CORE_TESTS  := test/test_pipeline.py test/test_vision.py test/test_real_tokenizer.py \
               test/test_axengine_backend.py

$(JAZZY_VENV)/.stamp-deps: scripts/requirements-jazzy.txt
	$(PY312) -m venv $(JAZZY_VENV)
	$(JAZZY_VENV)/bin/python3 -m pip --disable-pip-version-check install --quiet \
	  -r scripts/requirements-jazzy.txt
	command -v cmake >/dev/null || $(JAZZY_VENV)/bin/python3 -m pip install 'cmake>=3.22,<5'
	touch $@

$(JAZZY_VENV)/.stamp-interfaces: $(INTERFACE_SRCS) $(JAZZY_VENV)/.stamp-deps
	scripts/build_interfaces.sh $(JAZZY_VENV) $(BUILD)/qwen_vl_interfaces-jazzy
	touch $@

$(TF5_VENV)/.stamp-deps: scripts/requirements-tf5.txt
	$(PYTHON) -m venv $(TF5_VENV)
	$(TF5_VENV)/bin/python3 -m pip --disable-pip-version-check install --quiet \
	  -r scripts/requirements-tf5.txt
	touch $@

# $(call other_venv_pytest,VENV,TESTS): install this package into VENV, run TESTS there.
define other_venv_pytest
rm -rf $(BUILD)/lib $(BUILD)/bdist.*
$(1)/bin/python3 -m pip --disable-pip-version-check install --quiet --no-deps \
  --no-build-isolation .
$(1)/bin/python3 scripts/link_ros_executables.py
. $(REPO)/scripts/ros_env.sh $(1) && cd $(REPO) && QVR_TEST_MODELS=$(or $(3),$(TEST_MODELS)) \
  $(1)/bin/python3 -m pytest $(2) -q -rs -p no:cacheprovider --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS)
endef

.PHONY: test-jazzy test-tf5 test-export
test-jazzy:
ifeq ($(PY312),)
	@echo "test-jazzy: SKIPPED: no Python 3.12 (pyenv's 3.12.x or python3.12 on PATH)"
else
	$(MAKE) --no-print-directory $(JAZZY_VENV)/.stamp-interfaces
	$(call other_venv_pytest,$(JAZZY_VENV),test)
endif

test-tf5: $(TF5_VENV)/.stamp-deps
	$(call other_venv_pytest,$(TF5_VENV),$(CORE_TESTS))

# test-export: the exporter under transformers 5.x with torch (issue 16). .venv-export is made as
# a user makes one (the CPU torch wheel, then pip install '.[export]'); its tests build their own
# tiny models and transformers 5 references (torch is there) in TEST_MODELS_EXPORT. The matrix
# test reads checkpoints written by each of 5.x (this venv), 4.57 (.venv) and 4.49 (installed
# with pip --target over .venv, TF449) with each of them.
EXPORT_VENV        ?= $(REPO)/.venv-export
TEST_MODELS_EXPORT := $(BUILD)/test_models_export
TF449              := $(BUILD)/transformers-4.49
EXPORT_TESTS       := test/test_export.py test/test_export_checkpoints.py \
                      test/test_export_int8.py test/test_export_other_major.py \
                      test/test_export_transformers_matrix.py

$(EXPORT_VENV)/.stamp-deps: setup.py
	$(PYTHON) -m venv $(EXPORT_VENV)
	$(EXPORT_VENV)/bin/python3 -m pip --disable-pip-version-check install --quiet torch==2.13.0
	$(EXPORT_VENV)/bin/python3 -m pip --disable-pip-version-check install --quiet \
	  '.[export]' pillow 'pytest>=8,<10' 'pytest-timeout>=2,<3'
	touch $@

$(TF449)/.stamp: $(VENV)/.stamp-deps
	rm -rf $(TF449)
	$(VPY) -m pip --disable-pip-version-check install --quiet --no-deps --target $(TF449) \
	  transformers==4.49.0 tokenizers==0.21.1
	touch $@

test-export: export QVR_TRANSFORMERS_RUNNERS = $(EXPORT_VENV)/bin/python3 $(VPY) $(VPY)@$(TF449)
test-export: install $(EXPORT_VENV)/.stamp-deps $(TF449)/.stamp
	$(call other_venv_pytest,$(EXPORT_VENV),$(EXPORT_TESTS),$(TEST_MODELS_EXPORT))

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

# The export venv is what a user makes: the CPU torch wheel first (a plain `torch` requirement
# would pull a multi-GB CUDA build), then pip install '.[export]' (the newest transformers 5.x).
FULLSIZE_DIR  ?= $(BUILD)/fullsize
FULLSIZE_VENV ?= $(FULLSIZE_DIR)/venv
FULLSIZE_ARGS ?=
$(FULLSIZE_VENV)/.stamp: setup.py
	$(PYTHON) -m venv $(FULLSIZE_VENV)
	$(FULLSIZE_VENV)/bin/python3 -m pip --disable-pip-version-check install --quiet torch==2.13.0
	$(FULLSIZE_VENV)/bin/python3 -m pip --disable-pip-version-check install --quiet '.[export]'
	# for the bench's transformers reference only: transformers' image processor needs pillow
	$(FULLSIZE_VENV)/bin/python3 -m pip --disable-pip-version-check install --quiet pillow
	touch $@

.PHONY: fullsize
fullsize: install $(FULLSIZE_VENV)/.stamp
	$(ROS_ENV) && cd $(REPO) && $(VPY) bench/fullsize.py --dir $(FULLSIZE_DIR) \
	  --export-python $(FULLSIZE_VENV)/bin/python3 $(FULLSIZE_ARGS)

clean:
	rm -rf $(BUILD) *.egg-info .pytest_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) $(JAZZY_VENV) $(TF5_VENV) $(EXPORT_VENV)
