# Benchmarks: remote_kernel side by side with RPyC, Pyro5 (msgpack), ipyparallel and the floor.
# Writes benchmarks/results/latest.{md,json,png} (a full run also full.{md,json,png}).
#   make bench                    timed rounds (both pinnings), instruction counts, fan-out
#   make bench NO_INSTRUCTIONS=1 NO_FANOUT=1    the same without the two slow groups
#   make bench-quick              a few minutes; shows the last instruction/fan-out results
#   make bench-instructions       instructions per call under valgrind (both processes)
#   make bench-fanout             one call to 1, 8 and 32 peers vs ipyparallel; Dask workers vs client.run
#   make bench-profile            cProfile of both ends + CPU per call of every system
#   make bench-bytecodes          Python bytecodes per call, per function, on each side
#   make bench-link               resume time after a cut link returns, 64 MiB over 8 Mbit/s
#                                 (two network namespaces; needs root)
.PHONY: bench bench-quick bench-profile bench-instructions bench-fanout bench-bytecodes \
	bench-link

BENCH_FLAGS = $(if $(NO_INSTRUCTIONS),--no-instructions) $(if $(NO_FANOUT),--no-fanout)

bench: $(STAMP)
	$(PY) -m benchmarks.run $(BENCH_FLAGS)

bench-quick: $(STAMP)
	$(PY) -m benchmarks.run --quick $(BENCH_FLAGS)

bench-instructions: $(STAMP)
	$(PY) -m benchmarks.instructions

bench-fanout: $(STAMP)
	$(PY) -m benchmarks.fanout

bench-profile: $(STAMP)
	$(PY) -m benchmarks.profile_rk all

bench-bytecodes: $(STAMP)
	$(PY) -m benchmarks.bytecodes

bench-link: $(STAMP)
	$(PY) -m benchmarks.link
