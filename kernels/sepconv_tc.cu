// Tensor-core fused depthwise-separable convolution (NHWC, depth_multiplier 1):
// depthwise on the SIMT pipes into shared memory, pointwise as mma.sync, bias and
// activation in the epilogue, one launch. fp16 and bf16 (mma.m16n8k16, fp32 accumulate)
// and, when the caller allows TF32, float32 (mma.m16n8k8.tf32). Every other case runs
// sepconv_simt (sepconv_simt.cu); launch.select_kernel is the rule.
//
//   y[n, p, f] = act(b[f] + sum_c P[f, c] * sum_t x[n, p*s + t*d - pad, c] * D[t, c])
//
// Tiles over positions (implicit-GEMM style): block `tile` owns the BM consecutive output
// positions [tile * BM, tile * BM + BM) of the flattened N x OH x OW space (a tile may span
// rows and images; only the last one is ragged) and ALL F filters, in FB = ceil(F / BN)
// filter blocks of BN it runs one after the other. The flattening takes each image in
// bands of TH = band_h output rows (the planner's choice; 1 = row-major), a band column
// by column, so that a tile on a wide image covers TH rows and shares their input rows. 1-D grid: tiles x channel splits (the
// splits of a tile adjacent). TC_THREADS = 256 threads (8 warps) arranged (8/WN) x WN,
// WN = BN/64; a warp owns 16 MT x 64 of a BM x BN filter block (MT m16 x 8 n8 mma tiles,
// 32 MT fp32 accumulators a thread), so BM x BN = TC_TILE_ELEMS x MT / 2. The planner
// (tc.tc_candidates) picks BN in {64, 128, 256} and MT in {1, 2, 4}.
//
// The depthwise is computed once (recompute factor 1): with one filter block the A
// operand (the depthwise result) is double-buffered by chunk; with FB > 1 the block keeps
// its whole A (BM x its channels) resident in shared memory, computes it during filter
// block 0 and streams only the pointwise rows for filter blocks 1 .. FB - 1. Grids too
// small for the GPU may split the channels: 2^split_shift blocks per tile each take a
// contiguous range of chunks (their own depthwise, still computed once) and write fp32
// `partial` sums; sepconv_tc_reduce adds the splits, the bias and the activation (no
// atomics, deterministic).
//
// Staging, two layouts of the halo (the planner prices both and picks; `slab`):
//  * segments: one per band the tile touches (the first and last possibly partial);
//    segment k stages the HH = (TH - 1) s_h + (KH - 1) d_h + 1 input rows of its band and
//    the columns its outputs read, the segments side by side along the halo columns
//    (each from a multiple of s_w). Wide images: tiles touch one or two bands.
//  * slab (TH = 1): whole input rows stacked, each staged once however many output rows
//    read it: (R - 1) s_h + (KH - 1) d_h + 1 rows for R output rows within an image, more
//    for each image boundary crossed. Small images: a tile covers several rows.
// Tables built once a block map each halo row and column to its source, and each position
// to its first tap's pixel and its row-major output index.
//
// Channels go in chunks of TC_CHUNK_BYTES = 64 bytes a position (BK = 32 half or 16 float
// channels; the weights are zero-padded to K_pad = a multiple of 32 channels). Chunk kc:
//   1. cp.async (16 bytes, zero-fill outside the image / past C) into pipeline stage
//      kc % S (S = 3 or 4, the planner's choice): the halo, the chunk's depthwise weights
//      (filter block 0 only) and the pointwise rows P[f0 : f0+BN, chunk]. Loads run S - 2
//      chunks ahead of the depthwise.
//   2. depthwise (filter block 0): lane (l & 15) owns one 4-byte word of a position's
//      chunk (a half2 or one float); taps accumulate in fp32 and the result is rounded
//      once to the mma operand type (half, or tf32 with cvt.rna) and written as row p of
//      A. Specialized extents at unit width stride and dilation run sliding-window strips
//      (4 neighbours along a row of one band a half-warp, a row of KW taps from 3 + KW
//      loaded pixels; a group of 4 that is not runs output by output). Otherwise one
//      output a thread, every tap loaded, the half-warps on horizontally adjacent outputs
//      (adjacent pixels in the residue-ordered halo: distinct banks).
//   3. pointwise (MmaSync, the step a wgmma mainloop would replace: docs/design.md): each
//      warp ldmatrix.x4's its A rows (MT m16 tiles) and B rows (4 x 2 n8 tiles) and
//      issues 2 k-steps x 8 MT mma.sync, skipping tiles wholly past the positions,
//      filters or channels.
// One __syncthreads a chunk: in the interval after it every warp runs the depthwise of
// chunk kc + 1 and then the mma of chunk kc, so one warp's FMAs overlap another's mma
// inside the block, and across the blocks an SM holds (tc.TcPlan.blocks_per_sm:
// what registers and shared memory allow; no launch bound promises more).
//
// Shared memory (dynamic, > 48 KB needs the opt-in attribute; tc._tc_shared_bytes
// sizes it):
//   tables            : row_pix [BM], row_out [BM], col_off [HWp] and row_off [HH] (int64),
//                       col_ih [HWp], row_ih [HH]; the tile's halo width and rows (16 B)
//   As [slots][BM][80 B] : A, the mma operand; slots = 2 (FB = 1) or the block's chunks
//   stage s (S times) : Xs [HH][HWp][64 B]  input halo; columns stored by residue
//                                           (ww % s_w, then ww / s_w) so that adjacent
//                                           outputs read adjacent 64-byte pixels
//                       Ws [taps][64 B]     depthwise weights of the chunk (half for fp16,
//                                           exact fp32 for the TF32 path)
//                       Bs [BN][80 B]       pointwise rows (64 B + 16 B pad: the 8 rows of
//                                           an ldmatrix hit 8 distinct 16-byte bank groups)
//   epilogue          : Cs [BM][BN + 4] fp32 = acc + bias, activation applied in place,
//                       then 16-byte stores (scalar ones when F is not a multiple of 16
//                       bytes' worth of elements); over the stages (and As when FB = 1).
//
// The activation is a runtime switch (ActivationDispatch, sepconv_common.cuh, uniform across
// the grid, applied in one non-unrolled pass over Cs): a template parameter would multiply
// the instantiations of this large kernel by the number of activations (the compile-time
// measurements that made this call are in tc.py next to TC_EXTENTS).
//
// Requirements (checked by launch.select_kernel): NHWC with channels contiguous,
// C a multiple of 16 bytes' worth of elements, every other stride too, a 16-byte aligned
// base, N x OH x OW < 2^31. Offsets into x and y are 64-bit. Every constant below is
// mirrored in sepconv_gpu/backends/cuda/tc.py (tests/test_kernel_constants.py).
#include "sepconv_common.cuh"
#include "sepconv_ptx.cuh"

#define TC_THREADS 256
#define TC_WARPS 8
#define TC_WARP_M 32          // positions a warp multiplies at MT = 2 (16 MT in general)
#define TC_WARP_N 64          // filters a warp multiplies (8 n8 tiles)
#define TC_TILE_ELEMS 16384   // BM * BN = TC_WARPS * TC_WARP_M * TC_WARP_N (x MT / 2)
#define TC_CHUNK_BYTES 64     // one position's channel chunk
#define TC_ROW_BYTES 80       // shared pitch of an A or B row
#define TC_OUT_PAD 4          // extra floats a Cs row
#define TC_MT2_REGISTERS 128   // register cap of the MT <= 2 warp tiles (<= 64 accumulators)

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

template <> struct Tc<__nv_bfloat16> {
    typedef __nv_bfloat16 Operand;
    static constexpr int kPerWord = 2;
    __device__ __forceinline__ static void unpack(unsigned w, float (&v)[2]) {
        const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w));
        v[0] = f.x; v[1] = f.y;
    }
    __device__ __forceinline__ static unsigned operand(const float (&v)[2]) {
        return pack_bf162(v[0], v[1]);
    }

    __device__ __forceinline__ static void mma(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
        mma_bf16_m16n8k16(d, a, b);
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
__device__ __forceinline__ void store16(__nv_bfloat16* p, const float* s) {
    const float4 lo = reinterpret_cast<const float4*>(s)[0];
    const float4 hi = reinterpret_cast<const float4*>(s)[1];
    uint4 u;
    u.x = pack_bf162(lo.x, lo.y); u.y = pack_bf162(lo.z, lo.w);
    u.z = pack_bf162(hi.x, hi.y); u.w = pack_bf162(hi.z, hi.w);
    *reinterpret_cast<uint4*>(p) = u;
}
__device__ __forceinline__ void store16(float* p, const float* s) {
    *reinterpret_cast<float4*>(p) = *reinterpret_cast<const float4*>(s);
}
__device__ __forceinline__ __half from_float(float v, __half) { return __float2half_rn(v); }
__device__ __forceinline__ __nv_bfloat16 from_float(float v, __nv_bfloat16) {
    return __float2bfloat16_rn(v);
}
__device__ __forceinline__ float from_float(float v, float) { return v; }

// The tensor-core step of the mainloop, behind the interface another instruction family
// implements (docs/design.md: an sm_90a wgmma version): the accumulator fragment of a
// BM x BN filter block, one chunk's multiply from A and B in shared memory, and the
// fragment's hand-over to the epilogue. Here: mma.sync, warp (wm, wn) of the (8/WN) x WN
// warps owning 16 MT positions x 64 filters (MT m16 x 8 n8 tiles), A and B rows of
// TC_ROW_BYTES (64 bytes + a 16-byte pad: an ldmatrix's 8 rows on distinct bank groups).
template <typename T, int MT> struct MmaSync {
    typedef Tc<T> Op;
    static constexpr int kWarpM = 16 * MT;
    struct Accumulators { float v[MT][8][4]; };

    __device__ __forceinline__ static void clear(Accumulators& acc) {
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc.v[i][j][e] = 0.f;
    }

    // acc += A[wm rows] x B[wn rows]^T over one chunk (2 k-steps of 32 bytes). mma tiles
    // wholly past `rows` valid positions, `cols` valid filters (both counted from the
    // warp's first) or `k_left` valid channels are skipped (warp-uniform conditions), so
    // what is issued is padded only to the m16 / n8 / k granularity of the instruction.
    __device__ __forceinline__ static void multiply(Accumulators& acc, const unsigned char* as,
                                                    const unsigned char* bs, int tid, int WN,
                                                    int rows, int cols, int k_left) {
        constexpr int BK = 16 * Op::kPerWord;
        const int lane = tid & 31, warp = tid >> 5;
        const int wm = warp / WN, wn = warp - (warp / WN) * WN;
        const int a_row = wm * kWarpM + (lane & 15), a_byte = (lane >> 4) * 16;
        const int b_row = wn * TC_WARP_N + (lane & 7) + ((lane >> 4) << 3);
        const int b_byte = ((lane >> 3) & 1) * 16;
        rows -= wm * kWarpM;
        cols -= wn * TC_WARP_N;
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
            if (ks * BK / 2 >= k_left) break;
            unsigned a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                if (mt * 16 < rows)
                    ldsm_x4(a[mt], as + (a_row + mt * 16) * TC_ROW_BYTES + ks * 32 + a_byte);
#pragma unroll
            for (int np = 0; np < 4; ++np) {
                if (np * 16 >= cols) break;
                unsigned b[4];
                ldsm_x4(b, bs + (b_row + np * 16) * TC_ROW_BYTES + ks * 32 + b_byte);
                const unsigned b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    if (mt * 16 >= rows) break;
                    Op::mma(acc.v[mt][2 * np], a[mt], b0);
                    if (np * 16 + 8 < cols) Op::mma(acc.v[mt][2 * np + 1], a[mt], b1);
                }
            }
        }
    }

    // Cs[p][f - f0] = acc + bias[f] (fp32, row pitch `pitch` floats); `bias` null: none.
    __device__ __forceinline__ static void store(const Accumulators& acc, float* Cs, int pitch,
                                                 int tid, int WN, const float* bias, int f0,
                                                 int F) {
        const int warp = tid >> 5, g = (tid & 31) >> 2, q = tid & 3;
        const int wm = warp / WN, wn = warp - (warp / WN) * WN;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            const int col = wn * TC_WARP_N + nt * 8 + 2 * q;
            const int f = f0 + col;
            const float b0 = bias && f < F ? bias[f] : 0.f;
            const float b1 = bias && f + 1 < F ? bias[f + 1] : 0.f;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const int row = wm * kWarpM + mt * 16 + g;
                *reinterpret_cast<float2*>(Cs + row * pitch + col) =
                    make_float2(acc.v[mt][nt][0] + b0, acc.v[mt][nt][1] + b1);
                *reinterpret_cast<float2*>(Cs + (row + 8) * pitch + col) =
                    make_float2(acc.v[mt][nt][2] + b0, acc.v[mt][nt][3] + b1);
            }
        }
    }
};

}  // namespace sepconv

template <typename T, int KH_, int KW_, int MT>
__global__ void __launch_bounds__(TC_THREADS) __maxnreg__(MT <= 2 ? TC_MT2_REGISTERS : 255)
sepconv_tc(const T* __restrict__ x,
           const typename sepconv::Tc<T>::Operand* __restrict__ dwp,       // [taps][K_pad]
           const typename sepconv::Tc<T>::Operand* __restrict__ pwp,       // [F][K_pad]
           const float* __restrict__ bias,                                 // [F] if has_bias
           T* __restrict__ y,                                              // [N*OH*OW][F]
           float* __restrict__ partial,               // [k_splits][N*OH*OW][F] if k_splits > 1
           long long xs_n, long long xs_h, long long xs_w,
           int N, int C, int H, int W, int F, int OH, int OW,
           int kh_rt, int kw_rt, int str_h, int str_w, int dil_h, int dil_w,
           int pad_h, int pad_w,
           int BN, int FB, int HH, int HWs, int stages, int K_pad, int has_bias, int act,
           float act_param, int split_shift,
           // shared-memory carve-up in bytes (tc.tc_layout): kernel parameters
           // are constant-bank operands, which spares registers next to the accumulators
           int as_at, int ring_at, int stage_bytes, int halo_bytes, int b_at,
           int band_h, int slab) {   // position order and halo layout: see the tables
    using namespace sepconv;
    typedef Tc<T> Op;
    typedef MmaSync<T, MT> Mainloop;   // the tensor-core step (docs/design.md: its swap)
    constexpr int PW = Op::kPerWord;
    constexpr int BK = 16 * PW;                              // channels a chunk
    constexpr int VEC = 16 / (int)sizeof(T);                 // elements in 16 bytes
    constexpr int OPV = 16 / (int)sizeof(typename Op::Operand);
    constexpr int WORDS = TC_CHUNK_BYTES / 4;                // 4-byte words of a pixel's chunk

    const int KH = KH_ > 0 ? KH_ : kh_rt;
    const int KW = KW_ > 0 ? KW_ : kw_rt;
    const int taps = KH * KW;
    const int BM = TC_TILE_ELEMS / 2 * MT / BN;
    const int WN = BN / TC_WARP_N;
    const int HWp = HWs * str_w;

    // this block's channel chunks: [chunk0, chunk0 + chunks) of K_pad / BK
    const int bid = blockIdx.x;
    const int per_split = ((K_pad / BK - 1) >> split_shift) + 1;
    const int split = bid & ((1 << split_shift) - 1);
    const int chunk0 = split * per_split;
    const int chunks = min(K_pad / BK - chunk0, per_split);
    // first position of the tile (a function: recomputed where needed, not kept live)
    auto tile_p0 = [&]() { return (int)(blockIdx.x >> split_shift) * BM; };
    const int P = N * OH * OW;                               // < 2^31 (select_kernel)

    // shared memory (the carve-up at the top; tc.tc_layout computes it)
    const int a_bytes = BM * TC_ROW_BYTES;                   // one A slot
    extern __shared__ __align__(16) unsigned char smem_raw[];
    int* row_pix = reinterpret_cast<int*>(smem_raw);                          // [BM]
    int* row_out = row_pix + BM;                                                // [BM]
    long long* col_off = reinterpret_cast<long long*>(row_out + BM);            // [HWp]
    long long* row_off = col_off + HWp;                                         // [HH]
    int* col_ih = reinterpret_cast<int*>(row_off + HH);                         // [HWp]
    int* row_ih = col_ih + HWp;                                                 // [HH]
    int* tile_hw = reinterpret_cast<int*>(smem_raw + as_at) - 4;                // [2] (of 4)
    unsigned char* As = smem_raw + as_at;
    unsigned char* ring = smem_raw + ring_at;
    float* Cs = reinterpret_cast<float*>(FB > 1 ? ring : As);
    auto a_slot = [&](int kc) { return As + (FB > 1 ? kc : kc & 1) * a_bytes; };

    // ---- tables: where each halo pixel comes from, where each position's taps start ----
    // Position order: each image in bands of TH = band_h output rows (the last band of an
    // image may be lower: hb rows), a band column by column (ow, then the row in the band):
    // TH = 1 is the row-major order. Band gb = n * NB + b (NB = ceil(OH / TH)).
    // Halo pixel (j, ww) is x[row_off[j] + col_off[ww] + (row_ih[j] + col_ih[ww]) * xs_h],
    // zero where that row is outside the image (an invalid row or column carries -2^29).
    // Band gb_a + k of the tile covers output columns [s0, s1] (s0 = the first position's
    // column for k = 0, else 0; s1 = OW - 1 but in the last band).
    //  * segments (!slab): segment k stages the HH = (TH - 1) s_h + (KH - 1) d_h + 1 input
    //    rows of its band and the columns [s0 s_w, s1 s_w + (KW - 1) d_w] - pad_w, from
    //    halo column base_k = k ? w0 + (k - 1) * wf : 0 (widths rounded up to multiples
    //    of s_w);
    //  * slab (TH = 1): whole rows of input (wf columns), stacked: output row (n, oh)
    //    reads from halo row slot(n, oh) = (oh - oh_a) s_h within the first image, then
    //    first_rows + (n - n_a - 1) img_rows + oh s_h; rows shared between output rows.
    const int TH = band_h, NB = (OH + TH - 1) / TH;
    const int span_h = (KH - 1) * dil_h + 1, span_w = (KW - 1) * dil_w + 1;
    // (band, column, row in band) of position p: gb = n * NB + b; oh = b * TH + r
    auto locate = [&](int p, int& gb, int& ow, int& r) {
        const int n = p / (OH * OW), q = p - n * OH * OW, b = q / (TH * OW);
        const int hb = min(TH, OH - b * TH), rem = q - b * TH * OW;
        ow = rem / hb;
        r = rem - ow * hb;
        gb = n * NB + b;
    };
    int gb_a, ow_a, r_a, gb_b, ow_b, r_b;
    const int last = min(tile_p0() + BM, P) - 1;
    locate(tile_p0(), gb_a, ow_a, r_a);
    locate(last, gb_b, ow_b, r_b);
    const int n_a = gb_a / NB, oh_a = (gb_a - n_a * NB) * TH + r_a;   // slab: TH = 1
    auto round_s = [&](int v) { return (v + str_w - 1) / str_w * str_w; };
    const int wf = round_s((OW - 1) * str_w + span_w);       // a whole row's columns
    const int w0 = round_s(((gb_b > gb_a ? OW - 1 : ow_b) - ow_a) * str_w + span_w);
    const int first_rows = (OH - 1 - oh_a) * str_h + span_h, img_rows = (OH - 1) * str_h + span_h;
    auto slot = [&](int n, int oh) {
        return n == n_a ? (oh - oh_a) * str_h : first_rows + (n - n_a - 1) * img_rows + oh * str_h;
    };
    constexpr int NOWHERE = -(1 << 29);
    const int HW = slab ? wf
                        : gb_b > gb_a ? w0 + (gb_b - gb_a - 1) * wf + round_s(ow_b * str_w + span_w)
                                      : w0;                  // this tile's halo columns
    for (int ww = threadIdx.x; ww < HW; ww += TC_THREADS) {
        const int k = slab || ww < w0 ? 0 : 1 + (ww - w0) / wf;
        const int local = ww - (k ? w0 + (k - 1) * wf : 0);
        const int gb = gb_a + k, s0 = slab || k ? 0 : ow_a;
        const int s1 = !slab && gb == gb_b ? ow_b : OW - 1;
        const int n = gb / NB, oh = (gb - n * NB) * TH;
        const int iw = s0 * str_w - pad_w + local;
        const bool ok = local < (s1 - s0) * str_w + span_w && (unsigned)iw < (unsigned)W;
        col_off[ww] = (slab || !ok ? 0 : n * xs_n) + (ok ? iw * xs_w : 0);
        col_ih[ww] = !ok ? NOWHERE : slab ? 0 : oh * str_h - pad_h;
    }
    for (int j = threadIdx.x; j < HH; j += TC_THREADS) {
        int n = n_a, ih = j;                                 // segments: row j of each
        if (slab) {
            const int j2 = j - first_rows;
            if (j2 < 0) ih = oh_a * str_h - pad_h + j;
            else { n += 1 + j2 / img_rows; ih = j2 % img_rows - pad_h; }
        }
        row_off[j] = slab && n < N ? n * xs_n : 0;
        row_ih[j] = n < N ? ih : NOWHERE;
    }
    for (int t = threadIdx.x; t < BM; t += TC_THREADS) {
        int gb, ow, r;
        locate(min(tile_p0() + t, last), gb, ow, r);         // past the end: any valid pixel
        const int n = gb / NB, oh = (gb - n * NB) * TH + r, k = gb - gb_a;
        row_pix[t] = slab ? slot(n, oh) * HWp + ow
                          : r * str_h * HWp + (k ? w0 + (k - 1) * wf : 0) / str_w + ow -
                                (k ? 0 : ow_a);
        row_out[t] = (n * OH + oh) * OW + ow;                // row-major position: y, partial
    }
    if (threadIdx.x == 0) {   // read back when staging (spares registers)
        tile_hw[0] = HW;
        tile_hw[1] = slab ? slot(gb_b / NB, gb_b - gb_b / NB * NB) + span_h : HH;  // rows
    }
    __syncthreads();

    // ---- 1. asynchronous loads of chunk kc into stage kc % stages ----
    // Each thread copies 16-byte granule (tid & 3) of every 64th pixel / B row. (Every
    // stage derives its thread mapping from thread_index() itself: see there.)
    auto load_chunk = [&](int kc, int f0, bool with_halo, unsigned char* base) {
        const int tid = thread_index(), granule = tid & 3;
        const int k0 = (chunk0 + kc) * BK;
        if (with_halo) {
            const int c = k0 + granule * VEC;
            const bool channel_ok = c < C;
            // a few pixels a thread: a division each spares the registers of a walker
            const int HW = tile_hw[0], rows = tile_hw[1];
            for (int pix = tid >> 2; pix < rows * HW; pix += TC_THREADS / 4) {
                const int hh = pix / HW, ww = pix - hh * HW;
                const int ih = row_ih[hh] + col_ih[ww];
                const bool valid = channel_ok && (unsigned)ih < (unsigned)H;
                const T* src = valid ? x + row_off[hh] + col_off[ww] + (long long)ih * xs_h + c : x;
                const int col = str_w == 1 ? ww : (ww % str_w) * HWs + ww / str_w;
                cp_async16(base + (hh * HWp + col) * TC_CHUNK_BYTES + granule * 16, src, valid);
            }
            unsigned char* ws = base + halo_bytes;
            for (int tap = tid >> 2; tap < taps; tap += TC_THREADS / 4)
                cp_async16(ws + tap * TC_CHUNK_BYTES + granule * 16,
                           dwp + (long long)tap * K_pad + k0 + granule * OPV, true);
        }
        unsigned char* bs = base + b_at;
        for (int r = tid >> 2; r < BN; r += TC_THREADS / 4) {
            const bool valid = f0 + r < F;
            const typename Op::Operand* src =
                valid ? pwp + (long long)(f0 + r) * K_pad + k0 + granule * OPV : pwp;
            cp_async16(bs + r * TC_ROW_BYTES + granule * 16, src, valid);
        }
    };

    // Column offset of tap column j in the residue-ordered halo (s_w > 1 implies d_w = 1).
    auto col_offset = [&](int j) {
        return str_w == 1 ? j * dil_w : (j % str_w) * HWs + j / str_w;
    };
    constexpr int SKH = KH_ > 0 ? KH_ : 1, SKW = KW_ > 0 ? KW_ : 1;
    // Sliding-window strips (tc.tc_uses_strips mirrors this condition).
    const bool strips = KH_ > 0 && str_w == 1 && dil_w == 1;


    typename Mainloop::Accumulators acc;

    // ---- 2. depthwise of chunk kc (in its stage) -> A slot `as` ----
    auto depthwise = [&](int kc, unsigned char* as) {
        const unsigned char* base = ring + (kc % stages) * stage_bytes;
        const unsigned* xw = reinterpret_cast<const unsigned*>(base);
        const unsigned* wk = reinterpret_cast<const unsigned*>(base + halo_bytes);
        // word `dw_word` of a position's chunk, half-warp `dw_half` of warp `warp`
        const int tid = thread_index(), warp = tid >> 5;
        const int dw_word = tid & 15, dw_half = (tid >> 4) & 1;
        // one output: every tap and weight loaded (any stride and dilation; weights in
        // registers would spill next to the accumulators)
        auto one = [&](int p) {
            const unsigned* src = xw + row_pix[p] * WORDS + dw_word;
            float d[PW];
#pragma unroll
            for (int e = 0; e < PW; ++e) d[e] = 0.f;
            for (int i = 0; i < KH; ++i)       // unrolled for the specialized extents
                for (int j = 0; j < KW; ++j) {
                    float v[PW], w[PW];
                    Op::unpack(src[(i * dil_h * HWp + col_offset(j)) * WORDS], v);
                    Op::unpack(wk[(i * KW + j) * 16 + dw_word], w);   // a broadcast
#pragma unroll
                    for (int e = 0; e < PW; ++e) d[e] = fmaf(v[e], w[e], d[e]);
                }
            *reinterpret_cast<unsigned*>(as + p * TC_ROW_BYTES + dw_word * 4) = Op::operand(d);
        };
        if (strips) {
            // Strips of 4 outputs along a row (tile positions t, t + TH, t + 2 TH, t + 3 TH
            // of one band): the KW taps of a row slide over 3 + KW loaded pixels (6 loads
            // for 12 taps at 3x3). The half-warps take neighbouring strips: vertically
            // adjacent ones for TH > 1 (an odd row pitch: distinct banks), else 4 pixels
            // apart (two wavefronts, priced by the model).
            const int TH = band_h;
#pragma unroll 1
            for (int item = 2 * warp + dw_half; item < BM / 4; item += 2 * TC_WARPS) {
                const int t0 = item / TH * 4 * TH + item % TH;
                const int pix0 = row_pix[t0];
                if (row_pix[t0 + TH] != pix0 + 1 || row_pix[t0 + 2 * TH] != pix0 + 2 ||
                    row_pix[t0 + 3 * TH] != pix0 + 3) {   // not 4 neighbours of one row
                    for (int m = 0; m < 4; ++m) one(t0 + m * TH);
                    continue;
                }
                const unsigned* src = xw + pix0 * WORDS + dw_word;
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
                    const unsigned* row = src + i * dil_h * HWp * WORDS;
#pragma unroll
                    for (int t = 0; t < 3 + SKW; ++t) {
                        float v[PW];
                        Op::unpack(row[t * WORDS], v);
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
                    *reinterpret_cast<unsigned*>(as + (t0 + r * TH) * TC_ROW_BYTES + dw_word * 4) =
                        Op::operand(d[r]);
            }
        } else {
#pragma unroll 1
            // the half-warps on horizontally adjacent outputs (tile positions t, t + TH)
            for (int u = warp; u < BM / 2; u += TC_WARPS)
                one(u / band_h * 2 * band_h + u % band_h + dw_half * band_h);
        }
    };

    // ---- 3. pointwise of chunk kc: the tensor-core step (Mainloop::multiply) ----
    auto pointwise = [&](int kc, const unsigned char* as, int f0) {
        Mainloop::multiply(acc, as, ring + (kc % stages) * stage_bytes + b_at, thread_index(),
                           WN, N * OH * OW - tile_p0(), F - f0, C - (chunk0 + kc) * BK);
    };

#pragma unroll 1
    for (int f0 = 0; f0 < F; f0 += BN) {   // the FB filter blocks
        const bool first = f0 == 0;   // stages the halo and computes the depthwise
        Mainloop::clear(acc);

        // Mainloop: chunk kc + 1's depthwise and chunk kc's mma share one barrier interval
        // (A slots), so each warp's FMA and tensor work interleave with the other warps';
        // loads run stages - 2 chunks ahead of the depthwise. Iteration -1 only computes
        // the first depthwise. (An sm_90a wgmma + TMA mainloop would replace this loop:
        // docs/design.md.)
        for (int s = 0; s < stages - 2; ++s) {
            if (s < chunks) load_chunk(s, f0, first, ring + s * stage_bytes);
            cp_async_commit();
        }
        for (int kc = -1; kc < chunks; ++kc) {
            // chunk kc + 1 has landed (stages - 3 younger groups may be in flight) ...
            if (stages == 4) cp_async_wait<1>(); else cp_async_wait<0>();
            // ... for every thread; A of chunk kc is complete; nobody reads stage
            // (kc - 1) % stages or A slot kc + 1 any more
            __syncthreads();
            if (kc + stages - 1 < chunks)
                load_chunk(kc + stages - 1, f0, first,
                           ring + ((kc + stages - 1) % stages) * stage_bytes);
            cp_async_commit();   // possibly empty: keeps the group count uniform
            if (first && kc + 1 < chunks) depthwise(kc + 1, a_slot(kc + 1));
            if (kc >= 0) pointwise(kc, a_slot(kc), f0);
        }
        cp_async_wait_all();
        __syncthreads();   // every warp is done with the stages: Cs reuses them

        // ---- epilogue: Cs = acc + bias, activation in place, 16-byte stores; with
        // several channel splits the raw partial sums go to `partial` ----
        const bool finish = split_shift == 0;
        const int cs_pitch = BN + TC_OUT_PAD;
        const int tid = thread_index();
        Mainloop::store(acc, Cs, cs_pitch, tid, WN, finish && has_bias ? bias : nullptr, f0, F);
        __syncthreads();
        if (finish && act != ACT_LINEAR) {
#pragma unroll 1
            for (int i = tid; i < BM * BN; i += TC_THREADS) {
                float* c = Cs + (i / BN) * cs_pitch + i % BN;
                *c = ActivationDispatch::apply(act, *c, act_param);
            }
            __syncthreads();
        }
        const int per_row = BN / VEC;
        for (int i = tid; i < BM * per_row; i += TC_THREADS) {
            const int r = i / per_row, cv = i - r * per_row;
            const int f = f0 + cv * VEC;
            if (tile_p0() + r >= N * OH * OW || f >= F) continue;   // past the end
            const float* v = Cs + r * cs_pitch + cv * VEC;
            const long long at = (long long)row_out[r] * F + f;
            if (!finish) {   // split `split` of the [k_splits][P][F] partial sums
                float* dst = partial + split * ((long long)N * OH * OW * F) + at;
                for (int e = 0; e < VEC && f + e < F; ++e) dst[e] = v[e];
            } else if (F % VEC == 0) {
                store16(y + at, v);
            } else {
                for (int e = 0; e < VEC && f + e < F; ++e) y[at + e] = from_float(v[e], T());
            }
        }
        __syncthreads();   // Cs is read; the next filter block's loads may overwrite it
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
        if (act != ACT_LINEAR) v = ActivationDispatch::apply(act, v, act_param);
        y[i] = from_float(v, T());
    }
}
