"""Boolean environment variables (SEPCONV_GPU_AUTOTUNE, SEPCONV_GPU_LINEINFO,
SEPCONV_GPU_DEBUG_SYNC), read one way everywhere."""
from __future__ import annotations

import os

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def flag(name):
    """The environment variable `name` as a bool: 1/true/yes/on or 0/false/no/off, in any
    case (around spaces); unset or empty is False. ValueError naming it otherwise."""
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE or not value:
        return False
    raise ValueError(f"environment variable {name} must be one of 1/0, true/false, yes/no, "
                     f"on/off (any case); received {os.environ[name]!r}")
