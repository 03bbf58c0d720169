"""Checks that must run in CI (.ci/run sets CI=true): there a missing dependency fails the
check; elsewhere it skips, saying what to install."""
import importlib
import os

import pytest


def missing(reason):
    """Skips the calling test, or fails it where the environment variable CI is set."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run this check: .ci/run installs it)")
    pytest.skip(reason)


def require(module, install):
    """`module` imported, or `missing` (`install`: how to get it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing(f"{module} cannot be imported ({exc}): {install}")
