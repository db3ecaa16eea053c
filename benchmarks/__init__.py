"""Side-by-side benchmarks of remote_kernel, RPyC, Pyro5 (msgpack) and a raw msgpack floor.

``make bench-quick`` / ``make bench`` run :mod:`benchmarks.run`; see ``benchmarks/README.md``.
"""
