"""Hardening tests: TLS, ssh, exposure, hostile peers, fuzzed input, faults and load."""
