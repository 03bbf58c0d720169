"""An analytic cost model of one kernel launch, used by the CUDA planners.

A launch is described by what it does in total (`Work`: bytes through DRAM and L2,
shared-memory bytes, SIMT instructions, tensor-core FLOPs) and by its residency (threads,
registers, shared memory per block). `predict` turns that into microseconds on a `Device`:

    hbm    = compulsory DRAM bytes / DRAM bandwidth
    l2     = bytes through L2 (staging, recompute, re-read weights) / L2 bandwidth
    per SM = shared-memory bytes / (128 B/clk), SIMT instructions / (4 warps x 32 per clk),
             tensor FLOPs / achievable mma.sync rate; those three pipes overlap only across
             resident blocks: sm = max + (sum - max) / blocks_per_sm
    waves  = the per-SM time grows by the last wave's idle SMs (blocks / (waves x slots))
    total  = max(hbm, l2, sm / wave efficiency) + launch overhead

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
    """Predicted microseconds of one launch, with the time each resource alone would take."""
    per_sm = blocks_per_sm(work.threads, work.registers, work.shared_bytes, device)
    if per_sm == 0:
        return Prediction(math.inf, 0, 0, {"occupancy": math.inf})
    slots = device.sms * per_sm
    waves = max(1, math.ceil(work.blocks / slots))
    efficiency = work.blocks / (waves * slots)
    us = 1e6
    tensor_rate = device.mma_f16_flops if work.tensor_kind == "f16" else device.mma_tf32_flops
    chip_clk = device.sms * device.clock_hz
    pipes = {
        "smem": work.smem_bytes / (device.smem_bytes_per_clk * chip_clk) * us,
        "simt": work.simt_instructions / (device.issue_per_clk * chip_clk) * us,
        "tensor": work.tensor_flops / tensor_rate * us,
    }
    longest = max(pipes.values())
    sm_time = longest + (sum(pipes.values()) - longest) / per_sm
    parts = {
        "hbm": work.hbm_bytes / device.hbm_bytes_per_s * us,
        "l2": work.l2_bytes / device.l2_bytes_per_s * us,
        "sm": sm_time / efficiency,
        **{k: v / efficiency for k, v in pipes.items()},
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


# SIMT kernel (kernels/sepconv_fused.cu) instruction counts from its sm_90 SASS
# (KERNEL_PLAN.md): staging one halo element ~47 instructions; one depthwise tap ~7.7;
# pointwise 1 FMA per multiply-add plus 2 LDS.128 per 16 FMAs; ~96 registers.
SIMT_STAGE_INSTRUCTIONS = 47
SIMT_TAP_INSTRUCTIONS = 7.7
SIMT_POINTWISE_INSTRUCTIONS = 1.125
SIMT_REGISTERS = 96


def simt_fused_work(geom, plan, in_itemsize, acc_itemsize, chunk=16, threads=256,
                    stage_instructions=SIMT_STAGE_INSTRUCTIONS):
    """`Work` of one `sepconv_fused` launch for a `cuda_kernels.KernelPlan`."""
    x, y, weights = _sizes(geom, in_itemsize, acc_itemsize)
    taps = geom.kernel[0] * geom.kernel[1]
    chunks = math.ceil(geom.intermediate_channels / chunk)
    per_chunk_halo = min(geom.channels, chunk) * plan.halo_h * plan.halo_w if plan.use_halo else 0
    per_chunk_weights = chunk * (plan.bf + taps) * acc_itemsize
    gathered = 0 if plan.use_halo else plan.bp * chunk * taps * in_itemsize
    l2 = plan.grid * chunks * (per_chunk_halo * in_itemsize + per_chunk_weights + gathered) + y
    instructions = plan.grid * chunks * (
        per_chunk_halo * stage_instructions + plan.bp * chunk * taps * SIMT_TAP_INSTRUCTIONS
        + plan.bp * plan.bf * chunk * SIMT_POINTWISE_INSTRUCTIONS)
    smem = plan.grid * chunks * chunk * (
        per_chunk_halo / chunk * in_itemsize + plan.bp * taps * in_itemsize
        + plan.bp * acc_itemsize * (1 + plan.bf / 4) + plan.bf * acc_itemsize * plan.bp / 4)
    return Work(blocks=plan.grid, threads=threads, registers=SIMT_REGISTERS,
                shared_bytes=plan.shared_bytes, hbm_bytes=x + y + weights, l2_bytes=l2,
                smem_bytes=smem, simt_instructions=instructions)


# Tensor-core kernel (kernels/sepconv_tc.cu), thread-instructions: a depthwise tap on one
# 4-byte word is LDS + unpack (2 conversions of x and 2 of the weight for half2, none for
# float) + FMAs; a position's word costs ~6 more (addressing, the operand store); a
# 16-byte cp.async granule ~12 (index math, predicate, LDGSTS); an output element ~3
# (+ ~20 through a non-linear activation).
TC_TAP_INSTRUCTIONS = {2: 7, 4: 2}          # by input itemsize
TC_POSITION_INSTRUCTIONS = 6
TC_GRANULE_INSTRUCTIONS = 12
TC_REGISTERS = 128


def tc_fused_work(geom, plan, in_itemsize, linear_activation=True, threads=256):
    """`Work` of one `sepconv_tc` launch for a `cuda_kernels.TcPlan`."""
    x, y, weights = _sizes(geom, in_itemsize, in_itemsize)
    taps = geom.kernel[0] * geom.kernel[1]
    chunk = 64                                  # bytes of one position's channel chunk
    chunks = plan.k_pad * in_itemsize // chunk
    warps_n = plan.bn // 64
    warps_m = 8 // warps_n
    halo = plan.halo_h * plan.halo_w * chunk
    staged = halo + taps * chunk + plan.bn * chunk     # bytes cp.async'ed a chunk
    per_chunk_smem = (staged + plan.bm * taps * chunk + plan.bm * chunk
                      + plan.bm * chunk * warps_n + plan.bn * chunk * warps_m)
    granules = staged // 16
    per_chunk_instr = (plan.bm * 16 * (taps * TC_TAP_INSTRUCTIONS[in_itemsize]
                                       + TC_POSITION_INSTRUCTIONS)
                       + granules * TC_GRANULE_INSTRUCTIONS)
    tile = plan.bm * plan.bn
    epilogue_instr = tile * (3 + (0 if linear_activation else 20))
    epilogue_smem = tile * 4 * (2 if linear_activation else 4)
    return Work(
        blocks=plan.grid, threads=threads, registers=TC_REGISTERS,
        shared_bytes=plan.shared_bytes, hbm_bytes=x + y + weights,
        l2_bytes=plan.grid * chunks * staged + y,
        smem_bytes=plan.grid * (chunks * per_chunk_smem + epilogue_smem),
        simt_instructions=plan.grid * (chunks * per_chunk_instr + epilogue_instr),
        tensor_flops=2.0 * plan.grid * tile * plan.k_pad,
        tensor_kind="f16" if in_itemsize == 2 else "tf32")
