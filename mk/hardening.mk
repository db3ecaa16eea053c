# Hardening: ssh test prerequisites, the fuzzer and the load run (see SECURITY.md).
#   make fuzz   a million inputs into the frame decoder and the message handlers
#               (atheris if it installs, else hypothesis); FUZZ_RUNS=... to change
#   make load   100 clients x 1000 calls against a server process on 127.0.0.1, and a
#               million netrefs created and dropped, with RSS before and after
FUZZ_RUNS ?= 1000000
FUZZ_MAX_TIME ?= 3600
SSHD_PATH ?= /usr/sbin/sshd
LOAD_ARGS ?= --clients 100 --calls 1000 --netrefs 1000000

.PHONY: fuzz load hardening-deps

SETUP_STEPS += hardening-deps

# The ssh test starts a real sshd on a loopback port. CI runs as root on a fresh Debian
# machine: install openssh when sshd is missing (elsewhere, say what to install).
# The discovery tests join two network namespaces with a veth pair: iproute2's `ip`.
hardening-deps: $(STAMP)
	@if [ ! -x $(SSHD_PATH) ] || ! command -v ssh >/dev/null 2>&1 || ! command -v ssh-keygen >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing openssh-server, openssh-client and iproute2 for the ssh and discovery tests"; \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
	      --no-install-recommends openssh-server openssh-client iproute2 >/dev/null; \
	  else \
	    echo "note: install openssh-server, openssh-client and iproute2 to run the ssh and discovery tests"; \
	  fi; \
	fi
	@$(PY) -c "import cryptography" 2>/dev/null || $(PY) -m pip install -q cryptography
	@$(PY) -c "import atheris" 2>/dev/null || $(PY) -m pip install -q atheris || \
	  echo "note: atheris did not install; make fuzz uses hypothesis"

fuzz: setup
	$(PY) fuzz/fuzz_protocol.py --runs $(FUZZ_RUNS) --max-time $(FUZZ_MAX_TIME)

load: setup
	$(PY) -m tests.hardening.load $(LOAD_ARGS)
