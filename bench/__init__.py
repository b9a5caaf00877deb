"""Benchmarks (run as scripts: python bench/NAME.py); a package so `from bench import benchout` resolves one way."""
