"""The simulated lab bench (``bench.py``), the ``make demo`` launcher and the scripted session."""
