"""Shared fixtures: the recorded Keras goldens (copied from shared/ into tests/data)."""
import json
import pathlib

import numpy as np
import pytest
from hypothesis import settings

# Hypothesis profiles. "ci", the default: derandomized, no example database, so every run
# draws the same examples (a failure reproduces; a pass means the same as last time).
# "fuzz", by hand (`pytest --hypothesis-profile=fuzz tests/...`): random, and 50 times as
# many examples per property (`_cases.examples`), thousands per test.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("fuzz", max_examples=50 * settings.get_profile("ci").max_examples,
                          derandomize=False, database=None, deadline=None, print_blob=True)

GOLDEN_DIR = pathlib.Path(__file__).parent / "data" / "keras_golden"
MANIFEST = json.loads((GOLDEN_DIR / "manifest.json").read_text())


def golden_arrays(case):
    with np.load(GOLDEN_DIR / case["file"]) as z:
        return {k: z[k] for k in z.files}


def pytest_configure(config):
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where a CUDA device answers."""
    from sepconv_gpu.backends import cuda_available, cuda_status

    if cuda_available():
        return
    skip = pytest.mark.skip(reason=f"no CUDA device: {cuda_status()[1]}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
