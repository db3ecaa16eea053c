# The JupyterLab extension (labextension/): Debian's chromium for the browser tests, the
# prebuilt extension in the venv, and its jest unit tests.
#
# A fresh clone gets the extension from `pip install -e` (the hatch-jupyter-builder hook runs
# `jlpm install` + `jlpm build:prod` from the committed yarn.lock). After that, lab-build
# rebuilds it only when its sources change, and copies it where Jupyter finds it.

LAB_DIR := labextension
LAB_NAME := remote-kernel-lab
LAB_OUT := remote_kernel/labextension/package.json
LAB_INSTALLED := $(VENV)/share/jupyter/labextensions/$(LAB_NAME)
LAB_SOURCES := $(wildcard $(LAB_DIR)/src/*.ts $(LAB_DIR)/style/* $(LAB_DIR)/schema/*) \
	$(LAB_DIR)/package.json $(LAB_DIR)/yarn.lock $(LAB_DIR)/tsconfig.json
LAB_ENV := PATH="$(abspath $(VENV))/bin:$$PATH"
JLPM := $(LAB_ENV) $(abspath $(VENV))/bin/jlpm
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

SETUP_STEPS += lab-chromium lab-build
TEST_STEPS += lab-jest

.PHONY: lab-chromium lab-build lab-jest lab-check lab-test lab-clean

# The browser tests use Debian's chromium; never a browser downloaded by a tool.
lab-chromium:
	@test -x $(CHROMIUM) || { \
		echo "installing Debian chromium for the browser tests"; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }

$(LAB_DIR)/node_modules/.yarn-state.yml: $(LAB_DIR)/package.json $(LAB_DIR)/yarn.lock | $(STAMP)
	cd $(LAB_DIR) && $(JLPM) install --immutable
	touch $@

# Rebuild after source changes (pip install -e only builds when the output is missing).
$(LAB_OUT): $(LAB_SOURCES) | $(LAB_DIR)/node_modules/.yarn-state.yml
	cd $(LAB_DIR) && $(JLPM) build:prod
	rm -rf $(LAB_INSTALLED)
	mkdir -p $(dir $(LAB_INSTALLED))
	cp -r remote_kernel/labextension $(LAB_INSTALLED)
	cp $(LAB_DIR)/install.json $(LAB_INSTALLED)/

# A sub-make, so that the output pip install -e just built counts as up to date (make would
# otherwise remember it as missing from before the install and build it again).
lab-build: | $(STAMP)
	@$(MAKE) --no-print-directory $(LAB_OUT)
	@$(MAKE) --no-print-directory lab-check

# `jupyter labextension list` must show the extension enabled and OK in the venv.
lab-check: | $(STAMP)
	@$(VENV)/bin/jupyter labextension list 2>&1 | grep -E "$(LAB_NAME) .*enabled.*OK" \
		|| { echo "$(LAB_NAME) is not installed in $(VENV)"; exit 1; }

lab-jest: $(LAB_DIR)/node_modules/.yarn-state.yml
	cd $(LAB_DIR) && $(JLPM) test --ci

# Only the extension's tests: jest, then the Python and browser tests in tests/lab.
lab-test: setup lab-jest
	$(PY) -m pytest -q tests/lab

lab-clean:
	rm -rf $(LAB_DIR)/node_modules $(LAB_DIR)/lib $(LAB_DIR)/tsconfig.tsbuildinfo remote_kernel/labextension
