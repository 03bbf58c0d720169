// Tensor-core fused depthwise-separable convolution (NHWC, depth_multiplier 1):
// depthwise on the SIMT pipes into shared memory, pointwise as mma.sync, bias and
// activation in the epilogue, one launch. fp16 (mma.m16n8k16, fp32 accumulate) and, when
// the caller allows TF32, float32 (mma.m16n8k8.tf32). Every other case runs
// sepconv_fused (sepconv_fused.cu); cuda_kernels.select_kernel is the rule.
//
//   y[n, p, f] = act(b[f] + sum_c P[f, c] * sum_t x[n, p*s + t*d - pad, c] * D[t, c])
//
// Block: TC_THREADS = 256 threads (8 warps), a tile of BM output positions (a TH x TW patch
// of one image, TW a power of two, TH = BM / TW) x BN filters; 1-D grid, the channel
// splits and filter blocks of a tile adjacent. Every warp owns a 16 MT x 64 piece of it
// (MT x 8 mma tiles, 32 MT fp32 accumulators a thread; template MT = 2: two blocks an SM,
// MT = 4: one, twice the positions per block for the same weight traffic); the planner
// picks MT and BN in {64, 128, 256}, and the warps are arranged (8/WN) x WN, WN = BN/64,
// so that BM x BN = TC_TILE_ELEMS x MT / 2 (MT = 2: BM = 256, 128, 64). F <= 256 fits one filter block: the depthwise is never recomputed;
// F > 256 takes FB = ceil(F / 256) filter blocks, each redoing the depthwise of its tile
// (the recompute factor the planner charges for). Grids too small for the GPU may split
// the channels: 2^split_shift blocks per tile and filter block each sum a contiguous range
// of chunks into fp32 `partial`, and sepconv_tc_reduce adds the splits, the bias and the
// activation (no atomics, deterministic). The planner (cuda_kernels.tc_plan) prices every
// (BN, TW, S, splits) with cost_model.tc_fused_work and keeps the cheapest that fits the
// device's shared memory; its prediction travels with the launch (Launch.predicted_us).
//
// Channels go in chunks of TC_CHUNK_BYTES = 64 bytes a position (BK = 32 half or 16 float
// channels; the weights are zero-padded to K_pad = a multiple of 32 channels). Chunk kc:
//   1. cp.async (16 bytes, zero-fill outside the image / past C) into pipeline stage
//      kc % S (S = 3 or 4, the planner's choice): the input halo of the tile, the chunk's
//      depthwise weights and its pointwise rows P[f0 : f0+BN, chunk]. Loads run S - 2
//      chunks ahead of the depthwise.
//   2. depthwise: lane (l & 15) owns one 4-byte word of a position's chunk (a half2 or one
//      float); taps accumulate in fp32 and the result is rounded once to the mma operand
//      type (half, or tf32 with cvt.rna) and written as row p of A. Specialized extents at
//      unit width stride and dilation (and unit height stride) run sliding-window strips:
//      4 outputs a thread, a row of KW taps from 3 + KW loaded pixels, the two half-warps
//      on vertically adjacent rows. Otherwise one output a thread, every tap loaded, the
//      half-warps on horizontally adjacent outputs.
//   3. pointwise: each warp ldmatrix.x4's its A rows (2 m16 tiles) and B rows (4 x 2 n8
//      tiles) and issues 2 k-steps x 16 mma.sync.
// One __syncthreads a chunk: in the interval after it every warp runs the depthwise of
// chunk kc + 1 (into the other A buffer) and then the mma of chunk kc, so one warp's FMAs
// overlap another's mma inside the block, and (MT = 2) across the two resident blocks.
//
// Shared memory (dynamic, > 48 KB needs the opt-in attribute; cuda_kernels.tc_plan sizes it):
//   stage s (S times) : Xs [HH][HWp][64 B]  input halo; columns stored by residue
//                                           (ww % s_w, then ww / s_w) so that horizontally
//                                           adjacent outputs read adjacent 64-byte pixels;
//                                           HWp odd at s_w = 1 so that vertically adjacent
//                                           rows do too: the half-warps never share banks
//                       Ws [taps][64 B]     depthwise weights of the chunk (half for fp16,
//                                           exact fp32 for the TF32 path)
//                       Bs [BN][80 B]       pointwise rows (64 B + 16 B pad: the 8 rows of
//                                           an ldmatrix hit 8 distinct 16-byte bank groups)
//   then              : As [2][BM][80 B]    depthwise outputs = the mma A operand, double
//                                           buffered (chunk kc and kc + 1)
//   epilogue (reusing it all): Cs [BM][BN + 4] fp32 = acc + bias, activation applied in
//   place, then copied out with 16-byte stores (scalar ones when F is not a multiple of
//   16 bytes' worth of elements).
//
// The activation is a runtime switch (TC_ACT_SLOTS-way binary dispatch, uniform across
// the grid, applied in one non-unrolled pass over Cs): a template parameter would multiply
// the instantiations of this large kernel by the number of activations (the compile-time
// measurements that made this call are in cuda_kernels.py next to TC_EXTENTS).
//
// Requirements (checked by cuda_kernels.select_kernel): NHWC with channels contiguous,
// C a multiple of 16 bytes' worth of elements, every other stride too, a 16-byte aligned
// base. Offsets into x and y are 64-bit. Every constant below is mirrored in
// sepconv_gpu/backends/cuda_kernels.py (tests/test_kernel_constants.py checks them).
#include "sepconv_common.cuh"
#include "sepconv_ptx.cuh"

#define TC_THREADS 256
#define TC_WARPS 8
#define TC_WARP_M 32          // positions a warp multiplies per MT / 2 (MT m16 tiles)
#define TC_WARP_N 64          // filters a warp multiplies (8 n8 tiles)
#define TC_TILE_ELEMS 16384   // BM * BN = TC_WARPS * TC_WARP_M * TC_WARP_N (x MT / 2)
#define TC_CHUNK_BYTES 64     // one position's channel chunk
#define TC_ROW_BYTES 80       // shared pitch of an A or B row
#define TC_OUT_PAD 4          // extra floats a Cs row
#define TC_ACT_SLOTS 32       // activation enum values the runtime dispatch covers
#define TC_MIN_BLOCKS 2

namespace sepconv {

// Per input type: the mma operand, how a 4-byte word of input becomes fp32 values, how
// those become an operand word, and the mma itself.
template <typename T> struct Tc;

template <> struct Tc<__half> {
    typedef __half Operand;
    static constexpr int kPerWord = 2;   // channels in a 4-byte word
    __device__ __forceinline__ static void unpack(unsigned w, float (&v)[2]) {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w));
        v[0] = f.x; v[1] = f.y;
    }
    __device__ __forceinline__ static unsigned operand(const float (&v)[2]) {
        return pack_half2(v[0], v[1]);
    }

    __device__ __forceinline__ static void mma(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
        mma_f16_m16n8k16(d, a, b);
    }
};

template <> struct Tc<float> {
    typedef float Operand;               // tf32 bit patterns (the host pre-rounds B)
    static constexpr int kPerWord = 1;
    __device__ __forceinline__ static void unpack(unsigned w, float (&v)[1]) {
        v[0] = __int_as_float(static_cast<int>(w));
    }
    __device__ __forceinline__ static unsigned operand(const float (&v)[1]) {
        return cvt_tf32(v[0]);
    }

    __device__ __forceinline__ static void mma(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
        mma_tf32_m16n8k8(d, a, b);
    }
};

// 16 bytes of output from 16 / sizeof(T) fp32 values (16-byte aligned shared memory).
__device__ __forceinline__ void store16(__half* p, const float* s) {
    const float4 lo = reinterpret_cast<const float4*>(s)[0];
    const float4 hi = reinterpret_cast<const float4*>(s)[1];
    const float v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    uint4 u;
    u.x = pack_half2(v[0], v[1]); u.y = pack_half2(v[2], v[3]);
    u.z = pack_half2(v[4], v[5]); u.w = pack_half2(v[6], v[7]);
    *reinterpret_cast<uint4*>(p) = u;
}
__device__ __forceinline__ void store16(float* p, const float* s) {
    *reinterpret_cast<float4*>(p) = *reinterpret_cast<const float4*>(s);
}
__device__ __forceinline__ __half from_float(float v, __half) { return __float2half_rn(v); }
__device__ __forceinline__ float from_float(float v, float) { return v; }

}  // namespace sepconv

template <typename T, int KH_, int KW_, int MT>
__global__ void __launch_bounds__(TC_THREADS, MT == 2 ? TC_MIN_BLOCKS : 1)
sepconv_tc(const T* __restrict__ x,
           const typename sepconv::Tc<T>::Operand* __restrict__ dwp,       // [taps][K_pad]
           const typename sepconv::Tc<T>::Operand* __restrict__ pwp,       // [F][K_pad]
           const float* __restrict__ bias,                                 // [F] if has_bias
           T* __restrict__ y,                                              // [N][OH][OW][F]
           float* __restrict__ partial,               // [k_splits][N*OH*OW][F] if k_splits > 1
           long long xs_n, long long xs_h, long long xs_w,
           int C, int H, int W, int F, int OH, int OW,
           int kh_rt, int kw_rt, int str_h, int str_w, int dil_h, int dil_w,
           int pad_h, int pad_w,
           int BN, int tw_shift, int tiles_w, int tiles_img, int FB,
           int HH, int HW, int HWs, int stages, int K_pad, int has_bias, int act,
           float act_param, int split_shift) {
    using namespace sepconv;
    typedef Tc<T> Op;
    constexpr int PW = Op::kPerWord;
    constexpr int BK = 16 * PW;                              // channels a chunk
    constexpr int VEC = 16 / (int)sizeof(T);                 // elements in 16 bytes
    constexpr int OPV = 16 / (int)sizeof(typename Op::Operand);

    const int KH = KH_ > 0 ? KH_ : kh_rt;
    const int KW = KW_ > 0 ? KW_ : kw_rt;
    const int taps = KH * KW;
    const int BM = TC_TILE_ELEMS / 2 * MT / BN;
    constexpr int WARP_M = TC_WARP_M / 2 * MT;
    const int WN = BN / TC_WARP_N;
    const int TW = 1 << tw_shift;
    const int HWp = HWs * str_w;

    const int halo_bytes = HH * HWp * TC_CHUNK_BYTES;
    const int w_bytes = taps * TC_CHUNK_BYTES;
    const int stage_bytes = halo_bytes + w_bytes + BN * TC_ROW_BYTES;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned char* As = smem_raw + stages * stage_bytes;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int bid = blockIdx.x;
    const int fb = (bid >> split_shift) % FB;   // channel ranges, then filter blocks of a
    const int tile = (bid >> split_shift) / FB; // tile are launch neighbours
    const int n = tile / tiles_img;
    const int t = tile - n * tiles_img;
    const int oh0 = (t / tiles_w) * (BM >> tw_shift), ow0 = (t % tiles_w) * TW;
    const int f0 = fb * BN;
    const int ih0 = oh0 * str_h - pad_h, iw0 = ow0 * str_w - pad_w;
    const T* __restrict__ xn = x + (long long)n * xs_n;
    // this block's channel chunks: [chunk0, chunk0 + chunks) of K_pad / BK
    const int per_split = ((K_pad / BK - 1) >> split_shift) + 1;
    const int chunk0 = (bid & ((1 << split_shift) - 1)) * per_split;
    const int chunks = min(K_pad / BK - chunk0, per_split);

    // ---- 1. asynchronous loads of chunk kc into stage kc % stages ----
    // Each thread copies 16-byte granule (tid & 3) of every 64th pixel / B row.
    const int granule = tid & 3;
    auto load_chunk = [&](int kc, unsigned char* base) {
        const int k0 = (chunk0 + kc) * BK;
        const int c = k0 + granule * VEC;
        const bool channel_ok = c < C;
        // (hh, ww) of pixel tid/4, then stepped by TC_THREADS/4 pixels without dividing
        int hh = (tid >> 2) / HW, ww = (tid >> 2) - hh * HW;
        const int step_h = (TC_THREADS / 4) / HW, step_w = (TC_THREADS / 4) - step_h * HW;
        for (int pix = tid >> 2; pix < HH * HW; pix += TC_THREADS / 4) {
            const int ih = ih0 + hh, iw = iw0 + ww;
            const bool valid = channel_ok && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W;
            const T* src = valid ? xn + (long long)ih * xs_h + (long long)iw * xs_w + c : xn;
            const int col = str_w == 1 ? ww : (ww % str_w) * HWs + ww / str_w;
            cp_async16(base + (hh * HWp + col) * TC_CHUNK_BYTES + granule * 16, src, valid);
            ww += step_w;
            hh += step_h;
            if (ww >= HW) { ww -= HW; ++hh; }
        }
        unsigned char* ws = base + halo_bytes;
        for (int tap = tid >> 2; tap < taps; tap += TC_THREADS / 4)
            cp_async16(ws + tap * TC_CHUNK_BYTES + granule * 16,
                       dwp + (long long)tap * K_pad + k0 + granule * OPV, true);
        unsigned char* bs = ws + w_bytes;
        for (int r = tid >> 2; r < BN; r += TC_THREADS / 4) {
            const bool valid = f0 + r < F;
            const typename Op::Operand* src =
                valid ? pwp + (long long)(f0 + r) * K_pad + k0 + granule * OPV : pwp;
            cp_async16(bs + r * TC_ROW_BYTES + granule * 16, src, valid);
        }
    };

    // Depthwise mapping: word `dw_word` of positions 2 * (warp + 8 j) + dw_half.
    const int dw_word = tid & 15, dw_half = (tid >> 4) & 1;
    // Column offset of tap column j in the residue-ordered halo (s_w > 1 implies d_w = 1).
    auto col_offset = [&](int j) {
        return str_w == 1 ? j * dil_w : (j % str_w) * HWs + j / str_w;
    };
    constexpr int SKH = KH_ > 0 ? KH_ : 1, SKW = KW_ > 0 ? KW_ : 1;
    // Sliding-window strips (cuda_kernels.tc_uses_strips mirrors this condition).
    const bool strips = KH_ > 0 && str_w == 1 && dil_w == 1 && str_h == 1 && TW >= 4 &&
                        ((BM >> tw_shift) & 1) == 0;

    // Pointwise mapping: warp (wm, wn) multiplies A rows wm*32.. and B rows wn*64..
    const int wm = warp / WN, wn = warp - (warp / WN) * WN;
    const int a_row = wm * WARP_M + (lane & 15), a_byte = (lane >> 4) * 16;
    const int b_row = wn * TC_WARP_N + (lane & 7) + ((lane >> 4) << 3);
    const int b_byte = ((lane >> 3) & 1) * 16;

    float acc[MT][8][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    // ---- 2. depthwise of chunk kc (in its stage) -> the A buffer `as` ----
    auto depthwise = [&](int kc, unsigned char* as) {
        const unsigned char* base = smem_raw + (kc % stages) * stage_bytes;
        const unsigned* xw = reinterpret_cast<const unsigned*>(base);
        const unsigned* wk = reinterpret_cast<const unsigned*>(base + halo_bytes);
        if (strips) {
            // Strips of 4 outputs along a row: the KW taps of a row slide over 3 + KW
            // loaded pixels (6 loads for 12 taps at 3x3). The half-warps take vertically
            // adjacent rows: an odd row pitch keeps them on distinct banks.
#pragma unroll 1
            for (int item = warp; item < BM / 8; item += TC_WARPS) {
                const int tr = 2 * (item >> (tw_shift - 2)) + dw_half;
                const int c0 = (item & ((TW >> 2) - 1)) * 4;
                const unsigned* src = xw + (tr * HWp + c0) * (TC_CHUNK_BYTES / 4) + dw_word;
                float d[4][PW];
#pragma unroll
                for (int r = 0; r < 4; ++r)
#pragma unroll
                    for (int e = 0; e < PW; ++e) d[r][e] = 0.f;
#pragma unroll
                for (int i = 0; i < SKH; ++i) {
                    float w[SKW][PW];
#pragma unroll
                    for (int j = 0; j < SKW; ++j) Op::unpack(wk[(i * SKW + j) * 16 + dw_word], w[j]);
                    const unsigned* row = src + i * dil_h * HWp * (TC_CHUNK_BYTES / 4);
#pragma unroll
                    for (int t = 0; t < 3 + SKW; ++t) {
                        float v[PW];
                        Op::unpack(row[t * (TC_CHUNK_BYTES / 4)], v);
#pragma unroll
                        for (int r = 0; r < 4; ++r) {
                            if (t - r < 0 || t - r >= SKW) continue;
#pragma unroll
                            for (int e = 0; e < PW; ++e) d[r][e] = fmaf(v[e], w[t - r][e], d[r][e]);
                        }
                    }
                }
#pragma unroll
                for (int r = 0; r < 4; ++r)
                    *reinterpret_cast<unsigned*>(as + (tr * TW + c0 + r) * TC_ROW_BYTES + dw_word * 4) =
                        Op::operand(d[r]);
            }
        } else {
            // One output a thread at a time, every tap and weight loaded (any stride and
            // dilation; weights in registers would spill next to the 64 accumulators);
            // the half-warps take horizontally adjacent outputs (adjacent pixels in the
            // residue-ordered halo: distinct banks).
#pragma unroll 1
            for (int p = 2 * warp + dw_half; p < BM; p += 2 * TC_WARPS) {
                const int tr = p >> tw_shift, tc = p & (TW - 1);
                const unsigned* src = xw + (tr * str_h * HWp + tc) * (TC_CHUNK_BYTES / 4) + dw_word;
                float d[PW];
#pragma unroll
                for (int e = 0; e < PW; ++e) d[e] = 0.f;
                for (int i = 0; i < KH; ++i)       // unrolled for the specialized extents
                    for (int j = 0; j < KW; ++j) {
                        float v[PW], w[PW];
                        Op::unpack(src[(i * dil_h * HWp + col_offset(j)) * (TC_CHUNK_BYTES / 4)], v);
                        Op::unpack(wk[(i * KW + j) * 16 + dw_word], w);   // a broadcast
#pragma unroll
                        for (int e = 0; e < PW; ++e) d[e] = fmaf(v[e], w[e], d[e]);
                    }
                *reinterpret_cast<unsigned*>(as + p * TC_ROW_BYTES + dw_word * 4) = Op::operand(d);
            }
        }
    };

    // ---- 3. pointwise of chunk kc: acc += A[wm rows] x B[wn rows]^T, 2 k-steps of 32 B ----
    auto pointwise = [&](int kc, const unsigned char* as) {
        const unsigned char* bs = smem_raw + (kc % stages) * stage_bytes + halo_bytes + w_bytes;
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
            unsigned a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                ldsm_x4(a[mt], as + (a_row + mt * 16) * TC_ROW_BYTES + ks * 32 + a_byte);
#pragma unroll
            for (int np = 0; np < 4; ++np) {
                unsigned b[4];
                ldsm_x4(b, bs + (b_row + np * 16) * TC_ROW_BYTES + ks * 32 + b_byte);
                const unsigned b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    Op::mma(acc[mt][2 * np], a[mt], b0);
                    Op::mma(acc[mt][2 * np + 1], a[mt], b1);
                }
            }
        }
    };

    // Pipeline: chunk kc + 1's depthwise and chunk kc's mma share one barrier interval
    // (A double-buffered), so each warp's FMA and tensor work interleave with the other
    // warps'; loads run stages - 2 chunks ahead of the depthwise. Iteration -1 only
    // computes the first depthwise.
    for (int s = 0; s < stages - 2; ++s) {
        if (s < chunks) load_chunk(s, smem_raw + s * stage_bytes);
        cp_async_commit();
    }
    for (int kc = -1; kc < chunks; ++kc) {
        // chunk kc + 1 has landed (stages - 3 younger groups may be in flight) ...
        if (stages == 4) cp_async_wait<1>(); else cp_async_wait<0>();
        // ... for every thread; A[kc & 1] is complete; nobody reads stage (kc - 1) %
        // stages or A[(kc + 1) & 1] any more
        __syncthreads();
        if (kc + stages - 1 < chunks)
            load_chunk(kc + stages - 1, smem_raw + ((kc + stages - 1) % stages) * stage_bytes);
        cp_async_commit();   // possibly empty: keeps the group count uniform
        if (kc + 1 < chunks) depthwise(kc + 1, As + ((kc + 1) & 1) * BM * TC_ROW_BYTES);
        if (kc >= 0) pointwise(kc, As + (kc & 1) * BM * TC_ROW_BYTES);
    }
    cp_async_wait_all();
    __syncthreads();   // every warp is done with the pipeline buffers: Cs reuses them

    // ---- epilogue: Cs = acc + bias, activation in place, 16-byte stores; with several
    // channel splits the raw partial sums go to `partial` for sepconv_tc_reduce ----
    const bool finish = split_shift == 0;
    float* Cs = reinterpret_cast<float*>(smem_raw);
    const int cs_pitch = BN + TC_OUT_PAD;
    const int g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
        const int col = wn * TC_WARP_N + nt * 8 + 2 * q;
        const int f = f0 + col;
        const float b0 = finish && has_bias && f < F ? bias[f] : 0.f;
        const float b1 = finish && has_bias && f + 1 < F ? bias[f + 1] : 0.f;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const int row = wm * WARP_M + mt * 16 + g;
            *reinterpret_cast<float2*>(Cs + row * cs_pitch + col) =
                make_float2(acc[mt][nt][0] + b0, acc[mt][nt][1] + b1);
            *reinterpret_cast<float2*>(Cs + (row + 8) * cs_pitch + col) =
                make_float2(acc[mt][nt][2] + b0, acc[mt][nt][3] + b1);
        }
    }
    __syncthreads();
    if (finish && act != ACT_LINEAR) {
#pragma unroll 1
        for (int i = tid; i < BM * BN; i += TC_THREADS) {
            float* c = Cs + (i / BN) * cs_pitch + i % BN;
            *c = ActivationSwitch<0, TC_ACT_SLOTS - 1>::apply(act, *c, act_param);
        }
        __syncthreads();
    }
    const int per_row = BN / VEC;
    const bool vector_rows = F % VEC == 0;
    for (int i = tid; i < BM * per_row; i += TC_THREADS) {
        const int r = i / per_row, cv = i - r * per_row;
        const int oh = oh0 + (r >> tw_shift), ow = ow0 + (r & (TW - 1));
        const int f = f0 + cv * VEC;
        if (oh >= OH || ow >= OW || f >= F) continue;
        const float* v = Cs + r * cs_pitch + cv * VEC;
        const long long at = (((long long)n * OH + oh) * OW + ow) * F + f;
        if (!finish) {   // split s of the [k_splits][N*OH*OW*F] partial sums
            const long long outputs = (long long)(gridDim.x >> split_shift) / (FB * tiles_img) * OH * OW * F;
            float* dst = partial + (bid & ((1 << split_shift) - 1)) * outputs + at;
            for (int e = 0; e < VEC && f + e < F; ++e) dst[e] = v[e];
        } else if (vector_rows) {
            store16(y + at, v);
        } else {
            for (int e = 0; e < VEC && f + e < F; ++e) y[at + e] = from_float(v[e], T());
        }
    }
}

// y = act(bias + the sum of k_splits channel splits' partial sums), elementwise over the
// count = N*OH*OW*F outputs (the second launch of a split sepconv_tc).
template <typename T>
__global__ void __launch_bounds__(TC_THREADS)
sepconv_tc_reduce(const float* __restrict__ partial, const float* __restrict__ bias,
                  T* __restrict__ y, long long count, int F, int k_splits, int has_bias, int act,
                  float act_param) {
    using namespace sepconv;
    const long long step = (long long)gridDim.x * TC_THREADS;
    for (long long i = (long long)blockIdx.x * TC_THREADS + threadIdx.x; i < count; i += step) {
        float v = has_bias ? bias[i % F] : 0.f;
        for (int s = 0; s < k_splits; ++s) v += partial[s * count + i];
        if (act != ACT_LINEAR) v = ActivationSwitch<0, TC_ACT_SLOTS - 1>::apply(act, v, act_param);
        y[i] = from_float(v, T());
    }
}
