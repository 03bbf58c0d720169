"""compute-sanitizer's racecheck and memcheck, on the CPU, through the host emulator.

The kernels run as in tests/_cuda_host_emulator.py (the exact kernel source on
tests/_cuda_emulator_runtime.h, built with SEPCONV_EMU_OS_THREADS: one OS thread per
CUDA thread instead of the in-process emulator's fibers), but in a standalone
executable (tests/_emulator_sanitizer_driver.cpp) built with a sanitizer, since neither
can be loaded into the Python process:

- "racecheck": ThreadSanitizer. The emulator's barriers and warp collectives are a mutex
  and a condition variable, which TSan sees as synchronisation; so two threads touching
  the same shared (or global) bytes, one writing, with no barrier or collective between
  them, is a data race report. cp.async writes its destination at issue (NaN bytes) and
  again at the wait that covers it, so an access overlapping an asynchronous copy in
  flight is one too. Blocks run one after another: races between blocks are not seen.
- "memcheck": AddressSanitizer. Every array of a launch is its own heap allocation of
  exactly its extent, and dynamic shared memory is poisoned past the launch's bytes, so a
  read or write past either end is a heap-buffer-overflow (use-after-poison for shared
  memory and for the few bytes kept before a misaligned array) report. A scalar argument
  of another kind or size than its kernel parameter is refused before the launch.
- "plain": the same driver without a sanitizer (what the in-process emulator computes).

Either failure raises SanitizerError with the report, which names the kernel, the block
and the thread (the driver prints it from the sanitizer's report hook) and the source line
(built with -g). `SanitizedEmulator` has HostEmulator's `launch`, so
`_cuda_host_emulator.separable_conv` runs the CUDA backend's very launch sequence through
it, each launch a run of the driver, the arrays copied back after it.
"""
from __future__ import annotations

import copy
import ctypes
import hashlib
import os
import platform
import re
import shutil
import struct
import subprocess
import tempfile

import numpy as np

from sepconv_gpu.backends.cuda import kernel_cache
from sepconv_gpu.backends.cuda.simt import TILE_ELEMS
from sepconv_gpu.backends.cuda.tc import TC_TILE_ELEMS

try:
    import _cuda_host_emulator as emu  # tests/ on sys.path (pytest's default rootdir import)
except ImportError:  # tests/ as a package
    from . import _cuda_host_emulator as emu

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_emulator_sanitizer_driver.cpp")
# check -> the -fsanitize= of its build; "plain": the same driver without a sanitizer
CHECKS = {"racecheck": "thread", "memcheck": "address", "plain": None}
# Stop at the first report; the emulator's barrier timeout is generous (sanitized threads
# are slow, and the machine may be shared).
ENVIRONMENT = {
    "TSAN_OPTIONS": "halt_on_error=1 exitcode=66",
    "ASAN_OPTIONS": "halt_on_error=1 detect_leaks=0",
    "SEPCONV_EMU_TIMEOUT": "120",
}


class SanitizerError(AssertionError):
    """A sanitizer report (or an emulator abort) from the driver: `report` is its whole
    stderr; the message keeps its essential lines (what, where in kernels/, which kernel,
    block and thread)."""

    def __init__(self, check, status, report):
        self.check, self.status, self.report = check, status, report
        super().__init__(f"{check} failed (exit status {status}):\n" + _essentials(report))


class SanitizedEmulator:
    """The given kernel instantiations, built into the driver with one sanitizer.

    `source`: the kernel source (default: `kernel_cache.kernel_source()`, what NVRTC compiles; a
    test passes a mutated copy). Builds are cached by content digest, like the emulator's
    shared library."""

    def __init__(self, names, check, source=None, build_dir=None, max_blocks=None):
        """`max_blocks`: a launch with a larger grid runs only that many of its blocks,
        the first and the last among them, evenly spaced (`sample_blocks`); outputs of
        the others stay as they were (poisoned, in `separable_conv`)."""
        if check not in CHECKS:
            raise ValueError(f"check must be one of {sorted(CHECKS)}, got {check!r}")
        self.check, self.max_blocks = check, max_blocks
        self.names = list(dict.fromkeys(names))
        # #line: reports name these files, not the generated one (the kernel source has its own)
        parts = [f'#line 1 "tests/{os.path.basename(path)}"\n' + open(path, encoding="utf-8").read()
                 for path in (emu.RUNTIME, DRIVER)]
        table = "".join(
            f'    {{"{n}", [](unsigned g, unsigned b, std::size_t s, void** a) '
            f"{{ emu_launch(&{n}, g, b, s, a); }}, emu_param_kinds(&{n}), emu_param_sizes(&{n})}},\n"
            for n in self.names)
        text = "\n".join([parts[0], kernel_cache.kernel_source() if source is None else source, parts[1],
                          f'#line 1 "the generated kernel table"\n'
                          f"const EmuKernelEntry emu_kernel_table[] = {{\n{table}}};\n"
                          f"const std::size_t emu_kernel_count = {len(self.names)};\n"])
        # SEPCONV_EMU_OS_THREADS: every CUDA thread an OS thread, for ThreadSanitizer
        flags = ["-std=c++20", "-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-w",
                 "-DSEPCONV_EMU_OS_THREADS=1"]
        if CHECKS[check]:
            flags.append(f"-fsanitize={CHECKS[check]}")
        digest = hashlib.sha256("\0".join([text] + flags).encode()).hexdigest()[:16]
        self.executable = os.path.join(build_dir or emu.default_build_dir(),
                                       f"sanitizer_{check}_{digest}")
        emu.build_once(self.executable, text, flags, f"{check} build")

    def sampling(self, max_blocks):
        """This build, running at most `max_blocks` blocks of a launch (see __init__)."""
        other = copy.copy(self)
        other.max_blocks = max_blocks
        return other

    def launch(self, name, grid, block, args, shared_bytes):
        """HostEmulator.launch's interface: one launch, its arrays updated in place."""
        self.run([(name, grid, block, shared_bytes, args)])

    def run(self, launches, timeout=600):
        """Runs (name, grid, block, shared_bytes, args) launches in order in one driver
        process, then copies every array the kernels changed back into the caller's
        (which must then be writeable). Raises SanitizerError on a report."""
        arrays, extents = [], {}   # distinct memory extents, in first-use order
        body = []
        for name, grid, block, shared_bytes, args in launches:
            if name not in self.names:
                raise ValueError(f"kernel {name} is not in this build ({self.check})")
            if not 0 <= int(shared_bytes) <= emu.SMEM_LIMIT:
                raise ValueError(f"shared_bytes must be in [0, {emu.SMEM_LIMIT}], got {shared_bytes}")
            encoded = name.encode()
            blocks = sample_blocks(int(grid), self.max_blocks)
            body.append(struct.pack("<I", len(encoded)) + encoded +
                        struct.pack("<IIQI", int(grid), int(block), int(shared_bytes), len(blocks)) +
                        struct.pack(f"<{len(blocks)}I", *blocks) + struct.pack("<I", len(args)))
            for i, a in enumerate(args):
                if isinstance(a, np.ndarray):
                    low, high = _extent(a)
                    index = extents.setdefault((low, high), len(arrays))
                    if index == len(arrays):
                        arrays.append((a, low, high))
                    body.append(struct.pack("<cIQ", b"a", index, a.__array_interface__["data"][0] - low))
                elif isinstance(a, np.generic) and a.dtype.kind in "iufb":
                    body.append(struct.pack("<cB", a.dtype.kind.encode(), a.itemsize) + a.tobytes())
                else:
                    raise TypeError(f"{name}: argument {i} must be an array or a NumPy scalar, got {type(a)}")
        _check_disjoint(sorted(extents))
        header = [b"SEPCSAN1", struct.pack("<I", len(arrays))]
        for _, low, high in arrays:
            header.append(struct.pack("<QQ", high - low, low % 64) + ctypes.string_at(low, high - low))
        with tempfile.TemporaryDirectory(prefix="sepconv_sanitizer_") as tmp:
            launch_file, output_file = os.path.join(tmp, "launches"), os.path.join(tmp, "output")
            with open(launch_file, "wb") as fh:
                fh.write(b"".join(header + [struct.pack("<I", len(launches))] + body))
            command = [self.executable, launch_file, output_file]
            result = _execute(command, timeout)
            if "unexpected memory mapping" in result.stderr and shutil.which("setarch"):
                # gcc 12's TSan cannot start under a kernel's high ASLR entropy (newer
                # kernels' vm.mmap_rnd_bits): run it without address randomization
                result = _execute(["setarch", platform.machine(), "-R"] + command, timeout)
            if result.returncode != 0:
                raise SanitizerError(self.check, result.returncode, result.stderr)
            with open(output_file, "rb") as fh:
                output = fh.read()
        at = 0
        for a, low, high in arrays:
            after = output[at:at + high - low]
            at += high - low
            if after != ctypes.string_at(low, high - low):
                if not a.flags.writeable:
                    raise ValueError("a kernel wrote into a read-only array")
                ctypes.memmove(low, after, high - low)
        if at != len(output):
            raise RuntimeError(f"the driver wrote {len(output)} bytes, expected {at}")


def _execute(command, timeout):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENVIRONMENT})


_KEEP = re.compile(r"ThreadSanitizer|AddressSanitizer|READ of|WRITE of|Read of|Write of|"
                   r"Previous|#0 |kernels/|Location is|is located|Thread T\d+ '|sepconv ")
_FRAME = re.compile(r"(#\d+ )(?:0x[0-9a-f]+ in )?(?:void )?([^(]*)\(.*?\)(?: const)? (\S+:\d+)")


def _essentials(report, limit=40):
    """The lines of a sanitizer report that say what, where and who, stack frames cut to
    function and source line (kernel signatures run to hundreds of characters)."""
    lines = [_FRAME.sub(r"\1\2 \3", line) for line in report.splitlines() if _KEEP.search(line)]
    return "\n".join(line[:240] for line in lines[:limit])


def sample_blocks(grid, max_blocks):
    """The blocks a launch of `grid` blocks runs: () for all of them, else `max_blocks`
    evenly spaced ones, the first and the last included."""
    if max_blocks is None or grid <= max_blocks:
        return ()
    if max_blocks < 2:
        raise ValueError(f"max_blocks must be at least 2 (the first and the last block), got {max_blocks}")
    return tuple(sorted({round(i * (grid - 1) / (max_blocks - 1)) for i in range(max_blocks)}))


def written_by_sampled_blocks(launches, geom, max_blocks):
    """What a run with `max_blocks` must write, from the plan: a boolean mask over
    geom.output_shape of the outputs the blocks that run own (`sample_blocks`; every output
    where no launch is sampled). A sampled launch of `sepconv_simt` owns a spatial tile of
    its image and one filter block (the kernel's `bid` split); one of `sepconv_tc` without
    channel splits owns BM consecutive positions of its position order, every filter. A
    sampled launch of any other kind, or in a sequence of several, has no mask here."""
    sampled = [(launch, sample_blocks(launch.grid, max_blocks)) for launch in launches]
    sampled = [(launch, blocks) for launch, blocks in sampled if blocks]
    if not sampled:
        return np.ones(geom.output_shape, bool)
    if len(launches) > 1:
        raise ValueError("sampled blocks of a launch sequence: no mask from the plan")
    ((launch, blocks),) = sampled
    n_img, (oh, ow), f = geom.batch, geom.out_size, geom.filters
    mask = np.zeros((n_img, oh, ow, f), bool)          # channels_last, 2D
    a = [int(v) for v in launch.scalars[:35]]
    if launch.kind == "simt":
        # scalars 19..23 (after x's four strides, C, H, W, M, F, OH, OW and the 8 of the
        # kernel, strides, dilation, padding): BF, tw_shift, tiles_w, tiles_img, FB
        bf, tw_shift, tiles_w, tiles_img, fb_count = a[19:24]
        tw = 1 << tw_shift
        th = TILE_ELEMS // bf // tw
        for bid in blocks:
            fb, tile = bid % fb_count, bid // fb_count
            n, t = divmod(tile, tiles_img)
            oh0, ow0 = (t // tiles_w) * th, (t % tiles_w) * tw
            mask[n, oh0:oh0 + th, ow0:ow0 + tw, fb * bf:(fb + 1) * bf] = True
    elif launch.kind == "tc" and a[27] == 0:
        # scalars 18 (BN), 27 (split_shift), 33 (band_h); MT is the template's last argument
        bn, band_h = a[18], a[33]
        bm = TC_TILE_ELEMS // 2 * int(launch.name.rstrip(">").split(",")[-1]) // bn
        order = []  # (n, oh, ow) of each position: per image, bands of band_h rows, a band
        for n in range(n_img):  # column by column (the kernel's tables)
            for top in range(0, oh, band_h):
                rows = np.arange(top, min(top + band_h, oh))
                cols = np.repeat(np.arange(ow), len(rows))
                order.append(np.stack([np.full(cols.size, n), np.tile(rows, ow), cols], 1))
        order = np.concatenate(order)
        for bid in blocks:
            n, r, c = order[bid * bm:(bid + 1) * bm].T
            mask[n, r, c, :] = True
    else:
        raise ValueError(f"sampled blocks of a {launch.kind!r} launch: no mask from the plan")
    if geom.channels_first:
        mask = np.moveaxis(mask, -1, 1)
    return mask.reshape(geom.output_shape)


def _extent(a):
    """[low, high): the bytes an array's elements span (any strides)."""
    low = high = a.__array_interface__["data"][0]
    if a.size == 0:
        return low, high
    for n, s in zip(a.shape, a.strides):
        if s < 0:
            low += s * (n - 1)
        else:
            high += s * (n - 1)
    return low, high + a.itemsize


def _check_disjoint(extents):
    for (_, high), (low, _) in zip(extents, extents[1:]):
        if low < high:
            raise ValueError("two arguments share part of their memory; pass the same array or "
                             "disjoint ones (the driver allocates each on its own)")
