"""The CPU family, the twin of kernels/: `numpy_backend` (NumpyOps, the float64
reference and the pure-NumPy tiled path) and `numba_kernel` (the fused, compiled,
multi-core kernel NumpyOps runs where Numba imports)."""
