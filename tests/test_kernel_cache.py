"""The on-disk kernel cache (kernel_cache.py), on the CPU with the NVRTC wheels.

A miss compiles and writes one entry; a hit returns the very same bytes without NVRTC;
entries that are damaged in any way are compiled again and overwritten; the key moves
with everything that changes the binary; processes racing on one key all end well.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import shutil
import stat
import struct
import sys
import time

import pytest
from test_launch_arguments import _launch, fake_backend, fake_nvrtc  # noqa: F401 (a fixture)

from sepconv_gpu.backends.cuda import kernel_cache, nvrtc

# includes a CUDA header, as the kernels do (the key hashes the headers a source includes)
SOURCE = ("#include <cuda_fp16.h>\n"
          "template <typename T> __global__ void scale(T* x, T a) { x[threadIdx.x] *= a; }\n")
NAMES = ("scale<float>", "scale<double>")
ARCH = 80
OPTIONS = kernel_cache.CUPY_OPTIONS

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the nvidia NVRTC wheels are found by their Linux layout")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory, and a count of the NVRTC compilations in this process."""
    directory = tmp_path / "cache"
    monkeypatch.setenv(kernel_cache.ENV_VAR, str(directory))
    compiles = []
    real = nvrtc.compile_cubin

    def counting(*args, **kwargs):
        compiles.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(nvrtc, "compile_cubin", counting)
    return directory, compiles


def _entries(directory):
    return sorted(p.name for p in directory.iterdir())


def test_miss_writes_one_entry_and_a_hit_returns_it_without_nvrtc(cache):
    directory, compiles = cache
    cold = kernel_cache.compile_cached(SOURCE, NAMES, ARCH, OPTIONS)
    assert not cold.from_cache and len(compiles) == 1
    key = kernel_cache.entry_key(SOURCE, NAMES, ARCH, OPTIONS)
    assert _entries(directory) == [key + kernel_cache.SUFFIX]  # no temporary file left
    warm = kernel_cache.compile_cached(SOURCE, tuple(reversed(NAMES)), ARCH, OPTIONS)
    assert warm.from_cache and len(compiles) == 1
    assert (warm.cubin, warm.lowered, warm.log) == (cold.cubin, cold.lowered, cold.log)


def test_library_kernel_cold_and_warm(cache, capsys):
    """A real instantiation through the path get_function uses; the times are printed."""
    directory, compiles = cache
    name = kernel_cache.all_name_expressions()[0]
    start = time.monotonic()
    cold = kernel_cache.library_kernels((name,), ARCH)
    cold_s = time.monotonic() - start
    start = time.monotonic()
    warm = kernel_cache.library_kernels((name,), ARCH)
    warm_s = time.monotonic() - start
    assert not cold.from_cache and warm.from_cache and len(compiles) == 1
    assert warm.cubin == cold.cubin and warm.lowered == cold.lowered
    assert warm_s < cold_s
    with capsys.disabled():
        print(f"\n[kernel cache] {name} for sm_{ARCH}: {cold_s * 1e3:.0f} ms compiled, "
              f"{warm_s * 1e3:.1f} ms from the cache ({len(cold.cubin)} B)")


def _corruptions(data):
    header = len(kernel_cache.MAGIC) + 32
    flipped = bytearray(data)
    flipped[-100] ^= 0x01  # one bit of the CUBIN
    return {
        "one bit flipped": bytes(flipped),
        "truncated": data[:len(data) // 2],
        "empty": b"",
        "only the magic": kernel_cache.MAGIC,
        "checksum zeroed": data[:len(kernel_cache.MAGIC)] + bytes(32) + data[header:],
        "not an entry": b"\x7fELF" + bytes(200),
        "JSON nested 100,000 deep, checksum valid": _entry_with_header(b"[" * 100_000 + b"]" * 100_000),
    }


def _entry_with_header(header, cubin=b"\0" * 64):
    body = struct.pack("<I", len(header)) + header + cubin
    return kernel_cache.MAGIC + hashlib.sha256(body).digest() + body


@pytest.mark.parametrize("damage", sorted(_corruptions(b"x" * 300)))
def test_a_damaged_entry_is_compiled_again_and_replaced(cache, damage, caplog):
    directory, compiles = cache
    good = kernel_cache.compile_cached(SOURCE, NAMES, ARCH, OPTIONS)
    (entry,) = directory.iterdir()
    entry.write_bytes(_corruptions(entry.read_bytes())[damage])
    with caplog.at_level(logging.WARNING, logger="sepconv_gpu"):
        rebuilt = kernel_cache.compile_cached(SOURCE, NAMES, ARCH, OPTIONS)
    assert not rebuilt.from_cache and len(compiles) == 2
    assert rebuilt.cubin == good.cubin and rebuilt.lowered == good.lowered
    assert "damaged" in caplog.text
    again = kernel_cache.compile_cached(SOURCE, NAMES, ARCH, OPTIONS)  # the rewrite is valid
    assert again.from_cache and again.cubin == good.cubin and len(compiles) == 2


def test_an_entry_stored_under_another_key_is_not_trusted(cache):
    """A whole, well-formed entry renamed onto a key it was not built for."""
    directory, compiles = cache
    kernel_cache.compile_cached(SOURCE, NAMES[:1], ARCH, OPTIONS)
    (foreign,) = directory.iterdir()
    key = kernel_cache.entry_key(SOURCE, NAMES[1:], ARCH, OPTIONS)
    os.replace(foreign, directory / (key + kernel_cache.SUFFIX))
    result = kernel_cache.compile_cached(SOURCE, NAMES[1:], ARCH, OPTIONS)
    assert not result.from_cache and set(result.lowered) == {NAMES[1]} and len(compiles) == 2


def test_the_key_moves_with_everything_that_changes_the_binary(monkeypatch, tmp_path):
    base = kernel_cache.entry_key(SOURCE, NAMES, ARCH, OPTIONS)
    assert kernel_cache.entry_key(SOURCE, NAMES[::-1], ARCH, OPTIONS) == base  # a set
    toolkit = nvrtc.toolkit()
    variants = {
        "source": kernel_cache.entry_key(SOURCE + " ", NAMES, ARCH, OPTIONS),
        "name expressions": kernel_cache.entry_key(SOURCE, NAMES[:1], ARCH, OPTIONS),
        "options": kernel_cache.entry_key(SOURCE, NAMES, ARCH, OPTIONS + ("-DX=1",)),
        "option order": kernel_cache.entry_key(SOURCE, NAMES, ARCH, OPTIONS[::-1]),
        "architecture": kernel_cache.entry_key(SOURCE, NAMES, 90, OPTIONS),
    }
    monkeypatch.setattr(nvrtc, "toolkit",
                        lambda: dataclasses.replace(toolkit, version=(toolkit.version[0], 99)))
    variants["NVRTC version"] = kernel_cache.entry_key(SOURCE, NAMES, ARCH, OPTIONS)
    # the same headers at another place: the same key (contents only); then one of them
    # rewritten in place, with its modification time kept: another key
    headers = tmp_path / "include"
    shutil.copytree(toolkit.include_dir, headers, ignore=lambda d, names: [
        n for n in names if os.path.isdir(os.path.join(d, n))])
    monkeypatch.setattr(nvrtc, "toolkit", lambda: dataclasses.replace(toolkit, include_dir=str(headers)))
    kernel_cache._headers_hash.cache_clear()
    try:
        assert kernel_cache.entry_key(SOURCE, NAMES, ARCH, OPTIONS) == base
        header = headers / nvrtc.HEADER
        stat = header.stat()
        header.write_bytes(header.read_bytes().replace(b"#define", b"#define ", 1))
        os.utime(header, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        kernel_cache._headers_hash.cache_clear()
        variants["header contents"] = kernel_cache.entry_key(SOURCE, NAMES, ARCH, OPTIONS)
    finally:
        kernel_cache._headers_hash.cache_clear()
    variants["lineinfo"] = kernel_cache.entry_key(SOURCE, NAMES, ARCH, OPTIONS + ("-lineinfo",))
    keys = [base] + list(variants.values())
    assert len(set(keys)) == len(keys), variants


def test_the_key_hashes_the_headers_the_kernels_include_not_the_directory(monkeypatch, tmp_path):
    """The library's key (its real source) is kept when the include directory gains or
    loses headers the kernels do not include (another nvidia wheel beside NVRTC: cuBLAS's,
    from torch), and moves when a header they include changes, also one they include only
    through another (cuda_fp16.h -> vector_types.h)."""
    toolkit, source = nvrtc.toolkit(), kernel_cache.kernel_source()
    headers = tmp_path / "include"
    shutil.copytree(toolkit.include_dir, headers)
    monkeypatch.setattr(nvrtc, "toolkit", lambda: dataclasses.replace(toolkit, include_dir=str(headers)))

    def key():
        kernel_cache._headers_hash.cache_clear()
        return kernel_cache.entry_key(source, NAMES, ARCH, OPTIONS)

    try:
        base = key()
        (headers / "cublas_v2.h").write_text("#pragma once\n/* another wheel's header */\n")
        (headers / "cooperative_groups.h").unlink()  # a header the kernels do not include
        assert key() == base
        indirect = headers / "vector_types.h"
        assert b"vector_types.h" not in source.encode()  # included only by the CUDA headers
        indirect.write_bytes(indirect.read_bytes() + b"\n")
        assert key() != base
    finally:
        kernel_cache._headers_hash.cache_clear()


def test_lineinfo_enters_the_library_options(monkeypatch):
    monkeypatch.delenv(kernel_cache.LINEINFO_VAR, raising=False)
    assert "-lineinfo" not in kernel_cache.library_options()
    for value, on in (("1", True), ("false", False), ("OFF", False), ("no", False), ("Yes", True)):
        monkeypatch.setenv(kernel_cache.LINEINFO_VAR, value)
        assert ("-lineinfo" in kernel_cache.library_options()) is on, value
    monkeypatch.setenv(kernel_cache.LINEINFO_VAR, "lineinfo")
    with pytest.raises(ValueError, match=f"environment variable {kernel_cache.LINEINFO_VAR} "
                                         "must be one of .*received 'lineinfo'"):
        kernel_cache.library_options()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_entries_get_the_mode_the_umask_gives(cache, umask, mode):
    """0644 under the usual 022: a cache built by one user (a Docker image built as root)
    is readable by another (a container run with --user)."""
    directory, _ = cache
    old = os.umask(umask)
    try:
        kernel_cache.compile_cached(SOURCE, NAMES, ARCH, OPTIONS)
        kernel_cache.write_atomically(str(directory / "autotune.json"), b"{}", ".autotune.")
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()} == {
        p.name: mode for p in directory.iterdir()}


def test_a_device_newer_than_nvrtc_gets_ptx_for_the_newest_architecture(cache, caplog):
    """NVRTC cannot emit SASS for an architecture above its list (nvrtcGetSupportedArchs):
    PTX for the newest it knows instead, cached like a CUBIN, said once in the log."""
    directory, compiles = cache
    newest = max(nvrtc.toolkit().archs)
    future = newest + 10
    nvrtc._ptx_said.discard(future)
    with caplog.at_level(logging.WARNING, logger="sepconv_gpu"):
        cold = kernel_cache.compile_cached(SOURCE, NAMES, future, OPTIONS)
        warm = kernel_cache.compile_cached(SOURCE, NAMES, future, OPTIONS)
    assert cold.ptx and warm.ptx and warm.from_cache and len(compiles) == 1
    assert warm.cubin == cold.cubin
    text = cold.cubin.rstrip(b"\0").decode()
    assert f".target sm_{newest}" in text
    assert all(f".entry {mangled}(" in text for mangled in cold.lowered.values())
    assert caplog.text.count(f"sm_{future}") == 1 and f"compute_{newest}" in caplog.text
    sass = kernel_cache.compile_cached(SOURCE, NAMES, newest, OPTIONS)  # a separate entry
    assert not sass.ptx and sass.cubin.startswith(b"\x7fELF")


def _compile_after(start_at, names):
    """Worker: wait for a common start time, then go through the cache."""
    time.sleep(max(0.0, start_at - time.time()))
    compiled = kernel_cache.compile_cached(SOURCE, names, ARCH, OPTIONS)
    return compiled.cubin, compiled.lowered


def test_processes_racing_on_one_key(tmp_path, monkeypatch):
    """Several processes compile the same kernels into an empty cache at the same moment,
    then several read them at once: one valid entry, every process the same result."""
    directory = tmp_path / "cache"
    monkeypatch.setenv(kernel_cache.ENV_VAR, str(directory))  # inherited by the workers
    workers = 4
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        list(pool.map(time.sleep, [0.0] * workers))  # started and imported before the race
        for _ in range(2):  # the first round writes, the second reads
            start_at = time.time() + 1.0
            results = list(pool.map(_compile_after, [start_at] * workers, [NAMES] * workers))
            assert all(r == results[0] for r in results)
    key = kernel_cache.entry_key(SOURCE, NAMES, ARCH, OPTIONS)
    assert _entries(directory) == [key + kernel_cache.SUFFIX]
    entry = kernel_cache.decode_entry((directory / _entries(directory)[0]).read_bytes(), key, NAMES)
    assert entry is not None and (entry.cubin, entry.lowered) == results[0]


def test_an_unwritable_cache_costs_only_the_recompilation(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(kernel_cache.ENV_VAR, str(blocker / "cache"))
    monkeypatch.setattr(kernel_cache, "_write_failure_said", False)
    with caplog.at_level(logging.WARNING, logger="sepconv_gpu"):
        first = kernel_cache.compile_cached(SOURCE, NAMES, ARCH, OPTIONS)
        second = kernel_cache.compile_cached(SOURCE, NAMES, ARCH, OPTIONS)
    assert not first.from_cache and not second.from_cache and first.cubin == second.cubin
    assert caplog.text.count("cannot write the kernel cache") == 1


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv(kernel_cache.ENV_VAR, str(tmp_path / "mine"))
    assert kernel_cache.cache_dir() == str(tmp_path / "mine")
    monkeypatch.delenv(kernel_cache.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kernel_cache.cache_dir() == str(tmp_path / "xdg" / "sepconv_gpu")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert kernel_cache.cache_dir() == str(tmp_path / "home" / ".cache" / "sepconv_gpu")


def test_the_backend_builds_a_device_newer_than_nvrtc_through_the_cache(fake_backend, monkeypatch):
    """cuda_backend on a device above NVRTC's list (a fake CuPy, compute capability 10.0
    against archs up to 90): our build path (PTX, as above), not CuPy's RawModule."""
    backend, cupy = fake_backend("100")
    built = fake_nvrtc(backend, monkeypatch, lambda names: nvrtc.Compiled(
        cubin=b".version\0", lowered={n: "_Zk" for n in names}, log="", ptx=True))
    launch = _launch(0)
    backend._launch(launch, ("x",))
    assert built == [((launch.name,), 100)]
    assert [c[0] for c in cupy.calls[:3]] == ["load", "get_function", "launch"]
