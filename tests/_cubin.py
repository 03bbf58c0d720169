"""Per-kernel resources read from a CUBIN (ELF64): what `ptxas -v` reports, taken from
the very binary the run-time path loads, with no second compile; and its SASS, through
`nvdisasm` where one is installed (the test extra brings the nvidia-cuda-nvdisasm wheel).

The `.nv.info` section holds attribute records `format (u8), attribute (u8), payload`; the
two read here have format 4 (a u16 size, then (symbol index u32, value u32)):
EIATTR_REGCOUNT (0x2f, registers per thread) and EIATTR_FRAME_SIZE (0x11, bytes of stack
frame: local memory, register spills included). tests/test_nvrtc.py checks them against
NVRTC's own `--ptxas-options=-v` report.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile

EIATTR_FRAME_SIZE = 0x11
EIATTR_REGCOUNT = 0x2F
_PAYLOAD_SIZE = {1: 0, 2: 1, 3: 2}  # formats without a size field: NVAL, BVAL, HVAL


def _sections(data):
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError("not an ELF64 CUBIN")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * entry_size) for i in range(count)]
    names = headers[names_index]

    def name(offset):
        start = names[4] + offset
        return data[start:data.index(b"\0", start)].decode()

    return {name(h[0]): data[h[4]:h[4] + h[5]] for h in headers}


def _attributes(body):
    pos = 0
    while pos < len(body):
        fmt, attribute = body[pos], body[pos + 1]
        pos += 2
        if fmt == 4:
            (size,) = struct.unpack_from("<H", body, pos)
            yield attribute, body[pos + 2:pos + 2 + size]
            pos += 2 + size
        else:
            pos += _PAYLOAD_SIZE[fmt]


def kernel_resources(cubin):
    """{mangled kernel name: (registers, stack frame bytes)} of every kernel in `cubin`."""
    sections = _sections(cubin)
    symbols, strings = sections[".symtab"], sections[".strtab"]

    def symbol_name(index):
        (offset,) = struct.unpack_from("<I", symbols, 24 * index)
        return strings[offset:strings.index(b"\0", offset)].decode()

    found = {}
    for attribute, payload in _attributes(sections[".nv.info"]):
        if attribute in (EIATTR_REGCOUNT, EIATTR_FRAME_SIZE) and len(payload) == 8:
            index, value = struct.unpack("<II", payload)
            slot = 0 if attribute == EIATTR_REGCOUNT else 1
            found.setdefault(symbol_name(index), [None, None])[slot] = value
    return {name: tuple(v) for name, v in found.items() if v[0] is not None}


def find_nvdisasm():
    """nvdisasm on PATH, else the one of an nvidia wheel (CUDA 13 and 12 layouts), or None."""
    found = shutil.which("nvdisasm")
    if found:
        return found
    try:
        import nvidia  # namespace package of the nvidia-* wheels
    except ImportError:
        return None
    for root in nvidia.__path__:
        for sub in ("cu13/bin", "cuda_nvdisasm/bin"):
            candidate = os.path.join(root, sub, "nvdisasm")
            if os.access(candidate, os.X_OK):
                return candidate
    return None


_FUNCTION = re.compile(r"^\.text\.(\S+):$")
# "/*0120*/   @!P0 BRA 0x340 ;": the opcode after the address and an optional predicate
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


def _symbol_indices(cubin):
    """{symbol name: index in .symtab}."""
    sections = _sections(cubin)
    symbols, strings = sections[".symtab"], sections[".strtab"]
    found = {}
    for index in range(len(symbols) // 24):
        (offset,) = struct.unpack_from("<I", symbols, 24 * index)
        found[strings[offset:strings.index(b"\0", offset)].decode()] = index
    return found


def sass_opcodes(cubin, nvdisasm, kernels=None):
    """{mangled kernel name: [opcode of each instruction, NOPs included]} of `cubin`'s
    kernels, or only of the mangled names in `kernels` (disassembling only those)."""
    only = []
    if kernels is not None:
        indices = _symbol_indices(cubin)
        only = ["-fun", ",".join(str(indices[name]) for name in kernels)]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        text = subprocess.run([nvdisasm, "-c", *only, fh.name], capture_output=True,
                              text=True, check=True).stdout
    functions, current = {}, None
    for line in text.splitlines():
        match = _FUNCTION.match(line)
        if match:
            current = functions.setdefault(match.group(1), [])
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            current.append(match.group(1))
    return functions
