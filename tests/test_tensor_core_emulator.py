"""The host emulator's tensor-core primitives and its traps, with tiny test kernels.

The kernels below use kernels/sepconv_ptx.cuh exactly as a real kernel does and are
compiled by the host emulator together with the project source. Their results are
compared with NumPy, the matrices assembled from the fragment layouts of the PTX ISA
(written out again here, independently of the emulator's C++); the mma (f16, bf16, tf32)
and ldmatrix (.x1/.x2/.x4, .trans) maps are also probed element by element against the
layouts CUTLASS's CuTe states, a third independent source. Deliberate mistakes (a warp
half skipping an mma, half a warp at one ldmatrix and half at another, a write past the
shared memory, a copy never waited for, a misaligned float4 / float2 / uint4 or cp.async)
must abort the process with a message: those run in a subprocess.

This shows the emulator follows the documented semantics; only a GPU run shows the PTX
does (tests/test_cuda_backend.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

try:
    import _cuda_host_emulator as emu  # tests/ on sys.path (pytest's default rootdir import)
except ImportError:  # tests/ as a package
    from . import _cuda_host_emulator as emu


KERNELS = r"""
#include "sepconv_ptx.cuh"

// Thread t of the grid holds the registers a[4t..4t+3], b[2t..2t+1], d[4t..4t+3]: one
// independent problem per warp. Lanes below skip_lanes skip the mma (a bug, to be caught).
template <bool TF32>
__global__ void tc_test_mma(const unsigned* a, const unsigned* b, float* d, int skip_lanes,
                            int sync_after) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned ra[4], rb[2];
    float rd[4];
    for (int i = 0; i < 4; ++i) { ra[i] = a[4 * t + i]; rd[i] = d[4 * t + i]; }
    for (int i = 0; i < 2; ++i) rb[i] = b[2 * t + i];
    if (int(threadIdx.x & 31) >= skip_lanes) {
        if (TF32) sepconv::mma_tf32_m16n8k8(rd, ra, rb);
        else sepconv::mma_f16_m16n8k16(rd, ra, rb);
    }
    if (sync_after) __syncthreads();
    for (int i = 0; i < 4; ++i) d[4 * t + i] = rd[i];
}

// As tc_test_mma, for mma.m16n8k16 with bf16 operands (the f16 fragment layouts).
__global__ void tc_test_mma_bf16(const unsigned* a, const unsigned* b, float* d) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned ra[4], rb[2];
    float rd[4];
    for (int i = 0; i < 4; ++i) { ra[i] = a[4 * t + i]; rd[i] = d[4 * t + i]; }
    for (int i = 0; i < 2; ++i) rb[i] = b[2 * t + i];
    sepconv::mma_bf16_m16n8k16(rd, ra, rb);
    for (int i = 0; i < 4; ++i) d[4 * t + i] = rd[i];
}

// One warp: shared memory <- src, then ldmatrix .xN (.trans when T) from this lane's row
// address: .x4 through sepconv_ptx.cuh's wrapper (what the kernels call), the other
// shapes through the emulator's model itself (the header wraps .x4 only).
template <int N, bool T>
__global__ void tc_test_ldmatrix(const unsigned* src, int words, const int* row_offsets,
                                 unsigned* out) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned* s = reinterpret_cast<unsigned*>(smem_raw);
    for (int i = threadIdx.x; i < words; i += blockDim.x) s[i] = src[i];
    __syncthreads();
    const unsigned char* row = smem_raw + row_offsets[threadIdx.x];
    unsigned r[N];
    if constexpr (N == 4 && !T)
        sepconv::ldsm_x4(r, row);
    else
        sepconv::emu::ldsm<N>("ldsm_model", T, r, row);
    for (int i = 0; i < N; ++i) out[N * threadIdx.x + i] = r[i];
}

// One warp: D = A (16x16 row-major) * B through ldmatrix, the way sepconv_tc loads its
// fragments (B stored N x K: filter rows).
__global__ void tc_test_ldmatrix_mma(const __half* a, const __half* b, float* d) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __half* As = reinterpret_cast<__half*>(smem_raw);
    __half* Bs = As + 256;
    for (int i = threadIdx.x; i < 256; i += 32) As[i] = a[i];
    for (int i = threadIdx.x; i < 128; i += 32) Bs[i] = b[i];
    __syncthreads();
    const int l = threadIdx.x;
    unsigned ra[4], b4[4];
    // matrices: rows 0-7 / 8-15 of columns 0-7, then of columns 8-15 (registers a0..a3)
    sepconv::ldsm_x4(ra, As + ((l & 7) + 8 * ((l >> 3) & 1)) * 16 + 8 * (l >> 4));
    // B: row n, k half (l >> 3) & 1; lanes 16-31 repeat lanes 0-15 (matrices 2, 3 unused)
    sepconv::ldsm_x4(b4, Bs + (l & 7) * 16 + 8 * ((l >> 3) & 1));
    const unsigned rb[2] = {b4[0], b4[1]};
    float rd[4] = {0.f, 0.f, 0.f, 0.f};
    sepconv::mma_f16_m16n8k16(rd, ra, rb);
    const int g = l >> 2, q = l & 3;
    d[g * 8 + 2 * q] = rd[0];
    d[g * 8 + 2 * q + 1] = rd[1];
    d[(g + 8) * 8 + 2 * q] = rd[2];
    d[(g + 8) * 8 + 2 * q + 1] = rd[3];
}

// Per thread t (n threads): group 0 copies 16 bytes src[4t..] to its slot, group 1 copies
// 16 bytes src[4n + 4t..] (zero fill for odd t). out[13t..] records what it sees when.
__global__ void tc_test_cp_async(const float* src, float* out, int leave_pending) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int t = threadIdx.x, n = blockDim.x, next = (t + 1) % n;
    float* s16 = reinterpret_cast<float*>(smem_raw);
    float* s4 = s16 + 4 * n;
    float* o = out + 13 * t;
    s16[4 * t] = s4[4 * t] = -1.f;           // overwritten by the copies' poison at issue
    sepconv::cp_async16(s16 + 4 * t, src + 4 * t, true);
    sepconv::cp_async_commit();
    sepconv::cp_async16(s4 + 4 * t, src + 4 * n + 4 * t, (t & 1) == 0);
    sepconv::cp_async_commit();
    o[0] = s16[4 * t];                   // no wait yet
    sepconv::cp_async_wait<1>();
    o[1] = s16[4 * t];                   // group 0 done
    o[2] = s4[4 * t];                    // group 1 still in flight
    sepconv::cp_async_wait<0>();
    o[3] = s4[4 * t];
    __syncthreads();
    for (int i = 0; i < 4; ++i) o[4 + i] = s16[4 * next + i];  // another thread's copy
    o[8] = s4[4 * next];
    __syncthreads();
    sepconv::cp_async16(s16 + 4 * t, src + 4 * next, true);    // not committed
    sepconv::cp_async_wait_all();
    for (int i = 0; i < 4; ++i) o[9 + i] = s16[4 * t + i];
    if (leave_pending) sepconv::cp_async16(s16 + 4 * t, src, true);  // never waited for
}

// Thread 0 writes the first and the last float of the dynamic shared memory and reads
// them back, and the float just past the end.
__global__ void tc_test_smem_bounds(float* out, int bytes, int write_past) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    float* s = reinterpret_cast<float*>(smem_raw);
    if (threadIdx.x == 0) {
        s[0] = 1.5f;
        s[bytes / 4 - 1] = 2.5f;
        out[0] = s[0];
        out[1] = s[bytes / 4 - 1];
        out[2] = s[bytes / 4];
        if (write_past) smem_raw[bytes] = 0;
    }
    __syncthreads();
}

__global__ void tc_test_cvt_tf32(const float* x, unsigned* out, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = sepconv::cvt_tf32(x[i]);
}

__global__ void tc_test_pack_half2(const float* x, unsigned* out) {
    out[threadIdx.x] = sepconv::pack_half2(x[2 * threadIdx.x], x[2 * threadIdx.x + 1]);
}

// Thread `who` reads or writes one vector `offset` elements into src (global) or shared
// memory: kind 0 a float4 load, 1 a float2 store to shared memory, 2 a uint4 load, 3 a
// 16-byte cp.async from src + offset. Misaligned (offset not a multiple of the vector)
// must fault, as on a GPU.
__global__ void tc_test_vector_access(const float* src, float* out, int kind, int offset,
                                      int who) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    float* s = reinterpret_cast<float*>(smem_raw);
    const int t = threadIdx.x, at = t == who ? offset : 0;
    if (kind == 0) {
        const float4 v = *reinterpret_cast<const float4*>(src + at);
        out[t] = v.x + v.w;
    } else if (kind == 1) {
        *reinterpret_cast<float2*>(s + 4 * t + at) = make_float2(src[0], src[1]);
    } else if (kind == 2) {
        const uint4 v = *reinterpret_cast<const uint4*>(src + at);
        out[t] = float(v.x & 1u);
    } else {
        sepconv::cp_async16(s + 4 * t, src + at, true);
        sepconv::cp_async_wait_all();
    }
}

// Lanes below `split` load at one ldmatrix, the others at another (the same addresses):
// undefined on a GPU (ldmatrix is .aligned), so the emulator must abort.
__global__ void tc_test_ldsm_two_sites(int split) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned r[4];
    const unsigned char* row = smem_raw + 16 * threadIdx.x;
    if (int(threadIdx.x) < split)
        sepconv::ldsm_x4(r, row);
    else
        sepconv::ldsm_x4(r, row);
    (void)r;
}

// Thread `stuck` loops forever without a collective (a bug, to be caught by the watchdog).
__global__ void tc_test_spin(int stuck) {
    volatile int spin = 1;
    while (int(threadIdx.x) == stuck && spin) {}
}

"""

NAMES = ["tc_test_mma<false>", "tc_test_mma<true>", "tc_test_mma_bf16",
         "tc_test_ldmatrix_mma", "tc_test_cp_async",
         "tc_test_smem_bounds", "tc_test_cvt_tf32", "tc_test_pack_half2", "tc_test_spin",
         "tc_test_vector_access", "tc_test_ldsm_two_sites"] + [
         f"tc_test_ldmatrix<{n}, {'true' if t else 'false'}>" for n in (1, 2, 4) for t in (0, 1)]

i32 = np.int32


def build(host_emulator=emu.HostEmulator):
    return host_emulator(NAMES, extra_source=KERNELS)


@pytest.fixture(scope="module")
def emulator(emulator_for):   # overrides conftest's: this module builds its own kernels
    return build(emulator_for)


# --- fragment layouts (PTX ISA), g = lane >> 2, q = lane & 3 -------------------------------

def f16_a(lane, e):   # A 16x16, element e = 0..7 (register e // 2, low half first)
    g, q = lane >> 2, lane & 3
    return g + 8 * ((e >> 1) & 1), 2 * q + (e & 1) + 8 * (e >> 2)


def f16_b(lane, e):   # B 16x8 (k, n), e = 0..3
    g, q = lane >> 2, lane & 3
    return 2 * q + (e & 1) + 8 * (e >> 1), g


def tf32_a(lane, e):  # A 16x8, e = 0..3 (one per register)
    g, q = lane >> 2, lane & 3
    return [(g, q), (g + 8, q), (g, q + 4), (g + 8, q + 4)][e]


def tf32_b(lane, e):  # B 8x8 (k, n), e = 0..1
    g, q = lane >> 2, lane & 3
    return [(q, g), (q + 4, g)][e]


def acc(lane, e):     # C / D 16x8, e = 0..3
    g, q = lane >> 2, lane & 3
    return g + 8 * (e >> 1), 2 * q + (e & 1)


def scatter(matrix, layout, elements):
    """(32, elements) fragment values of `matrix` by the layout."""
    return np.array([[matrix[layout(lane, e)] for e in range(elements)] for lane in range(32)])


def gather(fragments, layout, shape):
    out = np.full(shape, np.nan, fragments.dtype)
    for lane in range(32):
        for e in range(fragments.shape[1]):
            out[layout(lane, e)] = fragments[lane, e]
    assert not np.isnan(out).any()  # the layout covers the matrix
    return out


def halves_to_registers(fragments):
    """(32, 2r) float16 -> (32, r) uint32, element 2i in the low half of register i."""
    bits = np.ascontiguousarray(fragments, dtype=np.float16).view(np.uint16).astype(np.uint32)
    return bits[:, 0::2] | bits[:, 1::2] << 16


def tf32_truncate(x):
    return (np.asarray(x, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def run_mma(emulator, tf32, a_regs, b_regs, c_frags, skip_lanes=0, sync_after=0, blocks=1):
    warps = a_regs.shape[0]
    d = np.ascontiguousarray(c_frags, dtype=np.float32).copy()
    emulator.launch(f"tc_test_mma<{'true' if tf32 else 'false'}>", blocks, 32 * warps // blocks,
                    (np.ascontiguousarray(a_regs, np.uint32), np.ascontiguousarray(b_regs, np.uint32),
                     d, i32(skip_lanes), i32(sync_after)), 0)
    return d


@pytest.mark.parametrize("tf32", [False, True], ids=["f16_m16n8k16", "tf32_m16n8k8"])
def test_tensor_core_mma_matches_numpy(emulator, tf32):
    """4 independent problems (2 blocks x 2 warps): per-warp exchange slots don't mix."""
    rng = np.random.default_rng(11 + tf32)
    k = 8 if tf32 else 16
    problems = []
    for _ in range(4):
        A = rng.standard_normal((16, k)).astype(np.float32 if tf32 else np.float16)
        B = rng.standard_normal((k, 8)).astype(np.float32 if tf32 else np.float16)
        C = rng.standard_normal((16, 8)).astype(np.float32)
        problems.append((A, B, C))
    if tf32:  # raw fp32 bits: the tensor core reads only the top 19
        a_regs = np.stack([scatter(A, tf32_a, 4).view(np.uint32) for A, _, _ in problems])
        b_regs = np.stack([scatter(B, tf32_b, 2).view(np.uint32) for _, B, _ in problems])
    else:
        a_regs = np.stack([halves_to_registers(scatter(A, f16_a, 8)) for A, _, _ in problems])
        b_regs = np.stack([halves_to_registers(scatter(B, f16_b, 4)) for _, B, _ in problems])
    c_frags = np.stack([scatter(C, acc, 4) for _, _, C in problems])
    d = run_mma(emulator, tf32, a_regs, b_regs, c_frags, blocks=2)
    for w, (A, B, C) in enumerate(problems):
        if tf32:
            A, B = tf32_truncate(A), tf32_truncate(B)
        ref = (A.astype(np.float64) @ B.astype(np.float64) + C).astype(np.float32)
        np.testing.assert_allclose(gather(d[w], acc, (16, 8)), ref, rtol=1e-6, atol=1e-6)


def test_tensor_core_mma_bf16_matches_numpy(emulator):
    """bf16 operands in the f16 fragment layouts (register e // 2, low half first), as
    bfloat16 bit patterns: the top 16 bits of a float32."""
    rng = np.random.default_rng(16)
    bf16 = lambda m: (m.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    value = lambda bits: (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    A, B = bf16(rng.standard_normal((16, 16))), bf16(rng.standard_normal((16, 8)))
    C = rng.standard_normal((16, 8)).astype(np.float32)

    def registers(bits, layout, elements):
        frags = scatter(bits.astype(np.float64), layout, elements).astype(np.uint32)
        return frags[:, 0::2] | frags[:, 1::2] << 16

    d = np.ascontiguousarray(scatter(C, acc, 4), dtype=np.float32)[None].copy()
    emulator.launch("tc_test_mma_bf16", 1, 32,
                    (np.ascontiguousarray(registers(A, f16_a, 8)[None], np.uint32),
                     np.ascontiguousarray(registers(B, f16_b, 4)[None], np.uint32), d), 0)
    ref = (value(A) @ value(B) + C).astype(np.float32)
    np.testing.assert_allclose(gather(d[0], acc, (16, 8)), ref, rtol=1e-6, atol=1e-6)


def test_tensor_core_mma_uses_every_register(emulator):
    """A single nonzero element anywhere in A lands in the right rows of D only."""
    rng = np.random.default_rng(12)
    B = rng.standard_normal((16, 8)).astype(np.float16)
    b_regs = halves_to_registers(scatter(B, f16_b, 4))[None]
    for row, col in [(0, 0), (15, 15), (3, 9), (12, 6)]:
        A = np.zeros((16, 16), np.float16)
        A[row, col] = 1
        a_regs = halves_to_registers(scatter(A, f16_a, 8))[None]
        d = gather(run_mma(emulator, False, a_regs, b_regs, np.zeros((1, 32, 4)))[0], acc, (16, 8))
        expected = np.zeros((16, 8), np.float32)
        expected[row] = B[col]
        np.testing.assert_array_equal(d, expected)


def ldmatrix_reference(smem16, offsets):
    """(32, 4) registers of ldmatrix.x4, from the documented semantics."""
    rows = smem16.reshape(-1, 8)  # 16-byte rows
    out = np.zeros((32, 4), np.uint64)
    for lane in range(32):
        i, j = lane >> 2, 2 * (lane & 3)
        for m in range(4):
            M = rows[offsets[8 * m:8 * m + 8] // 16].astype(np.uint64)  # matrix m, 8x8
            out[lane, m] = M[i, j] | M[i, j + 1] << 16
    return out.astype(np.uint32)


def test_tensor_core_ldmatrix_matches_numpy(emulator):
    rng = np.random.default_rng(13)
    n_rows = 48
    smem16 = rng.integers(0, 2**16, n_rows * 8, dtype=np.uint16)
    offsets = (rng.permutation(n_rows)[:32] * 16).astype(np.int32)  # rows in any order
    out = np.zeros((32, 4), np.uint32)
    emulator.launch("tc_test_ldmatrix<4, false>", 1, 32,
                    (smem16.view(np.uint32), i32(smem16.size // 2), offsets, out), n_rows * 16)
    np.testing.assert_array_equal(out, ldmatrix_reference(smem16, offsets))


def test_tensor_core_ldmatrix_feeds_mma(emulator):
    rng = np.random.default_rng(14)
    A = rng.standard_normal((16, 16)).astype(np.float16)
    B = rng.standard_normal((16, 8)).astype(np.float16)
    stored = np.ascontiguousarray(B.T)   # N x K, as sepconv_tc stores filter rows
    d = np.zeros((16, 8), np.float32)
    emulator.launch("tc_test_ldmatrix_mma", 1, 32, (A, stored, d), 768)
    ref = (A.astype(np.float64) @ B.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(d, ref, rtol=1e-6, atol=1e-6)


def test_tensor_core_cp_async_semantics(emulator):
    n = 64
    rng = np.random.default_rng(15)
    src = rng.standard_normal(8 * n).astype(np.float32)
    out = np.zeros((n, 13), np.float32)
    emulator.launch("tc_test_cp_async", 1, n, (src, out, i32(0)), 32 * n)
    t = np.arange(n)
    nxt = (t + 1) % n
    small = np.where(t % 2 == 0, src[4 * n + 4 * t], 0.0)  # odd threads: zero fill
    assert np.isnan(out[:, 0]).all()                      # read before any wait: poison
    np.testing.assert_array_equal(out[:, 1], src[4 * t])  # wait_group 1 finished group 0 ...
    assert np.isnan(out[:, 2]).all()                      # ... but not group 1
    np.testing.assert_array_equal(out[:, 3], small)
    np.testing.assert_array_equal(out[:, 4:8], src[:4 * n].reshape(n, 4)[nxt])
    np.testing.assert_array_equal(out[:, 8], small[nxt])
    np.testing.assert_array_equal(out[:, 9:13], src[:4 * n].reshape(n, 4)[nxt])  # wait_all


def tf32_round_reference(x):
    """Round to 11 significant bits, ties away from zero, by arithmetic (normal floats)."""
    x = np.asarray(x, np.float64)
    m, e = np.frexp(x)
    r = np.sign(m) * np.floor(np.abs(m) * 2.0**11 + 0.5)
    return np.ldexp(r, e - 11).astype(np.float32)


def test_tensor_core_cvt_tf32_rounds_to_nearest_ties_away(emulator):
    rng = np.random.default_rng(16)
    x = (rng.standard_normal(200) * 10.0 ** rng.integers(-30, 30, 200)).astype(np.float32)
    bits = x.view(np.uint32)
    ties = ((bits[:40] & np.uint32(0xFFFFE000)) | np.uint32(0x1000)).view(np.float32)
    x = np.concatenate([x, ties, -ties, np.float32([1.0, -0.0, 3.4e38])])
    out = np.zeros(x.size, np.uint32)
    emulator.launch("tc_test_cvt_tf32", 1, 64, (x, out, i32(x.size)), 0)
    ref = tf32_round_reference(x)
    np.testing.assert_array_equal(out.view(np.float32), ref)
    special = np.float32([np.inf, -np.inf, np.nan])
    out = np.zeros(3, np.uint32)
    emulator.launch("tc_test_cvt_tf32", 1, 32, (special, out, i32(3)), 0)
    got = out.view(np.float32)
    assert got[0] == np.inf and got[1] == -np.inf and np.isnan(got[2])


def test_tensor_core_pack_half2(emulator):
    rng = np.random.default_rng(17)
    x = rng.standard_normal(64).astype(np.float32)
    out = np.zeros(32, np.uint32)
    emulator.launch("tc_test_pack_half2", 1, 32, (x, out), 0)
    np.testing.assert_array_equal(out, halves_to_registers(x.reshape(32, 2)).ravel())


@pytest.mark.parametrize("shared_bytes", [256, 200 * 1024])  # beyond 48 KB too
def test_tensor_core_shared_memory_is_exactly_the_launch_bytes(emulator, shared_bytes):
    out = np.zeros(3, np.float32)
    emulator.launch("tc_test_smem_bounds", 1, 32, (out, i32(shared_bytes), i32(0)), shared_bytes)
    assert out[0] == 1.5 and out[1] == 2.5  # the whole range is usable
    assert np.isnan(out[2])                 # a read past the end: poison


def test_tensor_core_shared_bytes_is_validated(emulator):
    with pytest.raises(ValueError, match="shared_bytes"):
        emulator.launch("tc_test_smem_bounds", 1, 32, (np.zeros(3, np.float32), i32(16), i32(0)),
                        emu.SMEM_LIMIT + 16)


# --- the fragment maps against CUTLASS's CuTe, an independent statement of them -----------
#
# (thread, value) -> offset layouts as CuTe states them, copied by hand from NVIDIA/cutlass
# include/cute/atom/mma_traits_sm80.hpp (MMA_Traits of SM80_16x8x16_F32F16F16F32_TN, whose
# layouts the BF16 one inherits, and of SM80_16x8x8_F32TF32TF32F32_TN) and
# include/cute/atom/copy_traits_sm75.hpp (Copy_Traits of SM75_U32x{1,2,4}_LDSM_N and
# SM75_U16x{2,4,8}_LDSM_T: ldmatrix .x1/.x2/.x4 and their .trans). A layout is (shape,
# stride), nested tuples, mode 0 the thread and mode 1 the value; an index is split
# colexicographically (the first extent fastest), as CuTe does. The MMA offsets are
# column-major in the tile: A (m, k) = (o % 16, o // 16), B (n, k) = (o % 8, o // 8), C
# (m, n) = (o % 16, o // 16); a 16-bit value v lives in register v // 2, half v % 2 (low
# first). The copy offsets count bits of the rows the source threads address (128 bits a
# row): value 16 e is the first bit of 16-bit element e (register e // 2, half e % 2).

SM80_16x8_ROW = (((4, 8), (2, 2)), ((32, 1), (16, 8)))
CUTE_MMA = {  # kind -> (K, A layout, B layout, C layout)
    "f16": (16, (((4, 8), (2, 2, 2)), ((32, 1), (16, 8, 128))),
            (((4, 8), (2, 2)), ((16, 1), (8, 64))), SM80_16x8_ROW),
    "tf32": (8, (((4, 8), (2, 2)), ((16, 1), (8, 64))),
             (((4, 8), 2), ((8, 1), 32)), SM80_16x8_ROW),
}
CUTE_MMA["bf16"] = CUTE_MMA["f16"]
CUTE_LDSM = {  # (matrices, trans) -> (source layout, destination layout)
    (1, False): ((((8, 4), 128), ((128, 0), 1)), ((32, 32), (32, 1))),
    (2, False): ((((16, 2), 128), ((128, 0), 1)), ((32, (32, 2)), (32, (1, 1024)))),
    (4, False): (((32, 128), (128, 1)), ((32, (32, 4)), (32, (1, 1024)))),
    (1, True): ((((8, 4), 128), ((128, 0), 1)), (((4, 8), (16, 2)), ((256, 16), (1, 128)))),
    (2, True): ((((16, 2), 128), ((128, 0), 1)),
                (((4, 8), (16, 2, 2)), ((256, 16), (1, 128, 1024)))),
    (4, True): (((32, 128), (128, 1)), (((4, 8), (16, 2, 4)), ((256, 16), (1, 128, 1024)))),
}


def _leaves(x):
    return [x] if isinstance(x, int) else [leaf for part in x for leaf in _leaves(part)]


def cute(layout, thread, value):
    """The offset CuTe's `layout` gives (thread, value)."""
    offset = 0
    for index, shape, stride in zip((thread, value), *layout):
        for extent, step in zip(_leaves(shape), _leaves(stride)):
            offset += index % extent * step
            index //= extent
    return offset


def _mma_bits(kind, values):
    """Register bits of the operand values (small integers, exact in every type)."""
    values = np.ascontiguousarray(values, np.float64)
    if kind == "tf32":
        return values.astype(np.float32).view(np.uint32)
    if kind == "f16":
        bits = values.astype(np.float16).view(np.uint16).astype(np.uint32)
    else:
        bits = values.astype(np.float32).view(np.uint32) >> 16
    return np.ascontiguousarray(bits[..., 0::2] | bits[..., 1::2] << 16)


def _run_mma_kind(emulator, kind, a_values, b_values):
    """D fragments (warps, 32, 4) of one independent mma per warp, C = 0."""
    warps = a_values.shape[0]
    a, b = _mma_bits(kind, a_values), _mma_bits(kind, b_values)
    d = np.zeros((warps, 32, 4), np.float32)
    blocks = warps // 8
    if kind == "bf16":
        emulator.launch("tc_test_mma_bf16", blocks, 256, (a, b, d), 0)
        return d
    return run_mma(emulator, kind == "tf32", a, b, d, blocks=blocks)


def emulator_mma_maps(emulator, kind):
    """The emulator's A map (lane, v) -> (m, k) and B map (lane, v) -> (k, n), found by
    probes that read D through CuTe's C layout: A one-hot against B[k, n] = 1 + k + K n
    (the row of D that lights up is m, its values give k and n), then B one-hot against
    A[m, k] = 1 + k + K m (the column is n, the values k and m). Each probe also checks
    the C layout: the decoded n (or m) must be where CuTe's C layout puts it."""
    k_dim, a_layout, b_layout, c_layout = CUTE_MMA[kind]
    n_a, n_b = (8, 4) if k_dim == 16 else (4, 2)
    a_dense, b_dense = np.zeros((32, n_a)), np.zeros((32, n_b))
    for lane in range(32):
        for v in range(n_a):
            o = cute(a_layout, lane, v)
            a_dense[lane, v] = 1 + o // 16 + k_dim * (o % 16)
        for v in range(n_b):
            o = cute(b_layout, lane, v)
            b_dense[lane, v] = 1 + o // 8 + k_dim * (o % 8)
    maps = {}
    for operand, n_values, dense in (("A", n_a, b_dense), ("B", n_b, a_dense)):
        probes = [(lane, v) for lane in range(32) for v in range(n_values)]
        one_hot = np.zeros((len(probes), 32, n_values))
        for w, (lane, v) in enumerate(probes):
            one_hot[w, lane, v] = 1
        others = np.broadcast_to(dense, (len(probes),) + dense.shape)
        d = _run_mma_kind(emulator, kind, *((one_hot, others) if operand == "A" else (others, one_hot)))
        found = {}
        for w, probe in enumerate(probes):
            lit = set()
            for lane in range(32):
                for e in range(4):
                    if d[w, lane, e]:
                        o = cute(c_layout, lane, e)
                        m, n = o % 16, o // 16
                        k, other = (int(d[w, lane, e]) - 1) % k_dim, (int(d[w, lane, e]) - 1) // k_dim
                        assert other == (n if operand == "A" else m), (kind, operand, probe)
                        lit.add((m, k) if operand == "A" else (k, n))
            assert len(lit) == 1, (kind, operand, probe, lit)  # one element of A (of B)
            found[probe] = lit.pop()
        maps[operand] = found
    return maps


@pytest.mark.parametrize("kind", ["f16", "bf16", "tf32"])
def test_mma_fragment_maps_are_cutes(emulator, kind):
    """mma.m16n8k16 (f16, bf16) and mma.m16n8k8 (tf32): every (lane, value) of A and B
    lands where CuTe's MMA_Traits say, and D is read back where its C layout says."""
    k_dim, a_layout, b_layout, _ = CUTE_MMA[kind]
    maps = emulator_mma_maps(emulator, kind)
    expected_a = {p: (cute(a_layout, *p) % 16, cute(a_layout, *p) // 16) for p in maps["A"]}
    expected_b = {p: (cute(b_layout, *p) // 8, cute(b_layout, *p) % 8) for p in maps["B"]}
    assert maps["A"] == expected_a
    assert maps["B"] == expected_b
    # the maps are onto: every element of A (16 x K) and B (K x 8) is some lane's value
    assert sorted(expected_a.values()) == [(m, k) for m in range(16) for k in range(k_dim)]
    assert sorted(expected_b.values()) == [(k, n) for k in range(k_dim) for n in range(8)]


@pytest.mark.parametrize("matrices", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True], ids=["n", "trans"])
def test_ldmatrix_fragment_maps_are_cutes(emulator, matrices, trans):
    """ldmatrix .x1/.x2/.x4 (and .trans): lane t's 16-bit element e comes from the row
    whose address CuTe's source layout assigns to some lane t', at the column its
    destination layout says. Rows are placed in shared memory in a random order, each
    element holding its (row, column), and lanes beyond the source threads point at other
    rows, which must not be read."""
    rng = np.random.default_rng(40 + matrices + 8 * trans)
    n_rows = 48
    placed = rng.permutation(n_rows)[:32]            # lane -> the shared row it addresses
    smem16 = (np.arange(n_rows)[:, None] * 8 + np.arange(8)).astype(np.uint16).ravel()
    out = np.zeros((32, matrices), np.uint32)
    emulator.launch(f"tc_test_ldmatrix<{matrices}, {'true' if trans else 'false'}>", 1, 32,
                    (smem16.view(np.uint32), i32(smem16.size // 2),
                     (placed * 16).astype(np.int32), out), n_rows * 16)
    lane_of_row = {int(r): lane for lane, r in enumerate(placed)}
    source, destination = CUTE_LDSM[(matrices, trans)]
    for t in range(32):
        for e in range(2 * matrices):
            got = int(out[t, e // 2] >> (16 * (e % 2)) & 0xFFFF)
            bit = cute(destination, t, 16 * e)
            row, column = bit // 128, bit % 128 // 16
            by = min(u for u in range(32) if cute(source, u, 0) == 128 * row)
            assert (lane_of_row[got // 8], got % 8) == (by, column), (t, e, trans)


# --- traps: run in a subprocess, each must abort with its message ------------------------

def run_trap(case):
    """Entry point of the subprocess: launch one deliberately broken kernel."""
    em = build()
    zeros = np.zeros
    if case in ("control", "mma_half_warp_skips", "mma_half_warp_skips_then_syncs"):
        skip = 0 if case == "control" else 16
        run_mma(em, False, zeros((1, 32, 4), np.uint32), zeros((1, 32, 2), np.uint32),
                zeros((1, 32, 4)), skip_lanes=skip, sync_after=int(case.endswith("syncs")))
    elif case == "endless_loop":
        em.launch("tc_test_spin", 1, 32, (i32(5),), 0)
    elif case == "smem_write_past_end":
        em.launch("tc_test_smem_bounds", 1, 32, (zeros(3, np.float32), i32(256), i32(1)), 256)
    elif case == "cp_async_never_waited":
        em.launch("tc_test_cp_async", 1, 32, (zeros(256, np.float32), zeros(13 * 32, np.float32),
                                              i32(1)), 1024)
    elif case in ("ldmatrix_misaligned", "ldmatrix_outside_shared"):
        offsets = np.arange(32, dtype=np.int32) * 16
        offsets[5] = 8 if case == "ldmatrix_misaligned" else 32 * 16
        em.launch("tc_test_ldmatrix<4, false>", 1, 32, (zeros(128, np.uint32), i32(128), offsets,
                                              zeros(32 * 4, np.uint32)), 32 * 16)
    elif case.startswith("vector_"):  # vector_<kind>_<offset in floats>
        kind, offset = (VECTOR_KINDS.index(case.split("_")[1]), int(case.split("_")[2]))
        src = np.zeros(64, np.float32)
        assert src.ctypes.data % 16 == 0  # NumPy's allocations are (the offset misaligns)
        em.launch("tc_test_vector_access", 1, 32, (src, zeros(32, np.float32), i32(kind),
                                                   i32(offset), i32(5)), 32 * 16)
    elif case in ("ldsm_two_sites", "ldsm_one_site"):
        em.launch("tc_test_ldsm_two_sites", 1, 32, (i32(16 if case == "ldsm_two_sites" else 0),),
                  32 * 16)
    else:
        raise ValueError(f"unknown trap case {case!r}")


VECTOR_KINDS = ["float4", "float2", "uint4", "cpasync"]


TRAPS = {  # case -> phrases the message must contain (None: must run cleanly)
    "control": None,
    "mma_half_warp_skips": ["mma_f16_m16n8k16", "the end of the kernel", "block 0", "thread"],
    # half a warp at mma, the other half at __syncthreads: found as soon as no one can go on
    "mma_half_warp_skips_then_syncs": ["no thread can go on", "16 of the 32", "block 0", "thread"],
    # thread 5 never reaches a collective: the watchdog (SEPCONV_EMU_TIMEOUT) names it
    "endless_loop": ["thread 5 ran 1 s without reaching a collective", "block 0"],
    "smem_write_past_end": ["wrote past its 256 bytes", "block 0"],
    "cp_async_never_waited": ["cp.async copies never waited for", "block 0", "thread"],
    "ldmatrix_misaligned": ["ldsm_x4", "not 16-byte aligned", "thread 5"],
    "ldmatrix_outside_shared": ["ldsm_x4", "outside", "thread 5"],
    # misaligned vector accesses fault on a GPU: UBSan (-fsanitize=alignment) names the
    # line and the type, the emulator the thread; aligned ones (offset 4 floats) run
    "vector_float4_4": None,
    "vector_float4_1": ["misaligned address", "float4", "16 byte alignment", "thread 5"],
    "vector_float2_1": ["misaligned address", "float2", "8 byte alignment", "thread 5"],
    "vector_uint4_2": ["misaligned address", "uint4", "16 byte alignment", "thread 5"],
    "vector_cpasync_2": ["cp_async16", "not 16-byte aligned", "thread 5"],
    # half a warp at one ldmatrix, half at another: both call sites named
    "ldsm_one_site": None,
    "ldsm_two_sites": ["reached ldsm_x4 at extra_source:", "of its warp waits at ldsm_x4 "
                       "at extra_source:", "block 0"],
}


@pytest.mark.parametrize("case", list(TRAPS))
def test_tensor_core_emulator_traps_abort_with_a_message(emulator, case):
    # `emulator`: built (and cached on disk) once, so the subprocesses only load it
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    code = (f"import sys; sys.path[:0] = [{here!r}, {root!r}]; "
            f"import test_tensor_core_emulator as t; t.run_trap({case!r})")
    env = dict(os.environ, SEPCONV_EMU_TIMEOUT="1")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=300)
    elapsed = time.monotonic() - start
    expected = TRAPS[case]
    if expected is None:
        assert result.returncode == 0, result.stderr[-3000:]
        return
    assert result.returncode != 0, f"{case} ran to completion"
    assert "sepconv host emulator:" in result.stderr, result.stderr[-3000:]
    for phrase in expected:
        assert phrase in result.stderr, (phrase, result.stderr[-3000:])
    assert elapsed < 120
