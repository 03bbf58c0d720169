"""Benchmarks of sepconv_gpu against its peers: `python -m benchmarks --help`."""
