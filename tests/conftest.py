"""Shared fixtures: the recorded Keras goldens (copied from shared/ into tests/data)."""
import json
import pathlib

import numpy as np
import pytest

GOLDEN_DIR = pathlib.Path(__file__).parent / "data" / "keras_golden"
MANIFEST = json.loads((GOLDEN_DIR / "manifest.json").read_text())


def golden_arrays(case):
    with np.load(GOLDEN_DIR / case["file"]) as z:
        return {k: z[k] for k in z.files}


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where a CUDA device answers."""
    from sepconv_gpu.backends import cuda_available, cuda_status

    if cuda_available():
        return
    skip = pytest.mark.skip(reason=f"no CUDA device: {cuda_status()[1]}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
