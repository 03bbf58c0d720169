"""An analytic cost model of one kernel launch, used by the CUDA planners.

A launch is described by what it does in total (`Work`: bytes through DRAM and L2,
shared-memory bytes, SIMT instructions, tensor-core FLOPs) and by its residency (threads,
registers, shared memory per block). `predict` turns that into microseconds on a `Device`:

    hbm    = compulsory DRAM bytes / DRAM bandwidth
    l2     = bytes through L2 (staging, recompute, re-read weights) / L2 bandwidth
    pipes  = per SM: shared-memory bytes / (128 B/clk), SIMT instructions / (4 warps x 32
             per clk), tensor FLOPs / achievable mma.sync rate
    sm     = per SM, k resident blocks take max(k x one block's busiest pipe, one block's
             serial time: the sum over its phases of each phase's busiest pipe) when the
             work gives phases, else k x busiest + the block's other pipes; full waves
             hold blocks_per_sm blocks an SM, the last one ceil(rest / SMs)
    total  = max(hbm, l2, sm) + launch overhead

Every constant is a published figure or a stated assumption (see H100 below); the numbers
are predictions, not measurements: benchmarks print them beside what a GPU measures so the
constants can be corrected. CuPy-free, NumPy-free: plain arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Device:
    name: str
    sms: int
    clock_hz: float
    hbm_bytes_per_s: float       # achievable copy bandwidth, not the datasheet peak
    l2_bytes_per_s: float
    smem_bytes_per_clk: int      # per SM
    issue_per_clk: int           # thread-instructions per SM per clock (4 schedulers x 32)
    mma_f16_flops: float         # achievable mma.sync fp16 (fp32 accumulate), whole chip
    mma_tf32_flops: float
    smem_per_sm: int
    smem_per_block: int          # largest opt-in dynamic shared memory of one block
    smem_reserved_per_block: int
    regs_per_sm: int
    max_threads_per_sm: int
    max_blocks_per_sm: int
    launch_us: float             # launch + tail latency of one small kernel


# H100 SXM5 (sm_90): 132 SMs at 1.98 GHz boost; ~3.0 TB/s achievable copy bandwidth
# (3.35 peak); L2 ~5.5 TB/s (assumption, between published microbenchmarks); 128 B/clk
# shared memory per SM; 989 TFLOP/s dense fp16 peak of which mma.sync (no wgmma) reaches
# ~350 in practice (assumption, from CUTLASS sm80-style kernels on H100), tf32 half of it;
# 228 KB shared memory per SM (227 KB per block with the opt-in attribute, 1 KB reserved
# per block); 64K registers; 2048 threads; 32 blocks; ~2 us for a small launch.
H100 = Device(
    name="H100 SXM (model)", sms=132, clock_hz=1.98e9, hbm_bytes_per_s=3.0e12,
    l2_bytes_per_s=5.5e12, smem_bytes_per_clk=128, issue_per_clk=128,
    mma_f16_flops=350e12, mma_tf32_flops=175e12, smem_per_sm=228 * 1024,
    smem_per_block=227 * 1024, smem_reserved_per_block=1024, regs_per_sm=65536,
    max_threads_per_sm=2048, max_blocks_per_sm=32, launch_us=2.0)

DEFAULT_DEVICE = H100


@dataclass(frozen=True)
class Work:
    """Totals of one launch, summed over all its blocks."""

    blocks: int
    threads: int                 # per block
    registers: int               # per thread (ptxas report, or an estimate)
    shared_bytes: int            # dynamic shared memory per block
    hbm_bytes: float             # compulsory DRAM traffic: inputs once, outputs once
    l2_bytes: float              # everything that crosses L2 (>= hbm_bytes)
    smem_bytes: float = 0.0      # shared-memory bytes read + written
    simt_instructions: float = 0.0   # thread-level instructions on the SIMT pipes
    tensor_flops: float = 0.0    # 2 per multiply-add, padding included
    tensor_kind: str = "f16"     # "f16" or "tf32"
    # Optional: the same totals split into phases a block runs one after the other
    # (separated by barriers), each a (smem_bytes, simt_instructions, tensor_flops)
    # triple. Within a phase the block's warps overlap the pipes; across phases only
    # other resident blocks fill the gaps. Empty: see `predict`.
    phases: tuple = ()


@dataclass(frozen=True)
class Prediction:
    us: float
    blocks_per_sm: int
    waves: int
    parts: dict = field(default_factory=dict)   # microseconds per resource

    @property
    def bound(self):
        """The resource that sets the time."""
        return max(self.parts, key=self.parts.get)


def blocks_per_sm(threads, registers, shared_bytes, device=DEFAULT_DEVICE):
    """Resident blocks per SM (0: the block does not fit at all)."""
    if shared_bytes > device.smem_per_block:
        return 0
    regs_per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256   # allocation granule
    by_regs = device.regs_per_sm // (regs_per_warp * math.ceil(threads / 32))
    by_threads = device.max_threads_per_sm // threads
    by_smem = device.smem_per_sm // (shared_bytes + device.smem_reserved_per_block)
    return max(0, min(by_regs, by_threads, by_smem, device.max_blocks_per_sm))


def predict(work, device=DEFAULT_DEVICE):
    """Predicted microseconds of one launch, with the time each resource alone would take.

    Per SM, k resident blocks (k <= blocks_per_sm) take max(k x the busiest pipe of one
    block, the block's serial time): its phases run one after the other, each as long as
    its busiest pipe, and the other resident blocks fill the gaps. Full waves put
    blocks_per_sm blocks on every SM, the last wave ceil(rest / SMs).
    """
    per_sm = blocks_per_sm(work.threads, work.registers, work.shared_bytes, device)
    if per_sm == 0:
        return Prediction(math.inf, 0, 0, {"occupancy": math.inf})
    slots = device.sms * per_sm
    waves = max(1, math.ceil(work.blocks / slots))
    us = 1e6
    tensor_rate = device.mma_f16_flops / device.sms if work.tensor_kind == "f16" \
        else device.mma_tf32_flops / device.sms
    smem_rate = device.smem_bytes_per_clk * device.clock_hz
    issue_rate = device.issue_per_clk * device.clock_hz
    blocks = max(work.blocks, 1)

    def block_pipes(smem, simt, flops):   # one block's time on each pipe of one SM
        return (smem / blocks / smem_rate * us, simt / blocks / issue_rate * us,
                flops / blocks / tensor_rate * us)

    pipes = block_pipes(work.smem_bytes, work.simt_instructions, work.tensor_flops)
    busiest = max(pipes)
    if work.phases:
        serial = sum(max(block_pipes(*phase)) for phase in work.phases)

        def sm_time(k):
            return max(k * busiest, serial) if k else 0.0
    else:  # the pipes of a block do not overlap; the other blocks hide all but one pipe
        def sm_time(k):
            return k * busiest + sum(pipes) - busiest if k else 0.0

    full, rest = divmod(work.blocks, slots)
    sm = full * sm_time(per_sm) + sm_time(math.ceil(rest / device.sms))
    parts = {
        "hbm": work.hbm_bytes / device.hbm_bytes_per_s * us,
        "l2": work.l2_bytes / device.l2_bytes_per_s * us,
        "sm": sm,
        "smem": work.smem_bytes / (smem_rate * device.sms) * us,
        "simt": work.simt_instructions / (issue_rate * device.sms) * us,
        "tensor": work.tensor_flops / (tensor_rate * device.sms) * us,
    }
    total = max(parts["hbm"], parts["l2"], parts["sm"]) + device.launch_us
    return Prediction(total, per_sm, waves, parts)


# --- the two kernels -------------------------------------------------------------------

def _sizes(geom, in_itemsize, weight_itemsize):
    """(input, output, weight) bytes of one call (compulsory traffic)."""
    (h, w), (oh, ow) = geom.in_size, geom.out_size
    taps = geom.kernel[0] * geom.kernel[1]
    k = geom.intermediate_channels
    x = geom.batch * h * w * geom.channels * in_itemsize
    y = geom.batch * oh * ow * geom.filters * in_itemsize
    weights = (taps * k + k * geom.filters + geom.filters) * weight_itemsize
    return x, y, weights


# SIMT kernel (kernels/sepconv_simt.cu), thread-instructions counted in its sm_90 SASS
# (nvcc 13.0, cuobjdump; 3x3 / 5x5 / 1x3 / generic, channels_last and channels_first):
# - staging: per load unit (one element, or 16 bytes of consecutive channels for
#   channels_last inputs with unit channel stride), keyed by (input itemsize, vector);
# - depthwise: per output of one channel, SIMT_DW_BASE + taps x per-tap cost; the
#   specialized extents keep the weights in registers and fold tap offsets into the LDS
#   immediates (3x3 float: 29.5 instructions an output, half 37.8); the runtime-extent
#   loop walks the halo row and the weights (4.3 a tap, 5.3 for half);
# - pointwise: per multiply-add (16 FMAs + 2 LDS.128 + addressing per 16);
# - weights: per 16-byte vector of pointwise weights, per depthwise weight.
SIMT_STAGE_INSTRUCTIONS = {(2, False): 39, (4, False): 44, (8, False): 44,
                           (2, True): 68, (4, True): 58, (8, True): 62}
SIMT_DW_BASE = 10
SIMT_DW_TAP_SPECIALIZED = {2: 3.4, 4: 2.2, 8: 2.2}
SIMT_DW_TAP_GENERIC = {2: 5.3, 4: 4.3, 8: 4.3}
SIMT_POINTWISE_INSTRUCTIONS = {4: 1.28, 8: 1.41}
SIMT_WEIGHT_VECTOR_INSTRUCTIONS = 16
SIMT_DW_WEIGHT_INSTRUCTIONS = 21
# __launch_bounds__(256, 2) caps registers at 128 (ptxas: 95-128): 2 blocks per SM.
SIMT_REGISTERS = 128
SMEM_WAVEFRONT = 128     # bytes one shared-memory wavefront serves


def simt_halo_channels(channels, multiplier, chunk=16):
    """Most input channels one chunk of `chunk` depthwise channels reads."""
    if multiplier == 1:
        return min(channels, chunk)
    return min(channels, (chunk - 1) // multiplier + 2)


def simt_fused_work(geom, plan, in_itemsize, acc_itemsize, chunk=16, threads=256,
                    specialized=False, vector_staging=None, bank_ways=1):
    """`Work` of one `sepconv_simt` launch for a `simt.KernelPlan`.

    `specialized`: the instantiation has compile-time extents; `vector_staging`: halo
    loads are 16 bytes (None: as for a contiguous, aligned input); `bank_ways`: shared
    memory wavefronts per depthwise read (1 when the halo pitch is conflict-free).
    """
    x, y, weights = _sizes(geom, in_itemsize, acc_itemsize)
    taps = geom.kernel[0] * geom.kernel[1]
    chunks = math.ceil(geom.intermediate_channels / chunk)
    nch = simt_halo_channels(geom.channels, geom.depth_multiplier, chunk)
    if vector_staging is None:
        vector_staging = (not geom.channels_first and geom.depth_multiplier == 1
                          and geom.channels % (16 // in_itemsize) == 0)
    halo = nch * plan.halo_h * plan.halo_w if plan.use_halo else 0   # elements a chunk
    units = halo * in_itemsize / 16 if vector_staging else halo
    outputs = plan.bp * chunk                                         # depthwise, a chunk
    tap_cost = (SIMT_DW_TAP_SPECIALIZED if specialized and plan.use_halo
                else SIMT_DW_TAP_GENERIC)[in_itemsize]
    per_chunk_instr = (
        units * SIMT_STAGE_INSTRUCTIONS[(in_itemsize, bool(vector_staging))]
        + chunk * plan.bf * acc_itemsize / 16 * SIMT_WEIGHT_VECTOR_INSTRUCTIONS
        + taps * chunk * SIMT_DW_WEIGHT_INSTRUCTIONS
        + outputs * (SIMT_DW_BASE + taps * tap_cost)
        + plan.bp * plan.bf * chunk * SIMT_POINTWISE_INSTRUCTIONS[acc_itemsize])
    # Shared-memory wavefronts: staging stores and depthwise loads (one a warp-wide
    # access of <= 4-byte elements), Ds stores, and per channel and warp the pointwise's
    # two LDS.128, which touch only the distinct positions / filters of the warp's lanes.
    warps = threads // 32
    word_waves = lambda n: n / 32 * max(1, in_itemsize // 4)
    if geom.channels_first:   # lanes along positions, one filter group a warp
        positions, filters = 32, 1
    else:                     # lanes along filters
        filters = min(32, plan.bf // 4)
        positions = 32 // filters
    quad = 4 * acc_itemsize   # bytes of 4 accumulators
    pw_waves = math.ceil(positions * quad / SMEM_WAVEFRONT) + math.ceil(filters * quad / SMEM_WAVEFRONT)
    per_chunk_waves = (word_waves(halo) + word_waves(outputs * taps) * bank_ways
                       + outputs / 32 + chunk * warps * pw_waves)
    # Once a block, the epilogue writes the tile to shared memory and reads it back (and
    # once more each way through a non-linear activation: not priced, as activations are not).
    epilogue_waves = 2 * plan.bp * plan.bf * acc_itemsize / SMEM_WAVEFRONT
    gathered = 0 if plan.use_halo else outputs * taps * in_itemsize
    per_chunk_l2 = (halo * in_itemsize + chunk * (plan.bf + taps) * acc_itemsize + gathered)
    return Work(blocks=plan.grid, threads=threads, registers=SIMT_REGISTERS,
                shared_bytes=plan.shared_bytes, hbm_bytes=x + y + weights,
                l2_bytes=plan.grid * chunks * per_chunk_l2 + y,
                smem_bytes=plan.grid * (chunks * per_chunk_waves + epilogue_waves) * SMEM_WAVEFRONT,
                simt_instructions=plan.grid * chunks * per_chunk_instr)


# Tensor-core kernel (kernels/sepconv_tc.cu), thread-instructions: a depthwise tap on one
# 4-byte word is 2 LDS (pixel, weight) + unpack (2 conversions of each for half2, none
# for float) + FMAs; a position's word costs ~6 more (addressing, the operand store); a
# 16-byte cp.async granule ~12 (index math, predicate, LDGSTS); an output element ~3
# (+ ~20 through a non-linear activation).
TC_TAP_INSTRUCTIONS = {2: 8, 4: 3}          # by input itemsize
# Sliding-window strips (4 outputs, stride 1): a row of KW taps loads 3 + KW pixels and
# KW weight words, converts them once (half2) and issues 4 x KW FMA pairs.
TC_POSITION_INSTRUCTIONS = 6
TC_GRANULE_INSTRUCTIONS = 12
TC_REGISTERS = {1: 96, 2: 128, 4: 255}      # by m16 tiles per warp (ptxas, sm_80 and sm_90: at most)


def _tc_tile_shape(geom, plan, in_itemsize):
    """(chunks of the whole K, expected halo bytes a tile stages a chunk, BK channels a
    chunk) of a `TcPlan`. A tile of bm consecutive positions (in bands of TH = band_h
    output rows) touches R = 1 + (bm - 1) / (TH OW) bands and crosses X = (bm - 1) /
    (OH OW) image boundaries on average. Segments stage (TH - 1) s_h + (KH - 1) d_h + 1
    input rows of each band's bm / (R TH) + 1 columns (and KW - 1 halo columns); a slab
    (TH = 1) stages whole rows, each once: (R - 1) s_h + (KH - 1) d_h + 1 +
    X ((KH - 1) d_h + 1 - s_h) (tc.tc_halo_extent gives the largest)."""
    chunk = 64                                  # bytes of one position's channel chunk
    (oh, ow), (kh, kw), (sh, sw), (dh, dw) = geom.out_size, geom.kernel, geom.strides, geom.dilation
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    round_s = lambda v: -(-v // sw) * sw
    band = plan.band_h
    rows = min(1 + (plan.bm - 1) / (band * ow), plan.bm, geom.batch * -(-oh // band))
    if plan.slab:
        crossings = min((plan.bm - 1) / (oh * ow), geom.batch - 1)
        halo = ((rows - 1) * sh + span_h + crossings * (span_h - sh)) * round_s((ow - 1) * sw + span_w)
    else:
        columns = min(plan.bm / band + rows * (band - 1) / band, rows * ow)
        halo = ((band - 1) * sh + span_h) * ((columns - rows) * sw + rows * round_s(span_w))
    return plan.k_pad * in_itemsize // chunk, halo * chunk, chunk // in_itemsize


def _tc_issued_flops(geom, plan, in_itemsize):
    """(tensor FLOPs filter block 0 issues, those of the other filter blocks): sepconv_tc
    skips mma tiles wholly past the positions, filters or channels, so the padding is the
    instruction's granularity (m16 rows, n8 columns, k16 / k8 channels) and the ragged last
    tile's."""
    r16 = lambda v, g: -(-v // g) * g
    positions = geom.output_positions
    rows = (plan.tiles - 1) * plan.bm + r16(positions - (plan.tiles - 1) * plan.bm, 16)
    k = r16(geom.channels, 16 if in_itemsize == 2 else 8)
    first = r16(min(plan.bn, geom.filters), 8)
    return 2.0 * rows * first * k, 2.0 * rows * (r16(geom.filters, 8) - first) * k


def tc_plan_charges(geom, plan, in_itemsize):
    """What `tc_fused_work` charges a `TcPlan` for, whole launch: tensor FLOPs issued
    (padding to the mma granularity and the ragged last tile included) and useful; bytes
    staged from L2 (halo and depthwise weights, once a tile and chunk); pointwise weight
    bytes through L2 (once a tile, chunk and filter block); the depthwise recompute factor
    (1: each block computes its positions' depthwise once, for all filter blocks)."""
    chunks, halo, _ = _tc_tile_shape(geom, plan, in_itemsize)
    taps = geom.kernel[0] * geom.kernel[1]
    return dict(
        issued_flops=sum(_tc_issued_flops(geom, plan, in_itemsize)),
        useful_flops=2.0 * geom.output_positions * geom.channels * geom.filters,
        staged_bytes=float(plan.tiles * chunks * (halo + taps * 64)),
        l2_weight_bytes=float(plan.tiles * chunks * plan.filter_blocks * plan.bn * 64),
        recompute=1.0)


def tc_fused_work(geom, plan, in_itemsize, linear_activation=True, threads=256,
                  strips=False):
    """`Work` of one `sepconv_tc` launch for a `tc.TcPlan`, in three phases a
    block runs one after the other: filter block 0's chunk loop (cp.async of halo,
    depthwise weights and pointwise rows; the depthwise's halo reads and A stores; the
    ldmatrix reads; SIMT issue of staging and depthwise; the tensor pipe), the chunk
    loops of filter blocks 1 .. FB - 1 (pointwise rows and mma only: A stays resident),
    and the FB epilogues. `strips`: the depthwise runs sliding-window strips
    (tc.tc_uses_strips; groups of 4 crossing a row segment run output by
    output, and the two half-warps' strips share banks: their pixel reads count twice).
    With channel splits each block runs its share of the chunks and writes fp32 partial
    sums."""
    x, y, weights = _sizes(geom, in_itemsize, in_itemsize)
    taps = geom.kernel[0] * geom.kernel[1]
    chunk = 64
    splits, fb = plan.k_splits, plan.filter_blocks
    total_chunks, halo, _ = _tc_tile_shape(geom, plan, in_itemsize)
    if splits > 1:   # fp32 partial sums instead of the output
        y = splits * geom.output_positions * geom.filters * 4
    warps_n = plan.bn // 64
    warps_m = 8 // warps_n
    staged_first = halo + taps * chunk + plan.bn * chunk   # bytes cp.async'ed a chunk, fb 0
    staged_rest = plan.bn * chunk                          # filter blocks 1 ..
    kh, kw = geom.kernel
    generic_loads, generic_instr = 2 * taps, taps * TC_TAP_INSTRUCTIONS[in_itemsize]
    if strips:   # per 4 outputs of a word: kh rows of (3 + kw) pixels and kw weights
        # strips broken by a band's end (each band's last partial group of 4 columns)
        bands = min(1 + (plan.bm - 1) / (plan.band_h * geom.out_size[1]), plan.bm)
        crossing = min(1.0, (bands - 1) * 4 * plan.band_h / plan.bm)
        strip_loads = kh * (3 + kw + kw) / 4
        # the half-warps' strips: 4 pixels apart (TH = 1: two-way bank conflicts), else
        # vertically adjacent at an odd row pitch (unit height stride)
        two_way = plan.band_h == 1 or geom.strides[0] != 1
        strip_waves = kh * ((2 if two_way else 1) * (3 + kw) + kw) / 4
        strip_instr = (strip_loads + strip_loads * (2 if in_itemsize == 2 else 0)
                       + taps * (4 // in_itemsize))
        dw_waves = crossing * generic_loads + (1 - crossing) * strip_waves
        word_instr = crossing * generic_instr + (1 - crossing) * strip_instr
    else:        # every tap loads a pixel and a weight (and unpacks both for half2)
        dw_waves, word_instr = generic_loads, generic_instr
    dw_smem = staged_first + plan.bm * dw_waves * chunk + plan.bm * chunk
    mma_smem = plan.bm * chunk * warps_n + plan.bn * chunk * warps_m
    dw_instr = (plan.bm * 16 * (word_instr + TC_POSITION_INSTRUCTIONS)
                + staged_first // 16 * TC_GRANULE_INSTRUCTIONS)
    rest_instr = staged_rest // 16 * TC_GRANULE_INSTRUCTIONS
    tile = plan.bm * plan.bn
    flops_first, flops_rest = _tc_issued_flops(geom, plan, in_itemsize)
    epi_instr = tile * (3 + (0 if linear_activation else 20))
    epi_smem = tile * 4 * (2 if linear_activation else 4)
    n = plan.tiles * total_chunks       # (tile, chunk) pairs over all blocks
    phases = ((n * (dw_smem + mma_smem), n * dw_instr, flops_first),
              (n * (fb - 1) * (staged_rest + mma_smem), n * (fb - 1) * rest_instr,
               flops_rest),
              (plan.grid * fb * epi_smem, plan.grid * fb * epi_instr, 0.0))
    return Work(
        blocks=plan.grid, threads=threads, registers=TC_REGISTERS[plan.m_tiles],
        shared_bytes=plan.shared_bytes, hbm_bytes=x + y + weights,
        l2_bytes=n * (staged_first + (fb - 1) * staged_rest) + y,
        smem_bytes=sum(p[0] for p in phases), simt_instructions=sum(p[1] for p in phases),
        tensor_flops=sum(p[2] for p in phases),
        tensor_kind="f16" if in_itemsize == 2 else "tf32", phases=phases)


def tc_reduce_work(geom, splits, in_itemsize, blocks, threads):
    """`Work` of `sepconv_tc_reduce`: reads the splits' fp32 partial sums (L2-resident
    right after the first launch, counted as DRAM to stay conservative), writes y."""
    count = geom.output_positions * geom.filters
    traffic = count * (4 * splits + in_itemsize)
    return Work(blocks=blocks, threads=threads, registers=32, shared_bytes=0,
                hbm_bytes=traffic, l2_bytes=traffic, simt_instructions=count * (4 + 3 * splits))
