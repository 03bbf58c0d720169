"""The GPU tests stage of the GPU check: `pytest -m gpu tests` (the CUDA backend against
the Keras goldens, properties, layouts, interop; tests/test_cuda_backend.py,
tests/test_tensor_core_gpu.py, tests/test_serving_gpu.py).

    python -m benchmarks.gpu_check.gpu_tests [--dry-run]

A device run runs them all. A dry run runs `DRY_RUN_SAMPLE` of them on the stand-in (the
fake CuPy of benchmarks/fake_cupy.py, its launches executed by the host emulator,
installed as this process's `cupy` and CUDA backend: tests/_cuda_host_emulator.installed):
the tests' own code through `cuda_backend`, on kernels the other dry-run stages build,
so a test that cannot run on a device fails here first. Either run needs at least one
test passed and none failed: all skipped is a failure. Prints `RESULT {json}`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

# a few seconds on the host emulator: strided and negative-stride views, an activation
# applied after the kernels, the global-gather path, the weights cache, the float32 / TF32
# routing, one tensor-core case against the reference and the SIMT kernel
DRY_RUN_SAMPLE = (
    "test_cuda_backend.py::test_non_contiguous_and_negative_stride_inputs",
    "test_cuda_backend.py::test_custom_callable_activation_is_applied_after_the_kernel",
    "test_cuda_backend.py::test_large_dilation_without_halo",
    "test_tensor_core_gpu.py::test_tensor_core_weights_prepared_once_per_cache",
    "test_tensor_core_gpu.py::test_tensor_core_float32_default_is_exact_simt_and_tf32_is_opt_in",
    "test_tensor_core_gpu.py::test_tensor_core_matches_reference_and_simt[tf32-(2, 9, 11, 16)-k3-f20]",
)


class _Count:
    def __init__(self):
        self.collected, self.outcomes = 0, {"tests_passed": 0, "tests_failed": 0, "tests_skipped": 0}

    def pytest_collection_finish(self, session):
        self.collected = len(session.items)

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.outcomes["tests_failed"] += 1
        elif report.when == "call" and report.passed:
            self.outcomes["tests_passed"] += 1
        elif report.skipped:
            self.outcomes["tests_skipped"] += 1


def _stand_in():
    """The stand-in installed for the block (the dry run's device), its emulator the
    correctness stage's build (the same names: one content-keyed library, built once)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import _cuda_host_emulator as host

    from . import cases

    return host.installed(host.HostEmulator(cases.kernel_names(cases.dry_run_cases())))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check.gpu_tests", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="DRY_RUN_SAMPLE on the stand-in (the host emulator)")
    args = p.parse_args(argv)
    count = _Count()
    chosen = [str(TESTS / test) for test in DRY_RUN_SAMPLE] if args.dry_run else [str(TESTS)]
    with _stand_in() if args.dry_run else contextlib.nullcontext():
        status = pytest.main(["-m", "gpu", *chosen, "-q", "-rs", "-p", "no:cacheprovider"],
                             plugins=[count])
    outcomes = count.outcomes
    ran = outcomes["tests_passed"] + outcomes["tests_failed"]
    passed = int(status) == 0 and ran > 0 and not outcomes["tests_failed"]
    print("RESULT " + json.dumps({"passed": passed, "ran": ran, "collected": count.collected,
                                  "stand_in": args.dry_run, **outcomes}))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
