"""The build side of the CUDA kernels: their source as NVRTC compiles it (`kernel_source`: the
files of kernels/ with local headers inlined under `#line` tags), the options
(`library_options`), every instantiation the library can request
(`all_name_expressions`), and the compiled kernels kept on disk, so that a process pays
NVRTC once per kernel and machine (`library_kernels`, the one build path).

CuPy does not keep modules built with name expressions on disk (before 14.2), so every
process would recompile each kernel variant (~1 s each). Here each NVRTC result is
one file in `cache_dir()`, named by a SHA-256 key over everything that changes the binary,
and over contents only, so that a cache built in one checkout or on one machine (e.g.
`python -m sepconv_gpu.prebuild` without a GPU) is hit from another: the entry format, the
source text (local headers inlined, `#line` tags relative to the checkout), the name
expressions, the NVRTC options but for the include directory (the architecture, and
`-lineinfo` under SEPCONV_GPU_LINEINFO=1, among them), the NVRTC version and a hash of
the names and contents of the CUDA headers the source includes, directly or through other
headers (not of the whole include directory, which in a pip environment also holds the
headers of every other nvidia wheel installed, e.g. torch's cuBLAS).

An entry is MAGIC | SHA-256 of the body | body, the body being a 4-byte length, a JSON
header (key, lowered names, NVRTC log) and the CUBIN. It is written to a temporary file
in the same directory and renamed over the entry (`os.replace`), so a reader sees a whole
entry or none, and processes that compile the same kernel at once each write identical
bytes. An entry is used only after its magic, checksum, key and names check out; anything
else (truncated, corrupted, foreign) is compiled again and overwritten. A cache directory
that cannot be written only costs the recompilation (said once in the log).

Clear the cache by deleting the directory.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import struct

from ..._env import flag
from . import nvrtc, simt, tc

ENV_VAR = "SEPCONV_GPU_CACHE_DIR"
# SEPCONV_GPU_LINEINFO=1 (or true/yes/on): kernels carry line information (compute-sanitizer reports source
# lines); off by default, since it is one more option (and a different binary).
LINEINFO_VAR = "SEPCONV_GPU_LINEINFO"
MAGIC = b"SEPCUBIN"
FORMAT = 3  # bump when the entry layout or the key changes meaning
SUFFIX = ".cubin"

# What CuPy's RawModule adds to a module's options, kept so that our build and the CuPy
# fallback compile the same code: float32 denormals flush to zero (README, "Dtypes") and
# functions are __device__ unless marked otherwise.
CUPY_OPTIONS = ("--device-as-default-execution-space", "-ftz=true")
NVRTC_OPTIONS = ("--std=c++17",)

logger = logging.getLogger("sepconv_gpu")
_write_failure_said = False


# --- sources --------------------------------------------------------------------------------

def all_name_expressions():
    """Every kernel instantiation the library can request (what the compile test and
    `python -m sepconv_gpu.prebuild` build)."""
    return simt.simt_name_expressions() + tc.tc_name_expressions()


def kernels_dir():
    """kernels/ in an installed wheel (sepconv_gpu/kernels) or in a source checkout."""
    here = os.path.dirname(os.path.abspath(__file__))  # sepconv_gpu/backends/cuda
    package = os.path.dirname(os.path.dirname(here))
    for candidate in (os.path.join(package, "kernels"),
                      os.path.join(os.path.dirname(package), "kernels")):
        if os.path.isfile(os.path.join(candidate, simt.SOURCE)):
            return candidate
    raise FileNotFoundError(
        f"sepconv_gpu: CUDA sources ({simt.SOURCE}) found neither in the installed package "
        f"({os.path.join(package, 'kernels')}) nor in a source checkout.")


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def _inline(directory, filename, seen):
    """The file's text with `#line` markers, local `#include "..."` files inlined.

    Inlining (rather than an -I option) makes the text the kernel cache hashes
    (below) cover the headers too, and keeps NVRTC error locations pointing at
    the real files.
    """
    tag = f"kernels/{filename}"
    with open(os.path.join(directory, filename), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    out = [f'#line 1 "{tag}"']
    for number, line in enumerate(lines, start=1):
        match = _INCLUDE.match(line)
        if match and os.path.isfile(os.path.join(directory, match.group(1))):
            if match.group(1) not in seen:
                seen.add(match.group(1))
                out.append(_inline(directory, match.group(1), seen))
            out.append(f'#line {number + 1} "{tag}"')
        else:
            out.append(line)
    return "\n".join(out)


@functools.lru_cache(maxsize=None)
def kernel_source():
    """The complete kernel source as NVRTC compiles it (read once): the SIMT kernels,
    then the tensor-core kernel (sharing the inlined headers)."""
    seen = set()
    files = (simt.SOURCE, tc.TC_SOURCE)
    return "\n".join(_inline(kernels_dir(), name, seen) for name in files) + "\n"


# --- the disk cache ---------------------------------------------------------------------------

def cache_dir():
    """SEPCONV_GPU_CACHE_DIR, else $XDG_CACHE_HOME/sepconv_gpu, else ~/.cache/sepconv_gpu."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return os.path.abspath(os.path.expanduser(configured))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sepconv_gpu")


def library_kernels(name_expressions, arch, source=None):
    """The library's kernels, `name_expressions` instantiated, as SASS for sm_`arch`: an
    nvrtc.Compiled, from the disk cache when it is there. `source` defaults to
    `kernel_source()` (a test passes one snapshot to all its worker processes).

    This is the one build path: `cuda_backend.get_function` loads what it returns, and the
    NVRTC test compiles every instantiation through it.
    """
    return compile_cached(kernel_source() if source is None else source,
                          name_expressions, arch, library_options())


def library_options():
    """The NVRTC options of the library's kernels (without the target and include)."""
    lineinfo = ("-lineinfo",) if flag(LINEINFO_VAR) else ()
    return NVRTC_OPTIONS + CUPY_OPTIONS + lineinfo


def compile_cached(source, name_expressions, arch, options):
    """nvrtc.compile_cubin(source, name_expressions, arch, options) through the disk cache;
    `.from_cache` on the result tells whether it was read from there."""
    names = tuple(name_expressions)
    key = entry_key(source, names, arch, options)
    path = os.path.join(cache_dir(), key + SUFFIX)
    cached = _read(path, key, names)
    if cached is not None:
        return cached
    compiled = nvrtc.compile_cubin(source, names, arch, options)
    _write(path, key, compiled)
    return compiled


def entry_key(source, name_expressions, arch, options):
    """Contents only: no path, no modification time (see the module's docstring)."""
    toolkit = nvrtc.toolkit()
    described = {
        "format": FORMAT,
        "source": hashlib.sha256(source.encode()).hexdigest(),
        "names": sorted(name_expressions),
        "options": [*options, nvrtc.arch_option(int(arch))],
        "nvrtc": list(toolkit.version),
        "headers": _headers_hash(source, toolkit.include_dir),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


_ANY_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*[<"]([^>"]+)[>"]', re.MULTILINE)


@functools.lru_cache(maxsize=None)
def _headers_hash(source, include_dir):
    """The names and contents of the headers in `include_dir` that `source` includes, and
    those they include in turn (every `#include` line counts, taken or not by the
    preprocessor: a superset of what the compiler reads, from the same files); read once
    per process. A header found neither there nor beside its includer is NVRTC's own
    (`<utility>`), covered by the NVRTC version. Changes when an included header changes
    (a wheel upgraded beside NVRTC), not when the files move or other headers come and go."""
    found, pending = {}, [("", name) for name in _ANY_INCLUDE.findall(source)]
    while pending:
        includer_dir, name = pending.pop()
        for candidate in (os.path.normpath(os.path.join(includer_dir, name)), os.path.normpath(name)):
            path = os.path.join(include_dir, candidate)
            if candidate in found:
                break
            if not os.path.isfile(path):
                continue
            with open(path, "rb") as fh:
                found[candidate] = fh.read()
            text = found[candidate].decode("utf-8", "replace")
            pending += [(os.path.dirname(candidate), n) for n in _ANY_INCLUDE.findall(text)]
            break
    digest = hashlib.sha256()
    for name in sorted(found):
        digest.update(f"{name}\0{len(found[name])}\0".encode() + found[name])
    return digest.hexdigest()


# --- entries ------------------------------------------------------------------------------

def encode_entry(key, compiled):
    header = json.dumps({"key": key, "lowered": compiled.lowered, "log": compiled.log,
                         "ptx": compiled.ptx}).encode()
    body = struct.pack("<I", len(header)) + header + compiled.cubin
    return MAGIC + hashlib.sha256(body).digest() + body


# What reading JSON from a file may raise on its contents (RecursionError: nesting deeper
# than the parser's stack; UnicodeDecodeError is a ValueError): each means "damaged".
DECODE_ERRORS = (ValueError, RecursionError)


def decode_entry(data, key, name_expressions):
    """The nvrtc.Compiled in `data`, or None unless every check passes."""
    start = len(MAGIC) + 32
    if len(data) < start + 4 or not data.startswith(MAGIC):
        return None
    body = data[start:]
    if hashlib.sha256(body).digest() != data[len(MAGIC):start]:
        return None
    (header_size,) = struct.unpack_from("<I", body)
    try:
        header = json.loads(body[4:4 + header_size])
    except DECODE_ERRORS:
        return None
    if not isinstance(header, dict) or header.get("key") != key:
        return None
    lowered = header.get("lowered")
    if not isinstance(lowered, dict) or set(lowered) != set(name_expressions):
        return None
    return nvrtc.Compiled(cubin=body[4 + header_size:], lowered=lowered,
                          log=header.get("log", ""), from_cache=True, ptx=bool(header.get("ptx")))


def _read(path, key, name_expressions):
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:  # absent (the usual miss) or unreadable
        return None
    compiled = decode_entry(data, key, name_expressions)
    if compiled is None:
        logger.warning("sepconv_gpu: kernel cache entry %s is damaged; compiling again", path)
    return compiled


def write_atomically(path, data, prefix):
    """Writes the bytes `data` to `path` through a temporary file beside it and a rename,
    so readers see the old file, the new one, or none; OSError (the temporary file
    removed) where it cannot. Shared by the kernel cache and autotune.json. The file's
    mode is 0666 less the umask (0644 under 022), as `open` gives: a cache made by one
    user (a Docker image built as root) can be read by another (mkstemp's is 0600)."""
    directory, temp = os.path.dirname(path), None
    try:
        os.makedirs(directory, exist_ok=True)
        temp = os.path.join(directory, f"{prefix}{secrets.token_hex(8)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(temp, path)
    except OSError:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        raise


def _write(path, key, compiled):
    global _write_failure_said
    directory = os.path.dirname(path)
    try:
        write_atomically(path, encode_entry(key, compiled), f".{key[:16]}.")
    except OSError as exc:
        if not _write_failure_said:
            _write_failure_said = True
            logger.warning("sepconv_gpu: cannot write the kernel cache in %s (%s); kernels "
                           "are compiled again in each process (set %s to a writable "
                           "directory)", directory, exc, ENV_VAR)
