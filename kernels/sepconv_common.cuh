// Shared device helpers for the sepconv kernels: accumulation types, conversions, math
// overloads, vector shared/global accesses and the fused activation epilogue.
//
// Compiles under NVRTC (no host standard headers; cuda_fp16.h and cuda_bf16.h come with
// NVRTC / CuPy's include path) and under nvcc. The loader inlines this file into sepconv_simt.cu, so
// CuPy's on-disk cache sees its text too.
#ifndef SEPCONV_COMMON_CUH
#define SEPCONV_COMMON_CUH

#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace sepconv {

// Accumulation type: fp32 for float, __half and __nv_bfloat16 inputs, fp64 for double.
template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// Overloads so templated code calls the right-precision libdevice function.
__device__ __forceinline__ float m_exp(float v) { return expf(v); }
__device__ __forceinline__ double m_exp(double v) { return exp(v); }
__device__ __forceinline__ float m_expm1(float v) { return expm1f(v); }
__device__ __forceinline__ double m_expm1(double v) { return expm1(v); }
__device__ __forceinline__ float m_log(float v) { return logf(v); }
__device__ __forceinline__ double m_log(double v) { return log(v); }
__device__ __forceinline__ float m_log1p(float v) { return log1pf(v); }
__device__ __forceinline__ double m_log1p(double v) { return log1p(v); }
__device__ __forceinline__ float m_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double m_tanh(double v) { return tanh(v); }
__device__ __forceinline__ float m_erfc(float v) { return erfcf(v); }
__device__ __forceinline__ double m_erfc(double v) { return erfc(v); }
__device__ __forceinline__ float m_abs(float v) { return fabsf(v); }
__device__ __forceinline__ double m_abs(double v) { return fabs(v); }
__device__ __forceinline__ float m_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double m_sqrt(double v) { return sqrt(v); }
__device__ __forceinline__ float m_fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double m_fma(double a, double b, double c) { return fma(a, b, c); }
__device__ __forceinline__ float m_neg_inf(float) { return __int_as_float(0xff800000); }
__device__ __forceinline__ double m_neg_inf(double) { return __longlong_as_double(0xfff0000000000000ULL); }
__device__ __forceinline__ float m_nan(float) { return __int_as_float(0x7fffffff); }
__device__ __forceinline__ double m_nan(double) { return __longlong_as_double(0x7fffffffffffffffULL); }

// Read-only global load (the non-coherent path, LDG.CONSTANT); a plain load in the host
// emulator, which has no __ldg.
template <typename U> __device__ __forceinline__ U load_ro(const U* p) {
#ifdef __CUDA_ARCH__
    return __ldg(p);
#else
    return *p;
#endif
}

// 4 consecutive accumulators from 16-byte aligned shared memory (one or two LDS.128).
__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
}
__device__ __forceinline__ void load4(const double* p, double (&v)[4]) {
    const double2 a = reinterpret_cast<const double2*>(p)[0];
    const double2 b = reinterpret_cast<const double2*>(p)[1];
    v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
}

// 4 consecutive outputs to global memory aligned to 4 elements, as one vector store.
__device__ __forceinline__ void store4(float* p, const float (&v)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4(double* p, const double (&v)[4]) {
    reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
    reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
}
template <typename T2> __device__ __forceinline__ unsigned pair_bits(const T2& pair) {
    return *reinterpret_cast<const unsigned int*>(&pair);
}
__device__ __forceinline__ void store4(__half* p, const float (&v)[4]) {
    *reinterpret_cast<uint2*>(p) = make_uint2(pair_bits(__floats2half2_rn(v[0], v[1])),
                                              pair_bits(__floats2half2_rn(v[2], v[3])));
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, const float (&v)[4]) {
    *reinterpret_cast<uint2*>(p) = make_uint2(pair_bits(__floats2bfloat162_rn(v[0], v[1])),
                                              pair_bits(__floats2bfloat162_rn(v[2], v[3])));
}

// 4 consecutive accumulators to / from 16-byte aligned shared memory, `swap` for a
// warp-wide access to consecutive quads: doubles move as two 16-byte halves, the upper
// one first where `swap`, so lanes that alternate it (lane bit 2) spread 8 lanes' quads
// (256 bytes) over the 32 banks once a half; a float quad is one access whatever `swap`.
__device__ __forceinline__ void store4_shared(float* p, const float (&v)[4], bool) { store4(p, v); }
__device__ __forceinline__ void store4_shared(double* p, const double (&v)[4], bool swap) {
    double2* h = reinterpret_cast<double2*>(p);
    const double2 lo = make_double2(v[0], v[1]), hi = make_double2(v[2], v[3]);
    h[swap] = swap ? hi : lo;
    h[!swap] = swap ? lo : hi;
}
__device__ __forceinline__ void load4_shared(const float* p, float (&v)[4], bool) { load4(p, v); }
__device__ __forceinline__ void load4_shared(const double* p, double (&v)[4], bool swap) {
    const double2* h = reinterpret_cast<const double2*>(p);
    const double2 first = h[swap], second = h[!swap];
    const double2 lo = swap ? second : first, hi = swap ? first : second;
    v[0] = lo.x; v[1] = lo.y; v[2] = hi.x; v[3] = hi.y;
}

// Walks the flat indices start, start + step, ... of a 3-digit mixed-radix index
// (a slowest, c fastest; digit b < nb, c < nc) with divisions only at setup: the staging
// loops would otherwise pay three integer divisions per element. Also keeps the 64-bit
// offset a * stride_a + b * stride_b + c * stride_c up to date with additions only.
struct Walk3 {
    int a, b, c, sa, sb, sc, nb, nc;
    long long off, d_step, d_carry_c, d_carry_b;
    __device__ __forceinline__ Walk3(int start, int step, int nb_, int nc_, long long stride_a,
                                     long long stride_b, long long stride_c)
        : nb(nb_), nc(nc_) {
        c = start % nc; b = (start / nc) % nb; a = start / (nc * nb);
        sc = step % nc; sb = (step / nc) % nb; sa = step / (nc * nb);
        off = a * stride_a + b * stride_b + c * stride_c;
        d_step = sa * stride_a + sb * stride_b + sc * stride_c;
        d_carry_c = stride_b - nc * stride_c;
        d_carry_b = stride_a - nb * stride_b;
    }
    __device__ __forceinline__ void next() {
        off += d_step;
        c += sc;
        int carry = c >= nc;
        if (carry) { c -= nc; off += d_carry_c; }
        b += sb + carry;
        carry = b >= nb;
        if (carry) { b -= nb; off += d_carry_b; }
        a += sa + carry;
    }
};

}  // namespace sepconv

// Fused epilogue variants; names match `Activation.kernel_id` (upper-cased, ACT_ prefix).
// softmax / log_softmax are not here: they normalize over an axis and run as a second
// kernel (sepconv_softmax_lastaxis). glu, sparsemax and threshold are applied to the
// output after the kernel (see sepconv_gpu/activations.py).
enum SepconvActivation {
    ACT_LINEAR = 0,
    ACT_RELU,
    ACT_RELU6,
    ACT_LEAKY_RELU,
    ACT_ELU,
    ACT_SELU,
    ACT_CELU,
    ACT_GELU,
    ACT_GELU_TANH,
    ACT_SIGMOID,
    ACT_HARD_SIGMOID,
    ACT_HARD_SILU,
    ACT_SILU,
    ACT_MISH,
    ACT_SOFTPLUS,
    ACT_SOFTSIGN,
    ACT_TANH,
    ACT_EXPONENTIAL,
    ACT_HARD_TANH,
    ACT_HARD_SHRINK,
    ACT_SOFT_SHRINK,
    ACT_LOG_SIGMOID,
    ACT_SPARSE_PLUS,
    ACT_SPARSE_SIGMOID,
    ACT_SQUAREPLUS,
    ACT_TANH_SHRINK
};

namespace sepconv {

template <typename A> __device__ __forceinline__ A sigmoid(A v) {
    // exp of a non-positive number only: no overflow for large |v|
    const A e = m_exp(-m_abs(v));
    return v >= A(0) ? A(1) / (A(1) + e) : e / (A(1) + e);
}

template <typename A> __device__ __forceinline__ A softplus(A v) {
    // logaddexp(0, v), stable for both signs
    return (v > A(0) ? v : A(0)) + m_log1p(m_exp(-m_abs(v)));
}

template <typename A> __device__ __forceinline__ A relu6(A v) {
    // comparisons (not fmin/fmax) so that NaN propagates as in NumPy
    return v < A(0) ? A(0) : (v > A(6) ? A(6) : v);
}

// Keras 3 definitions; `p` is Activation.kernel_param (negative_slope / alpha / threshold /
// b). Comparisons, not fmin/fmax, so that NaN propagates where Keras's NumPy form does.
template <int ACT, typename A> __device__ __forceinline__ A activate(A v, A p) {
    switch (ACT) {
    case ACT_RELU: return v < A(0) ? A(0) : v;
    case ACT_RELU6: return relu6(v);
    case ACT_LEAKY_RELU: return v >= A(0) ? v : v * p;
    case ACT_ELU: return v > A(0) ? v : p * m_expm1(v);
    case ACT_SELU:
        return A(1.0507009873554804934193349852946) *
               (v > A(0) ? v : A(1.6732632423543772848170429916717) * m_expm1(v));
    case ACT_CELU: {
        const A neg = p * m_expm1((v < A(0) ? v : A(0)) / p);
        return (v > A(0) ? v : A(0)) + (neg < A(0) ? neg : A(0));
    }
    // erfc(-v/√2), not 1 + erf(v/√2), which cancels to 0 below v ≈ -6 (as TF computes it)
    case ACT_GELU: return A(0.5) * v * m_erfc(-v / A(1.4142135623730950488016887242097));
    case ACT_GELU_TANH: {
        const A inner = A(0.79788456080286535587989211986876) * (v + A(0.044715) * v * v * v);
        return A(0.5) * v * (A(1) + m_tanh(inner));
    }
    case ACT_SIGMOID: return sigmoid(v);
    case ACT_HARD_SIGMOID: return relu6(v + A(3)) / A(6);
    case ACT_HARD_SILU: return v * (relu6(v + A(3)) / A(6));
    case ACT_SILU: return v * sigmoid(v);
    case ACT_MISH: return v * m_tanh(softplus(v));
    case ACT_SOFTPLUS: return softplus(v);
    case ACT_SOFTSIGN: return v / (A(1) + m_abs(v));
    case ACT_TANH: return m_tanh(v);
    case ACT_EXPONENTIAL: return m_exp(v);
    case ACT_HARD_TANH: return v < A(-1) ? A(-1) : (v > A(1) ? A(1) : v);
    case ACT_HARD_SHRINK: return m_abs(v) > p ? v : A(0);
    case ACT_SOFT_SHRINK: return v > p ? v - p : (v < -p ? v + p : A(0));
    case ACT_LOG_SIGMOID: return -softplus(-v);
    case ACT_SPARSE_PLUS: return v <= A(-1) ? A(0) : (v < A(1) ? A(0.25) * (v + A(1)) * (v + A(1)) : v);
    case ACT_SPARSE_SIGMOID: return v <= A(-1) ? A(0) : (v >= A(1) ? A(1) : A(0.5) * (v + A(1)));
    case ACT_SQUAREPLUS: return (v + m_sqrt(v * v + p)) / A(2);
    case ACT_TANH_SHRINK: return v - m_tanh(v);
    default: return v;  // ACT_LINEAR
    }
}

// The activation as a runtime switch, uniform over the grid: one kernel instantiation
// serves every activation. `visit(act, f)` calls f(ActTag<ACT>()) with ACT the runtime
// enum value `act` in [LO, HI], found by binary search (log2(HI - LO + 1) uniform
// branches), so f's body is compiled once per activation and runs without further
// branching (sepconv_simt dispatches once around a rolled pass over its output tile;
// `apply`, one value at a time, serves sepconv_tc's). Values past the enum (up to
// ACT_SLOTS - 1) act as ACT_LINEAR.
template <int ACT> struct ActTag { static constexpr int value = ACT; };

template <int LO, int HI> struct ActivationSwitch {
    template <typename F> __device__ __forceinline__ static auto visit(int act, F&& f) {
        constexpr int MID = (LO + HI) / 2;
        if (act <= MID) return ActivationSwitch<LO, MID>::visit(act, f);
        return ActivationSwitch<MID + 1, HI>::visit(act, f);
    }
    // activate<act>(v, p) for one value
    template <typename A> __device__ __forceinline__ static A apply(int act, A v, A p) {
        return visit(act, [&](auto tag) { return activate<decltype(tag)::value>(v, p); });
    }
};
template <int ACT> struct ActivationSwitch<ACT, ACT> {
    template <typename F> __device__ __forceinline__ static auto visit(int, F&& f) {
        return f(ActTag<ACT>());
    }
};

#define ACT_SLOTS 32   // enum values the runtime switch covers (a power of two: 5 branches)
typedef ActivationSwitch<0, ACT_SLOTS - 1> ActivationDispatch;

}  // namespace sepconv

#endif  // SEPCONV_COMMON_CUH
