# Every target sets up its own virtual environment first; a fresh clone needs only python3
# (and apt-get for the system packages the browser and ssh tests use).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= test,bench,lab,dask
# Parts add their own set-up steps and test prerequisites in mk/*.mk.
SETUP_STEPS :=
TEST_STEPS :=
# Set-up of later test steps that make test runs beside its serial step (mk/matrix.mk adds
# the matrix's virtual environments): the serial tests mostly wait (timing bounds, links,
# sleeps), so the whole run is shorter by that set-up's time.
OVERLAP_STEPS :=

# Which tests run where, by marker (pyproject.toml declares them): the parallel step under
# pytest-xdist, then the serial step without it (timing bounds, network namespaces, sshd,
# the browser). make check runs the parallel step without the slow tests; the per-Python
# matrix (mk/matrix.mk) runs both steps.
XDIST ?= -n auto --dist worksteal
PARALLEL_TESTS := -m "not serial and not lab"
SERIAL_TESTS := -m "serial or lab"
FAST_TESTS := -m "not slow and not serial and not lab"

.PHONY: setup test check demo demo-script lint clean pytest pytest-parallel pytest-serial \
	pytest-serial-overlapped

include $(wildcard mk/*.mk)

setup: $(STAMP) $(SETUP_STEPS)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The quick loop: lint and the fast tests in parallel (about a minute and a half on two cores).
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(XDIST) $(FAST_TESTS) tests

pytest: pytest-parallel pytest-serial

pytest-parallel: setup
	$(PY) -m pytest -q $(XDIST) $(PARALLEL_TESTS) tests

pytest-serial: setup
	$(PY) -m pytest -q $(SERIAL_TESTS) tests

# The main suite first, so that a failure shows before the jest tests and the matrix run.
test: setup lint pytest-parallel pytest-serial-overlapped $(TEST_STEPS)

pytest-serial-overlapped: setup pytest-parallel
	@if [ -n "$(strip $(OVERLAP_STEPS))" ]; then \
	  $(MAKE) --no-print-directory $(OVERLAP_STEPS) > $(VENV)/overlap.log 2>&1 & \
	  overlap=$$!; \
	fi; \
	$(PY) -m pytest -q $(SERIAL_TESTS) tests; rc=$$?; \
	if [ -n "$(strip $(OVERLAP_STEPS))" ]; then \
	  wait $$overlap || { cat $(VENV)/overlap.log; rc=1; }; \
	fi; \
	exit $$rc

# make demo: JupyterLab on notebooks/ with the simulated bench; make demo CHECK=1: headless,
# executes every notebook and fails on any error.
demo: setup
ifeq ($(CHECK),1)
	$(PY) -m remote_kernel.demo.launcher --check
else
	$(PY) -m remote_kernel.demo.launcher
endif

# The scripted first look: a classic server and a short session against it, printed.
demo-script: setup
	$(PY) -m remote_kernel demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
