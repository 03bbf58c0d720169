"""`python -m sepconv_gpu.prebuild`: a kernel cache built without a GPU, in one checkout,
is hit from another checkout (the key holds contents, not paths) and by the backend's
own build path. A few cheap kernels only (the catalogue's softmax and reduce kernels)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sepconv_gpu.backends.cuda import kernel_cache, simt, tc

ROOT = Path(__file__).resolve().parents[1]
NAMES = (simt.softmax_name("float32", False), tc.tc_reduce_name("float16"))

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the nvidia NVRTC wheels are found by their Linux layout")


def _checkout(path):
    """A copy of the package and its kernels, as a second clone would be."""
    for folder in ("sepconv_gpu", "kernels"):
        shutil.copytree(ROOT / folder, path / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return path


def _prebuild(checkout, cache, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", kernel_cache.LINEINFO_VAR)}
    env[kernel_cache.ENV_VAR] = str(cache)
    names = [a for name in NAMES for a in ("--names", name)]
    return subprocess.run([sys.executable, "-m", "sepconv_gpu.prebuild", *names, *args],
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=300)


def test_a_cache_built_in_one_checkout_is_hit_from_another(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = _prebuild(_checkout(tmp_path / "a" / "clone"), cache, "--arch", "90", "--jobs", "2")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1] == "prebuild: 2 kernels for sm_90: 2 compiled, 0 from the cache"
    assert len(list(cache.iterdir())) == 2
    second = _prebuild(_checkout(tmp_path / "b" / "elsewhere"), cache, "--arch", "90")
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1] == "prebuild: 2 kernels for sm_90: 0 compiled, 2 from the cache"
    # and the backend's build path, from this checkout, loads them
    monkeypatch.setenv(kernel_cache.ENV_VAR, str(cache))
    monkeypatch.delenv(kernel_cache.LINEINFO_VAR, raising=False)
    assert all(kernel_cache.library_kernels((name,), 90).from_cache for name in NAMES)


def test_one_line_per_architecture_and_lineinfo_is_its_own_entry(tmp_path):
    cache = tmp_path / "cache"
    plain = _prebuild(ROOT, cache, "--arch", "80", "--arch", "90")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines()[-2:] == [
        "prebuild: 2 kernels for sm_80: 2 compiled, 0 from the cache",
        "prebuild: 2 kernels for sm_90: 2 compiled, 0 from the cache"]
    lineinfo = _prebuild(ROOT, cache, "--arch", "90", "--lineinfo")
    assert lineinfo.stdout.splitlines()[-1] == "prebuild: 2 kernels for sm_90: 2 compiled, 0 from the cache"
    assert len(list(cache.iterdir())) == 6


@pytest.mark.parametrize("args,message", [
    (["--arch", "90", "--names", "sepconv_nonexistent<float>"], "unknown --names"),
    (["--arch", "90", "--jobs", "0"], "--jobs must be at least 1"),
    (["--arch", "0"], "--arch takes SM versions"),
    (["--arch", "70"], "cannot emit SASS for sm_70"),
    (["--arch", "900"], "sm_900 is not an NVIDIA GPU architecture"),  # a typo for 90
    ([], "--arch"),
])
def test_bad_arguments_are_refused_by_name(tmp_path, args, message):
    env = {**os.environ, kernel_cache.ENV_VAR: str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "sepconv_gpu.prebuild", *args], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and message in run.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("variable, value, message", [
    (kernel_cache.ENV_VAR, "{file}", "the kernel cache {file} (SEPCONV_GPU_CACHE_DIR) cannot be written"),
    (kernel_cache.ENV_VAR, "{file}/sub", "the kernel cache {file}/sub (SEPCONV_GPU_CACHE_DIR) cannot be written"),
    ("SEPCONV_NVRTC_LIBRARY", "libc.so.6", "no usable NVRTC library"),
    ("SEPCONV_NVRTC_LIBRARY", "{tmp}/missing/libnvrtc.so", "no usable NVRTC library"),
    (kernel_cache.LINEINFO_VAR, "maybe", "environment variable SEPCONV_GPU_LINEINFO must be"),
])
def test_a_bad_environment_fails_in_one_line_before_compiling(tmp_path, variable, value, message):
    """prebuild exists to fill the cache: a cache it cannot write, an NVRTC that is not
    one, a bad flag each end it with one line and a non-zero status, no traceback."""
    file = tmp_path / "a-file"
    file.write_text("not a folder, not a library")
    env = {**os.environ, kernel_cache.ENV_VAR: str(tmp_path / "cache")}
    env[variable] = value.format(file=file, tmp=tmp_path)
    run = subprocess.run([sys.executable, "-m", "sepconv_gpu.prebuild", "--arch", "90",
                          "--names", NAMES[0]], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1 and run.stdout == "", run.stdout
    assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith("prebuild: "), run.stderr
    assert message.format(file=file) in run.stderr
    assert not (tmp_path / "cache").exists()
