"""The GPU check (`bash benchmarks/gpu_check.sh`, driven by `__main__`): one module per
stage (environment, correctness, gpu_tests, registers, sanitize_driver) and the cases
they run (`cases`)."""
