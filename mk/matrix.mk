# The core and IPython tests on every supported Python: 3.10, 3.11, 3.12 and 3.13 from pyenv,
# each in its own virtual environment under .venv-matrix/ (the browser tests run once, in
# the main venv). `make test` runs it; `make test-matrix` alone runs only this.
#   MATRIX_VERSIONS  the minor versions (default: those of 3.10 3.11 3.12 3.13 that the main
#                    venv is not: it runs the whole suite itself)
#   MATRIX_TESTS     what runs on each (default: the core, hardening and IPython tests that
#                    make check runs, under xdist: the slow ones and those with timing bounds
#                    or system state (namespaces, sshd, Dask, browsers) run once, on the
#                    main venv's Python, in make test's own steps)
PYENV_ROOT ?= $(HOME)/.pyenv
# The main venv's Python runs the whole suite already (`make pytest`): not again here.
MAIN_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
MATRIX_VERSIONS ?= $(filter-out $(MAIN_VERSION),3.10 3.11 3.12 3.13)
MATRIX_DIR := .venv-matrix
MATRIX_TESTS ?= tests --ignore=tests/lab --ignore=tests/test_notebooks.py
MATRIX_PYTEST ?= -q -x -p no:cacheprovider
# The newest patch release pyenv has of a minor version.
matrix_python = $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/$(1).*/bin/python3)))

TEST_STEPS += test-matrix
OVERLAP_STEPS += matrix-envs

.PHONY: test-matrix matrix-envs matrix-clean

matrix-envs: $(foreach v,$(MATRIX_VERSIONS),$(MATRIX_DIR)/$(v)/.installed)

# The project's own dependencies and test extras, read from pyproject.toml; the package
# itself is the work tree, put on the path by a .pth file (so the interpreters that tests
# start, over ssh too, find it), and nothing is built per version.
$(MATRIX_DIR)/%/.installed: pyproject.toml | $(STAMP)
	@python="$(call matrix_python,$*)"; \
	if [ -z "$$python" ]; then echo "no Python $* under $(PYENV_ROOT)/versions"; exit 1; fi; \
	echo "matrix: Python $* ($$python) in $(MATRIX_DIR)/$*"; \
	test -x $(MATRIX_DIR)/$*/bin/python || "$$python" -m venv $(MATRIX_DIR)/$*
	$(PY) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	print('\n'.join(p['dependencies'] + p['optional-dependencies']['test']))" \
	  > $(MATRIX_DIR)/$*/requirements.txt
	$(MATRIX_DIR)/$*/bin/python -m pip install -q -r $(MATRIX_DIR)/$*/requirements.txt 2>&1 \
	  | grep -v "^WARNING: Location" || true
	$(MATRIX_DIR)/$*/bin/python -c "import pytest, IPython, numpy"
	$(MATRIX_DIR)/$*/bin/python -c "import pathlib, site; pathlib.Path(site.getsitepackages()[0], \
	  'remote_kernel_worktree.pth').write_text('$(CURDIR)\n')"
	touch $@

# One version after the other, each with the main suite's selection: its parallel step under
# xdist, then its serial step; -x stops a step at its first failure, and the first failing
# version stops the run.
test-matrix: matrix-envs
	@for v in $(MATRIX_VERSIONS); do \
	  echo "=== Python $$v ==="; \
	  start=$$(date +%s); \
	  $(MATRIX_DIR)/$$v/bin/python -m pytest $(MATRIX_PYTEST) $(XDIST) $(FAST_TESTS) \
	    $(MATRIX_TESTS) || exit 1; \
	  echo "=== Python $$v: $$(( $$(date +%s) - start )) s ==="; \
	done

matrix-clean:
	rm -rf $(MATRIX_DIR)
