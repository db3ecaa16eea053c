# Benchmarks: remote_kernel side by side with RPyC, Pyro5 (msgpack) and the raw floor.
# Writes benchmarks/results/latest.{md,json,png} (a full run also full.{md,json,png}).
.PHONY: bench bench-quick bench-profile

bench: $(STAMP)
	$(PY) -m benchmarks.run

bench-quick: $(STAMP)
	$(PY) -m benchmarks.run --quick

bench-profile: $(STAMP)
	$(PY) -m benchmarks.profile_rk all
