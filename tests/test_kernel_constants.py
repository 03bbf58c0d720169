"""Every constant mirrored between the CUDA sources and Python has the same value.

The kernels' `#define` / `constexpr` integers are read from the sources (simple integer
expressions of earlier constants are evaluated) and compared with the Python constants
that claim to mirror them. To mirror a new constant, add a row to MIRRORED.
"""
from __future__ import annotations

import ast
import itertools
import operator
import os
import re

import numpy as np
import pytest

from sepconv_gpu import activations, geometry
from sepconv_gpu.backends.cuda import kernel_cache, kernel_common, simt, tc
from sepconv_gpu.backends.cuda.launch import input_element_strides, launch_sequence

try:
    import _cuda_host_emulator as emu  # tests/ on sys.path (pytest's default rootdir import)
except ImportError:  # tests/ as a package
    from . import _cuda_host_emulator as emu

KERNELS = kernel_cache.kernels_dir()

# source file -> {C++ constant: the Python value that mirrors it}
MIRRORED = {
    os.path.join(KERNELS, "sepconv_simt.cu"): {
        "SC_THREADS": simt.THREADS,
        "SC_BK": simt.CHUNK,
        "SC_TILE_ELEMS": simt.TILE_ELEMS,
        "SC_DW_SMEM_TAPS": simt.DW_SMEM_TAPS,
        "SC_CS_PAD": simt.CS_PAD,
    },
    os.path.join(KERNELS, "sepconv_common.cuh"): {
        "ACT_SLOTS": kernel_common.ACT_SLOTS,
    },
    os.path.join(KERNELS, "sepconv_tc.cu"): {
        "TC_THREADS": tc.TC_THREADS,
        "TC_WARPS": tc.TC_WARPS,
        "TC_WARP_M": tc.TC_WARP_M,
        "TC_WARP_N": tc.TC_WARP_N,
        "TC_TILE_ELEMS": tc.TC_TILE_ELEMS,
        "TC_CHUNK_BYTES": tc.TC_CHUNK_BYTES,
        "TC_ROW_BYTES": tc.TC_ROW_BYTES,
        "TC_OUT_PAD": tc.TC_OUT_PAD,
        "TC_MT2_REGISTERS": tc.TC_MT2_REGISTERS,
    },
    emu.RUNTIME: {
        "EMU_SMEM_LIMIT": emu.SMEM_LIMIT,
    },
}

_DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)\s+(.+?)\s*$", re.M)
_CONSTEXPR = re.compile(r"\bconstexpr\s+(?:static\s+)?[\w:]+(?:\s+[\w:]+)*\s+(\w+)\s*=\s*([^;{}]+);")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.LShift: operator.lshift,
        ast.RShift: operator.rshift, ast.BitOr: operator.or_, ast.BitAnd: operator.and_}


def _strip_comments(text):
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def _evaluate(expression, known):
    """Integer value of a C constant expression of literals and `known` names, or None."""
    python = re.sub(r"(\d+)[uUlL]+\b", r"\1", expression).replace("/", "//")

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in known:
            return known[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ValueError(ast.dump(node))

    try:
        return value(ast.parse(python, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError):
        return None  # not an integer constant (a function-like macro, a float, ...)


def cpp_constants(path):
    """{name: int} of the file's integer #defines and constexpr variables, in order."""
    with open(path, encoding="utf-8") as fh:
        text = _strip_comments(fh.read())
    found = {}
    matches = sorted(list(_DEFINE.finditer(text)) + list(_CONSTEXPR.finditer(text)),
                     key=lambda m: m.start())
    for m in matches:
        v = _evaluate(m.group(2), found)
        if v is not None:
            found.setdefault(m.group(1), v)
    return found


ROWS = [(path, name, value) for path, table in MIRRORED.items() for name, value in table.items()]


@pytest.mark.parametrize("path, name, value", ROWS,
                         ids=[f"{os.path.basename(p)}:{n}" for p, n, _ in ROWS])
def test_mirrored_constant(path, name, value):
    constants = cpp_constants(path)
    assert name in constants, f"{name} is not an integer constant of {path}"
    assert constants[name] == value, (
        f"{os.path.basename(path)}: {name} = {constants[name]}, Python mirrors {value}")


def test_constant_parser_reads_defines_and_constexpr(tmp_path):
    src = tmp_path / "k.cu"
    src.write_text("#define A 16  // note\n#define B (A * 4 / 3)\n#define F(x) x\n"
                   "static constexpr int C = B << 1;\n#define D 1.5f\n")
    assert cpp_constants(str(src)) == {"A": 16, "B": 21, "C": 42}


def _enum_names(text, enum):
    body = re.search(r"\benum\s+" + enum + r"\s*\{(.*?)\}", _strip_comments(text), re.S).group(1)
    entries = [e.strip() for e in body.split(",") if e.strip()]
    return [e.split("=")[0].strip() for e in entries], entries


def test_activation_enum_order_matches_python():
    with open(os.path.join(KERNELS, "sepconv_common.cuh"), encoding="utf-8") as fh:
        names, entries = _enum_names(fh.read(), "SepconvActivation")
    assert names == [kernel_common.activation_enum(k) for k in kernel_common.FUSED_ACTIVATIONS]
    # values come from the order alone
    assert entries[0].replace(" ", "") in ("ACT_LINEAR", "ACT_LINEAR=0")
    assert all("=" not in e for e in entries[1:])


def test_runtime_activation_switch_covers_every_activation():
    # ActivationDispatch (both kernels' epilogues) branches over ACT_SLOTS enum values
    assert len(kernel_common.FUSED_ACTIVATIONS) <= kernel_common.ACT_SLOTS


def test_softmax_block_size():
    with open(os.path.join(KERNELS, simt.SOURCE), encoding="utf-8") as fh:
        text = _strip_comments(fh.read())
    m = re.search(r"__launch_bounds__\((\d+)\)\s*sepconv_softmax_lastaxis\b", text)
    assert m, "sepconv_softmax_lastaxis has no __launch_bounds__(N)"
    assert int(m.group(1)) == simt.SOFTMAX_THREADS


def test_derived_python_constants():
    assert all(simt.TILE_ELEMS % bf == 0 for bf in simt.FILTER_BLOCKS)


# --- the catalogue: what the launches request is what the NVRTC test builds -------------

# What the documentation promises is applied to the output after the kernel (activations
# module docstring); every other activation name runs fused or with the last-axis kernel.
APPLIED_AFTER_THE_KERNEL = {"glu", "sparsemax", "tf_keras_hard_sigmoid"}


@pytest.mark.parametrize("dtype", sorted(kernel_common.DTYPES))
def test_every_launch_requests_a_built_instantiation(dtype):
    """The planner's requests (what NVRTC compiles at run time) are all among the
    instantiations tests/test_nvrtc.py builds: any activation, layout, kernel size, path."""
    built = kernel_cache.all_name_expressions()
    assert len(built) == len(set(built))
    after = set()
    for name in activations.NAMES:
        act = activations.get(name)
        for channels_first, kernel, allow_tf32 in itertools.product(
                (False, True), ((3, 3), (5, 5), (1, 3), (7, 7), (2, 5)), (False, True)):
            shape = (2, 4, 12, 10) if channels_first else (2, 12, 10, 4)
            geom = geometry.make_geometry(2, shape, kernel + (4, 2), (1, 1, 8, 16), (16,), (1, 1),
                                          "same", "channels_first" if channels_first else "channels_last", (1, 1))
            itemsize = kernel_common.DTYPES[dtype][1]   # bfloat16: no NumPy dtype without ml_dtypes
            byte_strides = tuple(s * itemsize for s in np.zeros(shape, np.uint8).strides)
            strides = input_element_strides(shape, byte_strides, itemsize, geom)
            launches, apply_after = launch_sequence(dtype, geom, act, strides, True,
                                                    allow_tf32=allow_tf32)
            missing = [launch.name for launch in launches if launch.name not in built]
            assert not missing, (name, missing)
            if apply_after:
                after.add(act.name)
    assert after == APPLIED_AFTER_THE_KERNEL


def test_source_lines_point_at_real_files():
    source = kernel_cache.kernel_source()
    assert source.startswith('#line 1 "kernels/sepconv_simt.cu"')
    assert '#line 1 "kernels/sepconv_common.cuh"' in source
    assert "#include \"" not in source  # local headers are inlined
    for banned in ("<cstdio>", "<cmath>", "<vector>", "<iostream>", "<cstdint>"):
        assert banned not in source, f"host standard header {banned} breaks NVRTC"
