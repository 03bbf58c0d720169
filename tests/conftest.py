"""Shared fixtures: the recorded Keras goldens (copied from shared/ into tests/data), the
host emulator of the CUDA kernels (`emulator`, `emulator_for`), the GPU skip."""
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
    """Tests marked slow are collected first: under pytest-xdist (the README's command,
    a test file per worker at a time, in this order) the long ones start at once and the
    rest fill in around them. GPU tests run only where a CUDA device answers."""
    from sepconv_gpu.backends import cuda_available, cuda_status

    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable
    if cuda_available():
        return
    skip = pytest.mark.skip(reason=f"no CUDA device: {cuda_status()[1]}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --- the host emulator (tests/_cuda_host_emulator.py) -----------------------------------------
# A test takes `emulator` (or builds its own with `emulator_for(names)`) and runs the CUDA
# backend on it:
#
#     y, launches = emu.separable_conv(emulator, x, depthwise, pointwise, bias, geom, activation,
#                                      allow_tf32=False, plan=None)
#
# which is `cuda_backend.CupyOps.separable_conv` itself (call plan, input copy, weights,
# `_run`, `_launch`, post-activation) on the stand-in: benchmarks/fake_cupy.py's fake CuPy
# whose launches run on `emulator` (`emu.stand_in(emulator)` gives that backend module and
# its fake). y is NumPy, poisoned (NaN) wherever no kernel wrote; `launches` are the
# launch.Launch objects launched, in order. `emulator.launch(name, grid, block, args,
# shared_bytes)` runs one kernel by hand; `emu.run(emulator, launches, x, y, prepare)` a
# launch sequence of your own (a forced plan with weights given).

@pytest.fixture(scope="session")
def emulator_for():
    """`HostEmulator(names, ...)`, for a test or fixture that builds its own instantiations;
    skips where the emulator cannot be built (no host C++ compiler or CUDA headers), and
    fails there in CI."""
    import _cuda_host_emulator as emu
    from _ci import missing

    if emu.compiler() is None or emu.cuda_include_dir() is None:
        missing("the host emulator needs a host C++ compiler and the CUDA headers "
                "(pip install '.[test]' brings the headers)")
    return emu.HostEmulator


@pytest.fixture(scope="module")
def emulator_names():
    """The instantiations a module's `emulator` builds up front; a module overrides it with
    the names it launches (any other name is built on its first launch)."""
    return []


@pytest.fixture(scope="module")
def emulator(emulator_for, emulator_names):
    """One host emulator per module, holding `emulator_names`."""
    return emulator_for(emulator_names)
