"""Run the CUDA kernels on the CPU, for tests on machines without a GPU.

The kernel source (exactly what NVRTC compiles) is built with the host C++ compiler
against a small shim of the CUDA execution model: every block runs its 256 threads as OS
threads, `__syncthreads` is a barrier, `__shfl_xor_sync` goes through a per-warp barrier,
dynamic shared memory is one buffer filled with NaN bytes before every block (a read of
an unwritten slot poisons the result). Launches take their arguments the way
`cuLaunchKernel` does (an array of pointers to each argument), built from the very NumPy
scalars the CUDA backend passes to CuPy, so a mistyped scalar shows up here too.

This checks indexing, tiling, halo staging, masks, layouts, epilogues and argument
marshalling. It says nothing about timing, memory-model races or the GPU's math library.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

from sepconv_gpu.backends import cuda_kernels

PRELUDE = r"""
#include <cuda_fp16.h>
#include <vector_types.h>
#include <vector_functions.h>
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#undef __global__
#undef __device__
#undef __forceinline__
#undef __shared__
#undef __align__
#undef __launch_bounds__
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__
#define __align__(n)
#define __launch_bounds__(...)

struct EmuDim3 { unsigned x = 0, y = 1, z = 1; };
thread_local EmuDim3 threadIdx, blockIdx;
EmuDim3 blockDim, gridDim;
alignas(16) unsigned char smem_raw[1 << 17];
static std::barrier<>* emu_block_barrier;
static std::barrier<>* emu_warp_barrier[32];
static uint64_t emu_shfl_slot[1024];

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

template <typename T> T __shfl_xor_sync(unsigned, T v, int mask) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    const unsigned t = threadIdx.x, w = t >> 5;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    emu_shfl_slot[t] = bits;
    emu_warp_barrier[w]->arrive_and_wait();
    bits = emu_shfl_slot[(t & ~31u) | ((t & 31u) ^ (unsigned)mask)];
    emu_warp_barrier[w]->arrive_and_wait();
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

inline float emu_int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline double emu_longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }
#define __int_as_float emu_int_as_float
#define __longlong_as_double emu_longlong_as_double
using std::min;
using std::max;
"""

LAUNCHER = r"""
template <typename... Args, std::size_t... I>
static void emu_call(void (*k)(Args...), void** a, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<Args>>*>(a[I])...);
}

template <typename... Args>
static void emu_launch(void (*k)(Args...), unsigned grid, unsigned block, void** args) {
    gridDim.x = grid;
    blockDim.x = block;
    std::barrier<> bar(block);
    emu_block_barrier = &bar;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    for (unsigned w = 0; w < block / 32; ++w) {
        warps.emplace_back(new std::barrier<>(32));
        emu_warp_barrier[w] = warps.back().get();
    }
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([=, &bar] {
            threadIdx.x = t;
            for (unsigned b = 0; b < grid; ++b) {
                bar.arrive_and_wait();
                if (t == 0) std::memset(smem_raw, 0xff, sizeof(smem_raw));  // NaN poison
                bar.arrive_and_wait();
                blockIdx.x = b;
                emu_call(k, args, std::index_sequence_for<Args...>{});
            }
        });
    }
    for (auto& th : threads) th.join();
}
"""


def compiler():
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")


def cuda_include_dir():
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.isfile(os.path.join(root, "include", "cuda_fp16.h")):
            return os.path.join(root, "include")
    nvcc = shutil.which("nvcc")
    if nvcc:
        inc = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include")
        if os.path.isfile(os.path.join(inc, "cuda_fp16.h")):
            return inc
    return None


class HostEmulator:
    """The given kernel instantiations, compiled for the host."""

    def __init__(self, names, build_dir=None):
        self.names = list(dict.fromkeys(names))
        source = (PRELUDE + cuda_kernels.source() + LAUNCHER + "".join(
            f'extern "C" void emu_entry_{i}(unsigned g, unsigned b, void** a) '
            f"{{ emu_launch(&{name}, g, b, a); }}\n" for i, name in enumerate(self.names)))
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        build_dir = build_dir or os.path.join(tempfile.gettempdir(), "sepconv_gpu_emulator")
        os.makedirs(build_dir, exist_ok=True)
        library = os.path.join(build_dir, f"emu_{digest}.so")
        if not os.path.exists(library):
            src = os.path.join(build_dir, f"emu_{digest}.cpp")
            with open(src, "w") as fh:
                fh.write(source)
            tmp = library + f".{os.getpid()}.tmp"
            cmd = [compiler(), "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w",
                   "-I", cuda_include_dir(), "-x", "c++", src, "-o", tmp]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"host build of the kernels failed:\n{result.stderr[-6000:]}")
            os.replace(tmp, library)
        self._lib = ctypes.CDLL(library)
        self._entries = {}
        for i, name in enumerate(self.names):
            fn = getattr(self._lib, f"emu_entry_{i}")
            fn.argtypes = (ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p))
            fn.restype = None
            self._entries[name] = fn

    def launch(self, name, grid, block, args):
        """Arrays are passed as device pointers are (the address of their first element,
        negative strides included); NumPy scalars by value with their exact type."""
        keep = []
        pointers = (ctypes.c_void_p * len(args))()
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                holder = np.array([a.__array_interface__["data"][0]], dtype=np.uint64)
            else:
                assert isinstance(a, np.generic), f"argument {i} must be a NumPy scalar, got {type(a)}"
                holder = np.array(a)
            keep.append(holder)
            pointers[i] = holder.ctypes.data
        self._entries[name](grid, block, pointers)


def separable_conv(emulator, x, depthwise, pointwise, bias, geom, activation):
    """CupyOps.separable_conv with NumPy arrays and emulated launches."""
    dtype = x.dtype.name
    y = np.empty(geom.output_shape, dtype=x.dtype)
    # poison the output: every element must be written by the kernel
    y.view(np.uint8).fill(0xFF)
    strides = cuda_kernels.input_element_strides(x.shape, x.strides, x.itemsize, geom)
    acc = np.float64 if dtype == "float64" else np.float32
    dk = np.ascontiguousarray(depthwise, dtype=acc)
    pk = np.ascontiguousarray(pointwise, dtype=acc)
    b = None if bias is None else np.ascontiguousarray(bias, dtype=acc)
    launches, apply_after = cuda_kernels.launch_sequence(dtype, geom, activation, strides,
                                                         b is not None)
    for launch in launches:
        arrays = (x, dk, pk, pk if b is None else b, y) if launch.kind == "fused" else (y,)
        emulator.launch(launch.name, launch.grid, launch.block, arrays + launch.scalars)
    if apply_after:
        y = np.asarray(activation(y), dtype=x.dtype)
    return y, launches
