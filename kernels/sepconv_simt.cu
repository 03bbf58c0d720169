// Fused depthwise-separable convolution: depthwise + pointwise + bias + activation in one
// launch, the depthwise intermediate kept in shared memory (never in global memory).
//
//   y[n, p, f] = act(b[f] + sum_k P[k, f] * sum_t x[n, p*s + t*d - pad, k / M] * D[t, k])
//
// with k = c*M + m the depthwise output channel. 1D is 2D with height 1.
//
// Work decomposition (SIMT; the exact-FP32 and general path next to any tensor-core one):
//   * A block of SC_THREADS threads owns a tile of BP output positions (a TH x TW patch of
//     one image) x BF filters, BP * BF = SC_TILE_ELEMS, so every thread holds a 4 x 4
//     register micro-tile of accumulators. BF in {16, 32, 64} is chosen by the host
//     planner at run time (no extra instantiations) so small filter counts are not wasted.
//   * It loops over the K = C*M depthwise channels in chunks of SC_BK:
//       1. stage the pointwise chunk P[k0:k0+BK, f0:f0+BF], the depthwise weights of the
//          chunk and (use_halo = 1) the input halo of the tile for the chunk's input
//          channels in shared memory. Halo loads are 16 bytes of consecutive channels when
//          the input is channels_last with unit channel stride and aligned, one element
//          otherwise (any strides, negative included); each thread issues SC_STAGE_BATCH
//          loads before their stores so the loads' latencies overlap;
//       2. compute the chunk's depthwise outputs Ds[BK][BP] into shared memory (a warp
//          per channel, lanes along positions; for the specialized extents the weights
//          sit in registers and the tap offsets are instruction immediates);
//       3. multiply-accumulate Ds against the pointwise chunk into the registers.
//   * Epilogue: the accumulators plus bias go to a shared-memory tile Cs, the block
//     applies the activation to it in place, then stores it 4 values a thread, consecutive
//     threads on consecutive output addresses (along the filters for channels_last, along
//     a tile row's positions for channels_first; vector stores when aligned). The layout
//     only changes indexing, never a transpose. The activation is a runtime argument
//     (ActivationDispatch, sepconv_common.cuh): one uniform branch tree around a rolled
//     loop, so each activation is compiled once (not once per accumulator) and one
//     instantiation serves them all; linear skips the pass.
//   * When no tile's halo fits the shared-memory budget (very large dilated extents) the
//     planner sets use_halo = 0 and picks the generic-extent instantiation: step 1 then
//     stages only the weights, and step 2 gathers each tap straight from global memory,
//     skipping taps that fall in the padding instead of multiplying staged zeros. The sum
//     runs over the same taps in the same order, so results match the halo path bit for
//     bit for finite weights; with an inf/NaN depthwise weight the halo path gives NaN at
//     padded taps (0 * inf) where this path does not.
// Offsets into x and y are 64-bit.
//
// Every parameter below that the host planner computes is mirrored in
// sepconv_gpu/backends/cuda/simt.py (KernelPlan); keep the two in step.
#include "sepconv_common.cuh"

#define SC_THREADS 256
#define SC_WARPS (SC_THREADS / 32)
#define SC_BK 16              // depthwise channels per chunk
#define SC_TILE_ELEMS 4096    // BP * BF = SC_THREADS * (4 positions x 4 filters)
#define SC_DW_SMEM_TAPS 64    // depthwise weights go to shared memory up to this many taps
#define SC_STAGE_BATCH 4      // halo loads each thread has in flight before it stores them
#define SC_CS_PAD 4           // accumulators a row of the epilogue tile Cs has past its data
// Two resident blocks per SM caps registers at 128. Without a minimum ptxas (CUDA 13)
// aims for higher occupancy and spills the accumulators.
#define SC_MIN_BLOCKS 2

// Shared memory (dynamic), in this order:
//   Ds [SC_BK][BP]        accumulator type   depthwise outputs of the chunk
//   Ws [2][SC_BK][BF]     accumulator type   pointwise weights, chunks alternating between
//                                            two buffers (see the end of the chunk loop)
//   Wd [taps][SC_BK]      accumulator type   depthwise weights (only if taps <= SC_DW_SMEM_TAPS)
//   Xs [nch][plane]       input type         halo: row hh of channel cc at cc*plane + hh*pitch.
//       A row holds the HWd halo columns in order, or, when halo_split (stride-2 columns,
//       4- and 8-byte types), the even columns then the odd ones from (HWd+1)/2 on, so
//       that a warp reads consecutive words. The planner picks `pitch` so that the rows
//       a warp reads start on disjoint banks, and `plane` odd (conflict-free channel-
//       strided stores of scalar channels_last staging).
// The epilogue then reuses it from offset 0 (the launch's bytes cover the larger use):
//   Cs [BP][BF + SC_CS_PAD]  accumulator type   channels_last: a row a position
//   Cs [BF][BP + SC_CS_PAD]  accumulator type   channels_first: a row a filter
//       Each thread writes its 4 x 4 micro-tile as 4 quads (16-byte stores). Rows of 16
//       floats (BF = 16) are written by 2 micro-tile rows a quarter-warp, 4 rows apart:
//       the pad puts those 16 + 16 words on distinct banks. Doubles also swap halves
//       (store4_shared). Reading two such rows a quarter-warp is 2-way on 4 banks.
namespace sepconv {

// How a chunk's input halo maps between global and shared memory.
template <typename T> struct Halo {
    const T* x;                        // image n of the input
    long long xs_c, xs_h, xs_w;        // element strides
    int H, W;
    int c_lo, nch;                     // first input channel, channel count
    int ih0, iw0;                      // input coordinates of the halo's corner
    int HH, HWd, pitch, plane;
    int split;                         // 1: stride-2 columns stored even-first, else 0
    int wsub;                          // first odd column's slot when split

    // Slot of halo column ww in its row (branch-free: split is 0 or 1).
    __device__ __forceinline__ int column(int ww) const {
        return (ww & split) * wsub + (ww >> split);
    }
};

template <typename T> __device__ __forceinline__ bool halo_split(int str_w) {
    return str_w == 2 && sizeof(T) >= 4;   // 2-byte types at stride 2 already hit distinct words
}

// Copies the chunk's halo into Xs, zeros outside the image. One load moves a unit U: T
// (any strides) or uint4 (16 bytes of consecutive channels; channels_last, unit channel
// stride, aligned). Consecutive threads walk the axis contiguous in global memory:
// channels for channels_last, width for channels_first.
template <typename T, typename U, bool CF>
__device__ __forceinline__ void stage_halo(T* Xs, const Halo<T>& h) {
    constexpr int L = sizeof(U) / sizeof(T);   // channels per unit
    const int units = h.nch / L;
    const int total = units * h.HH * h.HWd;
    const int tid = threadIdx.x;
    const T* corner = h.x + (long long)h.c_lo * h.xs_c + (long long)h.ih0 * h.xs_h +
                      (long long)h.iw0 * h.xs_w;
    Walk3 w = CF ? Walk3(tid, SC_THREADS, h.HH, h.HWd, L * h.xs_c, h.xs_h, h.xs_w)
                 : Walk3(tid, SC_THREADS, h.HWd, units, h.xs_h, h.xs_w, L * h.xs_c);
    for (int i0 = tid; i0 < total; i0 += SC_STAGE_BATCH * SC_THREADS) {
        U v[SC_STAGE_BATCH];
        T* dst[SC_STAGE_BATCH];
        unsigned live = 0;   // bit b: unit b of the batch exists
#pragma unroll
        for (int b = 0; b < SC_STAGE_BATCH; ++b, w.next()) {
            const int cu = CF ? w.a : w.c, hh = CF ? w.b : w.a, ww = CF ? w.c : w.b;
            live |= unsigned(i0 + b * SC_THREADS < total) << b;
            dst[b] = Xs + cu * L * h.plane + hh * h.pitch + h.column(ww);
            v[b] = U();   // zero bits: 0.0 in every element
            if ((live >> b & 1) && (unsigned)(h.ih0 + hh) < (unsigned)h.H &&
                (unsigned)(h.iw0 + ww) < (unsigned)h.W)
                v[b] = load_ro(reinterpret_cast<const U*>(corner + w.off));
        }
#pragma unroll
        for (int b = 0; b < SC_STAGE_BATCH; ++b) {
            if (!(live >> b & 1)) continue;
            const T* e = reinterpret_cast<const T*>(&v[b]);
#pragma unroll
            for (int l = 0; l < L; ++l) dst[b][l * h.plane] = e[l];
        }
    }
}

// Tap addressing of the specialized depthwise loop.
enum DepthwiseMode { DW_DILATED, DW_UNIT, DW_SPLIT };

// Depthwise outputs of one channel at this lane's positions p = lane + 32 r, from its
// halo plane xs, for compile-time extents: weights in registers; with unit dilation
// (DW_UNIT, DW_SPLIT) every tap's offset from the row start is an immediate. Taps are
// summed in row-major order from zero, as in every other path.
template <typename T, typename A, int KH, int KW, int MODE>
__device__ __forceinline__ void depthwise_fixed(A* ds, const T* xs, const A* wd, int npos,
                                                int tw_shift, int str_h, int str_w,
                                                int dil_h, int dil_w, int pitch, int wsub) {
    A w[KH * KW];
#pragma unroll
    for (int t = 0; t < KH * KW; ++t) w[t] = wd[t * SC_BK];
    const int lane = threadIdx.x & 31;
    const int row_step = str_h * pitch, col_step = MODE == DW_SPLIT ? 1 : str_w;
    const int tap_h = MODE == DW_DILATED ? dil_h * pitch : pitch;
    for (int r = 0; r < npos; ++r) {
        const int p = lane + 32 * r;
        const T* src = xs + (p >> tw_shift) * row_step + (p & ((1 << tw_shift) - 1)) * col_step;
        A d = A(0);
#pragma unroll
        for (int i = 0; i < KH; ++i) {
            const T* row = src + i * tap_h;
            const T* odd = row + wsub;   // DW_SPLIT: odd columns
#pragma unroll
            for (int j = 0; j < KW; ++j) {
                const T v = MODE == DW_DILATED ? row[j * dil_w]
                          : MODE == DW_UNIT    ? row[j]
                          : (j & 1)            ? odd[j >> 1] : row[j >> 1];
                d = m_fma(to_acc(v), w[i * KW + j], d);
            }
        }
        ds[p] = d;
    }
}

}  // namespace sepconv

template <typename T, bool CF, int KH_, int KW_>
__global__ void __launch_bounds__(SC_THREADS, SC_MIN_BLOCKS)
sepconv_simt(const T* __restrict__ x,
              const typename sepconv::Acc<T>::type* __restrict__ dwk,   // [taps][K]
              const typename sepconv::Acc<T>::type* __restrict__ pwk,   // [K][F]
              const typename sepconv::Acc<T>::type* __restrict__ bias,  // [F] if has_bias
              T* __restrict__ y,
              long long xs_n, long long xs_c, long long xs_h, long long xs_w,
              int C, int H, int W, int M, int F, int OH, int OW,
              int kh_rt, int kw_rt, int str_h, int str_w, int dil_h, int dil_w,
              int pad_h, int pad_w,
              int BF, int tw_shift, int tiles_w, int tiles_img, int FB,
              int HH, int HWd, int pitch, int plane, int use_halo, int has_bias,
              int act, double act_param) {
    using namespace sepconv;
    typedef typename Acc<T>::type A;

    const int KH = KH_ > 0 ? KH_ : kh_rt;   // compile-time for the specialized extents
    const int KW = KW_ > 0 ? KW_ : kw_rt;
    const int taps = KH * KW;
    const bool dw_smem = taps <= SC_DW_SMEM_TAPS;
    const int K = C * M;
    const int BP = SC_TILE_ELEMS / BF;
    const int bf_shift = BF == 16 ? 4 : (BF == 32 ? 5 : 6);   // BF is 16, 32 or 64
    const int TW = 1 << tw_shift, TH = BP >> tw_shift;
    const int npos = BP / 32;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    A* Ds = reinterpret_cast<A*>(smem_raw);
    A* const Ws_pair = Ds + SC_BK * BP;
    A* Wd = Ws_pair + 2 * SC_BK * BF;
    T* Xs = reinterpret_cast<T*>(Wd + (dw_smem ? taps * SC_BK : 0));

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int bid = blockIdx.x;
    // Filter blocks of one spatial tile are adjacent in launch order: they share the
    // tile's input in L2.
    const int fb = bid % FB;
    const int tile = bid / FB;
    const int n = tile / tiles_img;
    const int t = tile - n * tiles_img;
    const int oh0 = (t / tiles_w) * TH, ow0 = (t % tiles_w) * TW;
    const int f0 = fb * BF;
    const int ih0 = oh0 * str_h - pad_h, iw0 = ow0 * str_w - pad_w;
    const T* __restrict__ xn = x + (long long)n * xs_n;

    Halo<T> halo{xn, xs_c, xs_h, xs_w, H, W, 0, 0, ih0, iw0, HH, HWd, pitch, plane,
                 int(halo_split<T>(str_w)), (HWd + 1) >> 1};
    // 16-byte halo loads need channels_last pixels that start 16-byte aligned.
    constexpr int VEC = 16 / sizeof(T);
    const bool vec_pixels = !CF && xs_c == 1 && ((xs_h | xs_w) & (VEC - 1)) == 0 &&
                            (reinterpret_cast<unsigned long long>(xn) & 15) == 0;
    // 16-byte pointwise-weight loads: rows of F accumulators, F a multiple of the vector.
    constexpr int VEC_ACC = 16 / sizeof(A);
    const bool vec_pw = (F & (VEC_ACC - 1)) == 0 && (reinterpret_cast<unsigned long long>(pwk) & 15) == 0;

    // Pointwise micro-tile: positions tp*4..+3, filters tf*4..+3. Consecutive lanes walk
    // the axis that is contiguous in the output layout, along the epilogue's Cs rows.
    int tp, tf;
    if (CF) { tp = tid % (BP / 4); tf = tid / (BP / 4); }
    else    { tf = tid % (BF / 4); tp = tid / (BF / 4); }

    A acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = A(0);

    for (int k0 = 0; k0 < K; k0 += SC_BK) {
        A* Ws = Ws_pair + ((k0 / SC_BK) & 1) * (SC_BK * BF);
        const int kend = min(K, k0 + SC_BK);
        const int c_lo = k0 / M;
        const int nch = (kend - 1) / M - c_lo + 1;   // input channels this chunk reads

        // ---- 1. stage weights and the input halo ----
        if (vec_pw) {
            for (int i = tid * VEC_ACC; i < SC_BK * BF; i += SC_THREADS * VEC_ACC) {
                const int kk = i >> bf_shift, j = i & (BF - 1);
                const int k = k0 + kk, f = f0 + j;   // f < F covers the whole vector
                *reinterpret_cast<uint4*>(Ws + i) = (k < K && f < F)
                    ? load_ro(reinterpret_cast<const uint4*>(pwk + (long long)k * F + f)) : uint4();
            }
        } else {
            for (int i = tid; i < SC_BK * BF; i += SC_THREADS) {
                const int kk = i >> bf_shift, j = i & (BF - 1);
                const int k = k0 + kk, f = f0 + j;
                Ws[i] = (k < K && f < F) ? load_ro(pwk + (long long)k * F + f) : A(0);
            }
        }
        if (dw_smem) {
            for (int i = tid; i < taps * SC_BK; i += SC_THREADS) {
                const int tap = i / SC_BK, k = k0 + (i - tap * SC_BK);
                Wd[i] = k < K ? load_ro(dwk + (long long)tap * K + k) : A(0);
            }
        }
        if (use_halo) {
            halo.c_lo = c_lo;
            halo.nch = nch;
            if (vec_pixels && ((c_lo | nch) & (VEC - 1)) == 0)
                stage_halo<T, uint4, CF>(Xs, halo);
            else
                stage_halo<T, T, CF>(Xs, halo);
        }
        __syncthreads();

        // ---- 2. depthwise outputs of the chunk -> Ds (one warp per channel) ----
        for (int kk = warp; kk < SC_BK; kk += SC_WARPS) {
            const int k = k0 + kk;
            A* ds = Ds + kk * BP;
            if (k >= K) {   // past the last channel: zeros meet the zero weight rows
                for (int r = 0; r < npos; ++r) ds[lane + 32 * r] = A(0);
                continue;
            }
            const int c = k / M;
            const T* xs = Xs + (c - c_lo) * plane;
            if constexpr (KH_ > 0) {
                // Specialized extents always run with a halo (the planner ensures it).
                // Split columns with dilation (not a valid layer) take the generic loop.
                const bool unit = dil_h == 1 && dil_w == 1;
                if (unit || !halo.split) {
                    const int mode = !unit ? DW_DILATED : (halo.split ? DW_SPLIT : DW_UNIT);
                    const A* wd = Wd + kk;
#define SC_DEPTHWISE_FIXED(MODE) depthwise_fixed<T, A, KH_, KW_, MODE>( \
        ds, xs, wd, npos, tw_shift, str_h, str_w, dil_h, dil_w, pitch, halo.wsub)
                    if (mode == DW_UNIT) SC_DEPTHWISE_FIXED(DW_UNIT);
                    else if (mode == DW_SPLIT) SC_DEPTHWISE_FIXED(DW_SPLIT);
                    else SC_DEPTHWISE_FIXED(DW_DILATED);
#undef SC_DEPTHWISE_FIXED
                    continue;
                }
            }
            for (int r = 0; r < npos; ++r) {
                const int p = lane + 32 * r;
                const int pth = p >> tw_shift, ptw = p & (TW - 1);
                A d = A(0);
                if (use_halo && dw_smem && !halo.split) {
                    // runtime extents, the common case: walk the row and the weights
                    const A* w = Wd + kk;
                    for (int i = 0; i < KH; ++i) {
                        const T* src = xs + (pth * str_h + i * dil_h) * pitch + ptw * str_w;
                        for (int j = 0; j < KW; ++j, src += dil_w, w += SC_BK)
                            d = m_fma(to_acc(*src), *w, d);
                    }
                } else if (use_halo) {
                    for (int i = 0; i < KH; ++i) {
                        const T* row = xs + (pth * str_h + i * dil_h) * pitch;
                        for (int j = 0; j < KW; ++j) {
                            const int tap = i * KW + j;
                            const A w = dw_smem ? Wd[tap * SC_BK + kk] : load_ro(dwk + (long long)tap * K + k);
                            d = m_fma(to_acc(row[halo.column(ptw * str_w + j * dil_w)]), w, d);
                        }
                    }
                } else {
                    // No halo: gather from global memory, skipping taps in the padding.
                    const T* __restrict__ xc = xn + (long long)c * xs_c;
                    const int oh = oh0 + pth, ow = ow0 + ptw;
                    if (oh < OH && ow < OW) {
                        for (int i = 0; i < KH; ++i) {
                            const int ih = oh * str_h - pad_h + i * dil_h;
                            if ((unsigned)ih >= (unsigned)H) continue;
                            for (int j = 0; j < KW; ++j) {
                                const int iw = ow * str_w - pad_w + j * dil_w;
                                if ((unsigned)iw >= (unsigned)W) continue;
                                const int tap = i * KW + j;
                                const A w = dw_smem ? Wd[tap * SC_BK + kk] : load_ro(dwk + (long long)tap * K + k);
                                d = m_fma(to_acc(load_ro(xc + (long long)ih * xs_h + (long long)iw * xs_w)), w, d);
                            }
                        }
                    }
                }
                ds[p] = d;
            }
        }
        __syncthreads();

        // ---- 3. pointwise: acc[4x4] += Ds[:, positions]^T x Ws[:, filters] ----
#pragma unroll
        for (int kk = 0; kk < SC_BK; ++kk) {
            A a[4], b[4];
            load4(Ds + kk * BP + tp * 4, a);
            load4(Ws + kk * BF + tf * 4, b);
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = m_fma(a[i], b[j], acc[i][j]);
        }
        // No barrier here: a thread done with this pointwise may start staging the next
        // chunk while others still multiply. It writes Xs and Wd (read only before the
        // barrier above) and the other Ws buffer; Ds and this Ws are next written after
        // the next chunk's first barrier, which every thread reaches only after its
        // pointwise. Two barriers a chunk, and the next loads overlap this compute.
    }

    // ---- epilogue: the tile through shared memory (bias, activation, stores) ----
    // Cs holds the tile with the output's contiguous axis along its rows: [BP][BF] (rows
    // of filters) for channels_last, [BF][BP] (rows of positions) for channels_first.
    constexpr int TILE_SHIFT = 12;
    static_assert(1 << TILE_SHIFT == SC_TILE_ELEMS, "TILE_SHIFT is log2(SC_TILE_ELEMS)");
    const int cs_shift = CF ? TILE_SHIFT - bf_shift : bf_shift;   // log2 of a row's length
    const int cs_pitch = (1 << cs_shift) + SC_CS_PAD;
    A* const Cs = reinterpret_cast<A*>(smem_raw);
    // Doubles: lanes 4 apart move the two 16-byte halves of their quads in opposite order.
    const bool swap = lane >> 2 & 1;
    __syncthreads();   // every thread's last pointwise has read Ds and Ws: Cs reuses them
    {
        // this thread's micro-tile: Cs rows tr*4 .. +3, columns tc*4 .. +3
        const int tr = CF ? tf : tp, tc = CF ? tp : tf;
        const int fbase = f0 + tf * 4;
        A bv[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) bv[j] = (has_bias && fbase + j < F) ? bias[fbase + j] : A(0);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            A v[4];
#pragma unroll
            for (int c = 0; c < 4; ++c) v[c] = CF ? acc[c][r] + bv[r] : acc[r][c] + bv[c];
            store4_shared(Cs + (tr * 4 + r) * cs_pitch + tc * 4, v, swap);
        }
    }
    __syncthreads();
    if (act != ACT_LINEAR) {
        // One uniform dispatch around a rolled loop: each activation's code is compiled
        // once, not once per accumulator.
        const A prm = A(act_param);
        ActivationDispatch::visit(act, [&](auto tag) {
#pragma unroll 1
            for (int i = tid; i < SC_TILE_ELEMS; i += SC_THREADS) {
                A* c = Cs + (i >> cs_shift) * cs_pitch + (i & ((1 << cs_shift) - 1));
                *c = activate<decltype(tag)::value>(*c, prm);
            }
        });
        __syncthreads();
    }
    // Quads of 4 row-consecutive values, consecutive threads on consecutive quads: along
    // a position's filters (channels_last) or a tile row's positions (channels_first),
    // consecutive output addresses either way.
    const int quad_shift = cs_shift - 2;   // log2 of a row's quads
#pragma unroll 1
    for (int q = tid; q < SC_TILE_ELEMS / 4; q += SC_THREADS) {
        const int row = q >> quad_shift, col = (q & ((1 << quad_shift) - 1)) * 4;
        A v[4];
        load4_shared(Cs + row * cs_pitch + col, v, swap);
        if (!CF) {
            // y[n, oh, ow, f]: row = position, col = filter
            const int oh = oh0 + (row >> tw_shift), ow = ow0 + (row & (TW - 1));
            const int f = f0 + col;
            if (oh >= OH || ow >= OW || f >= F) continue;
            T* dst = y + (((long long)n * OH + oh) * OW + ow) * F + f;
            if ((F & 3) == 0) {   // then f + 3 < F
                store4(dst, v);
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (f + j < F) dst[j] = from_acc<T>(v[j]);
            }
        } else {
            // y[n, f, oh, ow]: row = filter, col = position; the quad lies in one tile row
            // when TW is a multiple of 4 (tiles 1 or 2 wide store one value at a time)
            const int f = f0 + row;
            if (f >= F) continue;
            T* plane_f = y + ((long long)n * F + f) * OH * OW;
            const int oh = oh0 + (col >> tw_shift), ow = ow0 + (col & (TW - 1));
            if ((TW & 3) == 0 && (OW & 3) == 0 && oh < OH && ow + 3 < OW) {
                store4(plane_f + (long long)oh * OW + ow, v);
            } else {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int p = col + i;
                    const int ohi = oh0 + (p >> tw_shift), owi = ow0 + (p & (TW - 1));
                    if (ohi < OH && owi < OW) plane_f[(long long)ohi * OW + owi] = from_acc<T>(v[i]);
                }
            }
        }
    }
}

// softmax / log_softmax over the last axis of a contiguous (rows, L) array, in place:
// one warp per row, an online max/sum pass then a write pass. Keras applies these to the
// output as laid out, so for channels_first the axis is the output width.
template <typename T, bool LOG>
__global__ void __launch_bounds__(256)
sepconv_softmax_lastaxis(T* __restrict__ y, long long rows, int L) {
    using namespace sepconv;
    typedef typename Acc<T>::type A;
    const int lane = threadIdx.x & 31;
    const long long warps_per_block = blockDim.x / 32;
    const long long step = (long long)gridDim.x * warps_per_block;
    for (long long row = blockIdx.x * warps_per_block + threadIdx.x / 32; row < rows; row += step) {
        T* r = y + row * L;
        // m: the row's largest finite value, s: the sum of exp(v - m) over its finite
        // values (online: rescaled when m grows); NaN and +inf are only noted (flags)
        A m = m_neg_inf(A(0)), s = A(0);
        int flags = 0;   // 1: a NaN, 2: a +inf
        for (int i = lane; i < L; i += 32) {
            const A v = to_acc(r[i]);
            if (v != v) flags |= 1;
            else if (v == -m_neg_inf(A(0))) flags |= 2;
            else if (v > m) { s = s * m_exp(m - v) + A(1); m = v; }
            else if (m != m_neg_inf(A(0))) s += m_exp(v - m);   // -inf adds 0
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const A mo = __shfl_xor_sync(0xffffffffu, m, o);
            const A so = __shfl_xor_sync(0xffffffffu, s, o);
            flags |= __shfl_xor_sync(0xffffffffu, flags, o);
            const A mx = mo > m ? mo : m;
            // scale by exp(m_i - mx); lanes at the max (or both empty: -inf) keep theirs
            const A a = (m == mx) ? s : s * m_exp(m - mx);
            const A b = (mo == mx) ? so : so * m_exp(mo - mx);
            m = mx;
            s = a + b;
        }
        // A row with NaN or +inf, as activations.softmax (Keras) computes it: shift by the
        // largest finite value (0 if none), NaN terms left out of the sum, +inf makes it
        // inf: NaN and +inf entries give NaN, the others 0. log_softmax, as NumPy: all NaN.
        if (flags) {
            if (m == m_neg_inf(A(0))) m = A(0);
            s = LOG ? m_nan(A(0)) : (flags & 2) ? -m_neg_inf(A(0)) : s;
        }
        const A logs = m_log(s);
        for (int i = lane; i < L; i += 32) {
            const A v = to_acc(r[i]);
            r[i] = from_acc<T>(LOG ? (v - m) - logs : m_exp(v - m) / s);
        }
    }
}
