// Warp-level tensor-core and asynchronous-copy primitives, one small function each.
//
// Device code gets inline PTX (sm_80 or newer). Under SEPCONV_HOST_EMULATION the
// functions are NOT defined here: the host emulator (tests/_cuda_host_emulator.py)
// provides functions with the same signatures that model each instruction on the CPU, so
// kernels written against this header run in the emulator unchanged.
//
// NVRTC-compatible: no host headers. The loader inlines this file into the kernel source.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 / m16n8k8"), with
// g = lane >> 2 and q = lane & 3; element e of a fragment is register e / 2, low half
// first for f16 (one element per register for tf32 and f32):
//   f16 / bf16 m16n8k16  A (16x16, row-major)  e = 0..7: row g + 8 * ((e >> 1) & 1),
//                                                 col 2q + (e & 1) + 8 * (e >> 2)
//                 B (16x8, "col")       e = 0..3: k = 2q + (e & 1) + 8 * (e >> 1), n = g
//   tf32 m16n8k8  A (16x8)              e = 0..3: (g, q), (g + 8, q), (g, q + 4), (g + 8, q + 4)
//                 B (8x8)               e = 0..1: (k, n) = (q, g), (q + 4, g)
//   C / D (16x8 f32, both shapes)       e = 0..3: row g + 8 * (e >> 1), col 2q + (e & 1)
// ldmatrix .m8n8.x4 (b16): lanes 8j .. 8j+7 pass the addresses of rows 0..7 of matrix j,
// each row 16 bytes, 16-byte aligned. Lane l receives in r[j] row l >> 2, columns
// 2 (l & 3) and 2 (l & 3) + 1 of matrix j (low half = the lower column).
#ifndef SEPCONV_PTX_CUH
#define SEPCONV_PTX_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Architecture guards (in the manner of CUTLASS's CUTE_ARCH_*_ENABLED): the PTX below
// needs sm_80 (mma.sync m16n8k16 / m16n8k8.tf32, ldmatrix, cp.async, cvt.rna.tf32).
// Built for an older target (NVRTC compiles the whole source for the device it runs on),
// each wrapper traps instead, so that the SIMT kernels of the same program still build;
// the CUDA backend never launches the tensor-core kernel there (TENSOR_CORE_MIN_ARCH).
// An sm_90a mainloop (wgmma, TMA, mbarrier; docs/design.md) would go behind
// SEPCONV_SM90A_ENABLED: only the arch-specific target (compute_90a) defines
// __CUDA_ARCH_FEAT_SM90_ALL.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define SEPCONV_SM80_ENABLED 1
#endif
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SEPCONV_SM90A_ENABLED 1
#endif
#ifdef SEPCONV_SM80_ENABLED
#define SEPCONV_SM80_ASM(...) __VA_ARGS__
#else
#define SEPCONV_SM80_ASM(...) __trap()
#endif

namespace sepconv {

// Two halves in one register, `lo` in the low 16 bits (the lower column / k of a pair).
__device__ __forceinline__ unsigned pack_half2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return __half_as_ushort(h.x) | (static_cast<unsigned>(__half_as_ushort(h.y)) << 16);
}

// Two bfloat16 in one register (round to nearest even), `lo` in the low 16 bits.
__device__ __forceinline__ unsigned pack_bf162(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return __bfloat16_as_ushort(h.x) | (static_cast<unsigned>(__bfloat16_as_ushort(h.y)) << 16);
}

#ifndef SEPCONV_HOST_EMULATION

__device__ __forceinline__ unsigned smem_address(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// d += A * B, fp16 inputs, fp32 accumulation. Warp-collective: all 32 lanes, converged.
__device__ __forceinline__ void mma_f16_m16n8k16(float (&d)[4], const unsigned (&a)[4],
                                                 const unsigned (&b)[2]) {
    SEPCONV_SM80_ASM(asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1])));
}

// d += A * B, bf16 inputs (same fragment layouts as f16), fp32 accumulation. Warp-collective.
__device__ __forceinline__ void mma_bf16_m16n8k16(float (&d)[4], const unsigned (&a)[4],
                                                  const unsigned (&b)[2]) {
    SEPCONV_SM80_ASM(asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1])));
}

// d += A * B, tf32 inputs (registers hold fp32 bit patterns; the tensor core reads the
// top 19 bits, so round with cvt_tf32 first), fp32 accumulation. Warp-collective.
__device__ __forceinline__ void mma_tf32_m16n8k8(float (&d)[4], const unsigned (&a)[4],
                                                 const unsigned (&b)[2]) {
    SEPCONV_SM80_ASM(asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1])));
}

// Four 8x8 b16 matrices from shared memory; `smem_row`: this lane's row address.
__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const void* smem_row) {
    SEPCONV_SM80_ASM(asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                                  : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                                  : "r"(smem_address(smem_row))
                                  : "memory"));
}

// Asynchronous 16-byte global -> shared copy (L2 only), both addresses 16-byte aligned.
// !valid writes 16 zero bytes and reads nothing (src-size 0), but `gmem_src` must still
// be a valid global address (pass the tensor's base pointer for out-of-range elements).
// Not visible until cp_async_wait<...>() in this thread, then a barrier for other threads.
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, bool valid) {
    SEPCONV_SM80_ASM(asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                                  :
                                  : "r"(smem_address(smem_dst)), "l"(gmem_src), "r"(valid ? 16 : 0)
                                  : "memory"));
}

// Closes this thread's current group of cp.async copies.
__device__ __forceinline__ void cp_async_commit() {
    SEPCONV_SM80_ASM(asm volatile("cp.async.commit_group;\n" ::: "memory"));
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
    SEPCONV_SM80_ASM(asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"));
}

// Waits for every copy this thread issued (committed or not).
__device__ __forceinline__ void cp_async_wait_all() {
    SEPCONV_SM80_ASM(asm volatile("cp.async.wait_all;\n" ::: "memory"));
}

// fp32 -> tf32, round to nearest with ties away from zero; the bits of a tf32 value
// (low 13 mantissa bits zero) as an mma operand register.
__device__ __forceinline__ unsigned cvt_tf32(float v) {
    unsigned r = 0;
    SEPCONV_SM80_ASM(asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v)));
    return r;
}

#endif  // SEPCONV_HOST_EMULATION

// threadIdx.x through a volatile read of %tid.x: what is computed from it cannot be
// hoisted out of a loop, where it would stay live in registers across the loop body
// (the tensor-core kernel's filter-block loop, next to its accumulators).
__device__ __forceinline__ int thread_index() {
#ifdef SEPCONV_HOST_EMULATION
    return static_cast<int>(threadIdx.x);
#else
    int t;
    asm volatile("mov.u32 %0, %%tid.x;\n" : "=r"(t));
    return t;
#endif
}

}  // namespace sepconv

#endif  // SEPCONV_PTX_CUH
