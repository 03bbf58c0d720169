"""The GPU tests stage of the GPU check: `pytest -m gpu tests` (the CUDA backend against
the Keras goldens, properties, layouts, interop; tests/test_cuda_backend.py,
tests/test_tensor_core_gpu.py).

    python -m benchmarks.gpu_check.gpu_tests [--dry-run]

A dry run only collects them (every GPU test module imports and its tests are found);
a device run needs at least one test passed and none failed: all skipped is a failure.
Prints `RESULT {json}`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check.gpu_tests", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="collect only")
    args = p.parse_args(argv)
    count = _Count()
    status = pytest.main(["-m", "gpu", str(ROOT / "tests"), "-q", "-rs", "-p", "no:cacheprovider",
                          *(["--collect-only"] if args.dry_run else [])], plugins=[count])
    outcomes = count.outcomes
    ran = count.collected if args.dry_run else outcomes["tests_passed"] + outcomes["tests_failed"]
    passed = int(status) == 0 and ran > 0 and not outcomes["tests_failed"]
    print("RESULT " + json.dumps({"passed": passed, "ran": ran, "collected": count.collected,
                                  "collect_only": args.dry_run, **outcomes}))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
