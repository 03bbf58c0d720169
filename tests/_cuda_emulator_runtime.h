// Host runtime of the CUDA emulator (tests/_cuda_host_emulator.py): the CUDA execution
// model and the PTX primitives of kernels/sepconv_ptx.cuh, for the host C++ compiler.
//
// - Every CUDA thread of a block is a fiber (its own stack, switched in user space), and one
//   OS thread runs them in turn; blocks of a launch run one after another. (With an OS
//   thread per CUDA thread the emulated kernel tests took 105 s instead of 8, most of it
//   in the operating system's scheduler.) Built with SEPCONV_EMU_OS_THREADS (the
//   sanitizer driver: ThreadSanitizer sees races between OS threads), every CUDA thread is
//   an OS thread instead.
// - Every collective (__syncthreads, __syncwarp, shuffles, mma, ldmatrix) is a barrier
//   that also checks all participants are at the same collective: a thread that skips one,
//   diverges or returns early aborts the process with a message naming the collective, the
//   block and the thread, instead of hanging. mma, ldmatrix and __syncthreads (PTX
//   .aligned instructions: every thread at the same instruction) are matched by call site,
//   shuffles and __syncwarp by kind (sm_70 and newer synchronize them across call sites): with fibers as soon as no thread can go on,
//   with OS threads after a timeout (SEPCONV_EMU_TIMEOUT, s). A fiber that runs that long
//   without reaching a collective or its end (an endless loop) aborts the same way.
// - Dynamic shared memory (`extern __shared__ ... smem_raw[]`, the only kind emulated) is
//   exactly the launch's bytes followed by a guard zone, all NaN bytes (0xFF) before every
//   block; a write into the guard aborts, a read past the end reads NaN.
// - cp.async fills its destination with NaN bytes at issue and copies at the
//   cp_async_wait that covers it, so a missing wait or barrier poisons the result; a block
//   that ends with copies never waited for aborts.
// - mma products are accumulated in double and rounded to float once, more exactly than
//   tensor cores, which truncate while accumulating: a GPU test's tolerance must allow
//   for that (tests/test_tensor_core_gpu.py derives it), not the emulated tests' bound.
// - Built with -fsanitize=alignment (tests/_cuda_host_emulator.py does; not-recoverable),
//   every access is checked for its type's alignment, as a GPU faults on a misaligned
//   float2 / float4 / uint4 / double2 where a CPU would not: UBSan names the source line
//   and the type, then `emu_on_death` the block and thread. cp.async checks its own.
// - Built with AddressSanitizer (the sanitizer driver, tests/_emulator_sanitizer.py), the
//   bytes past the launch's dynamic shared memory are poisoned instead of guarded, so an
//   access past the end fails at once, naming the thread.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>
#include <vector_functions.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <source_location>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
#if !SEPCONV_EMU_OS_THREADS
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#endif

#define SEPCONV_HOST_EMULATION 1

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
#define __maxnreg__(...)

struct EmuDim3 { unsigned x = 0, y = 1, z = 1; };
EmuDim3 blockDim, gridDim;

struct EmuCopy {  // an issued cp.async
    unsigned char* dst;
    const unsigned char* src;
    unsigned bytes;
    bool valid;
    unsigned group;  // index of the commit group it belongs to
};

// What each CUDA thread has of its own; `emu_self` is the running thread's.
struct EmuThread {
    EmuDim3 thread, block;              // threadIdx, blockIdx
    std::vector<EmuCopy> copies;        // cp.async issued, not yet performed
    unsigned groups_committed = 0;      // the open cp.async group has this index
};
#if SEPCONV_EMU_OS_THREADS
thread_local EmuThread* emu_self;
#else
static EmuThread* emu_self;  // set by the fiber scheduler at every switch
#endif
#define threadIdx (emu_self->thread)
#define blockIdx (emu_self->block)

[[noreturn]] static void emu_fail(const char* format, ...) {
    std::va_list args;
    va_start(args, format);
    std::fputs("sepconv host emulator: ", stderr);
    std::vfprintf(stderr, format, args);
    std::fputc('\n', stderr);
    va_end(args);
    std::fflush(stderr);
    std::abort();
}

#if SEPCONV_EMU_CHECK_ALIGNMENT
#include <sanitizer/common_interface_defs.h>

// UBSan's report (a misaligned access) names the source line; this adds the CUDA thread.
static void emu_on_death() {
    if (emu_self)
        std::fprintf(stderr, "sepconv host emulator: block %u, thread %u made the access "
                     "reported above (a GPU faults: misaligned address)\n", blockIdx.x,
                     threadIdx.x);
}
static const bool emu_death_callback_set =
    (__sanitizer_set_death_callback(emu_on_death), true);
#endif

// ---- dynamic shared memory ---------------------------------------------------------------
constexpr std::size_t EMU_SMEM_LIMIT = 227 * 1024;  // opt-in maximum of sm_90
constexpr std::size_t EMU_SMEM_GUARD = 4096;
alignas(16) unsigned char smem_raw[EMU_SMEM_LIMIT + EMU_SMEM_GUARD];
static std::size_t emu_smem_bytes;  // this launch's dynamic shared memory

static void emu_check_smem(const void* p, std::size_t bytes, std::size_t align, const char* what) {
    const auto* c = static_cast<const unsigned char*>(p);
    if (c < smem_raw || c + bytes > smem_raw + emu_smem_bytes)
        emu_fail("%s: block %u, thread %u: shared address %p (offset %td, %zu bytes) is outside "
                 "the launch's %zu bytes of dynamic shared memory", what, blockIdx.x, threadIdx.x,
                 p, c - smem_raw, bytes, emu_smem_bytes);
    if (reinterpret_cast<std::uintptr_t>(c) % align)
        emu_fail("%s: block %u, thread %u: shared offset %td is not %zu-byte aligned", what,
                 blockIdx.x, threadIdx.x, c - smem_raw, align);
}

static const double emu_timeout_s = [] {
    const char* s = std::getenv("SEPCONV_EMU_TIMEOUT");
    return s ? std::atof(s) : 10.0;
}();

// ---- fibers -------------------------------------------------------------------------------
#if !SEPCONV_EMU_OS_THREADS
class EmuBarrier;

struct EmuFiber {
    ucontext_t context;
    EmuThread state;
    EmuBarrier* parked_at = nullptr;  // the barrier it waits at, if any
    bool done = false;
};

static ucontext_t emu_scheduler;               // where a fiber goes when it parks or ends
static EmuFiber* emu_fiber;                    // the running one
static std::deque<EmuFiber*> emu_runnable;     // the scheduler's queue, run in order

// Parks the running fiber at `barrier` until another wakes it.
static void emu_park(EmuBarrier* barrier) {
    emu_fiber->parked_at = barrier;
    swapcontext(&emu_fiber->context, &emu_scheduler);
}

// A fiber is never pre-empted, so one looping without a collective would hang the process
// without a word: a watchdog thread aborts, naming it, when no fiber has switched for
// emu_timeout_s during a launch.
static std::atomic<std::uint64_t> emu_switches{0};
static std::atomic<bool> emu_launching{false};

static void emu_start_watchdog() {
    static std::once_flag once;
    std::call_once(once, [] {
        std::thread([] {
            std::uint64_t seen = 0;
            auto since = std::chrono::steady_clock::now();
            for (;;) {
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
                const auto now = std::chrono::steady_clock::now();
                const std::uint64_t switches = emu_switches.load();
                if (!emu_launching.load() || switches != seen) {
                    seen = switches;
                    since = now;
                } else if (std::chrono::duration<double>(now - since).count() > emu_timeout_s) {
                    emu_fail("block %u, thread %u ran %g s without reaching a collective or the "
                             "end of the kernel (an endless loop?)", blockIdx.x, threadIdx.x,
                             emu_timeout_s);
                }
            }
        }).detach();
    });
}

static void emu_wake(std::vector<EmuFiber*>& parked) {
    for (EmuFiber* f : parked) {
        f->parked_at = nullptr;
        emu_runnable.push_back(f);
    }
    parked.clear();
}
#endif

// ---- barriers -----------------------------------------------------------------------------
static const char EMU_KERNEL_END[] = "the end of the kernel";

// Where a collective was called; file null: matched by kind only.
struct EmuSite {
    const char* file = nullptr;
    unsigned line = 0;
    EmuSite() = default;
    EmuSite(const std::source_location& s) : file(s.file_name()), line(s.line()) {}
    bool operator==(const EmuSite& o) const {
        return line == o.line && (file == o.file || (file && o.file && !std::strcmp(file, o.file)));
    }
};

// "mma_f16_m16n8k16 at kernels/sepconv_tc.cu:212", or the kind alone.
static std::string emu_where(const char* what, const EmuSite& site) {
    std::string s = what;
    if (site.file) s += std::string(" at ") + site.file + ":" + std::to_string(site.line);
    return s;
}

class EmuBarrier {
public:
    EmuBarrier(unsigned count, const char* group) : count_(count), group_(group) {}

    // Waits for all `count` threads, which must all be at the collective `what` (and at
    // the same call site, where one is given).
    void wait(const char* what, EmuSite site = {}) {
#if SEPCONV_EMU_OS_THREADS
        std::unique_lock<std::mutex> lock(mutex_);
#endif
        if (arrived_ == 0) {
            what_ = what;
            site_ = site;
            first_ = threadIdx.x;
        } else if (std::strcmp(what_, what) != 0 || !(site_ == site)) {
            emu_fail("block %u: thread %u reached %s while thread %u of its %s waits at %s "
                     "(part of the %s skipped a collective, diverged or returned early)",
                     blockIdx.x, threadIdx.x, emu_where(what, site).c_str(), first_, group_,
                     emu_where(what_, site_).c_str(), group_);
        }
#if SEPCONV_EMU_OS_THREADS
        const std::uint64_t generation = generation_;
        if (++arrived_ == count_) {
            arrived_ = 0;
            ++generation_;
            cv_.notify_all();
            return;
        }
        const auto timeout = std::chrono::duration<double>(emu_timeout_s);
        if (!cv_.wait_for(lock, timeout, [&] { return generation_ != generation; }))
            emu_fail("block %u, thread %u: %s timed out after %g s: %u of the %u threads of "
                     "its %s arrived (the others skipped it, diverged or returned early)",
                     blockIdx.x, threadIdx.x, what, emu_timeout_s, arrived_, count_, group_);
#else
        if (++arrived_ == count_) {  // the last one goes on and wakes the others
            arrived_ = 0;
            emu_wake(parked_);
            return;
        }
        parked_.push_back(emu_fiber);
        emu_park(this);
#endif
    }

    // Called for a thread parked here when no thread of the block can go on.
    [[noreturn]] void stuck(unsigned thread, unsigned block) const {
        emu_fail("block %u, thread %u: no thread can go on: %u of the %u threads of its %s wait "
                 "at %s, the others finished or wait at another collective (part of the %s "
                 "skipped a collective, diverged or returned early)",
                 block, thread, arrived_, count_, group_, emu_where(what_, site_).c_str(), group_);
    }

private:
#if SEPCONV_EMU_OS_THREADS
    std::mutex mutex_;
    std::condition_variable cv_;
    std::uint64_t generation_ = 0;
#else
    std::vector<EmuFiber*> parked_;
#endif
    const unsigned count_;
    const char* const group_;
    unsigned arrived_ = 0, first_ = 0;
    const char* what_ = "";
    EmuSite site_;
};

static EmuBarrier* emu_block_barrier;
static EmuBarrier* emu_warp_barrier[32];

inline unsigned emu_lane() { return threadIdx.x & 31u; }
inline unsigned emu_warp() { return threadIdx.x >> 5; }
inline void emu_warp_sync(const char* what, EmuSite site = {}) {
    emu_warp_barrier[emu_warp()]->wait(what, site);
}

inline void __syncthreads(std::source_location site = std::source_location::current()) {
    emu_block_barrier->wait("__syncthreads", site);
}

static void emu_full_mask(unsigned mask, const char* what) {
    if (mask != 0xffffffffu)
        emu_fail("%s: block %u, thread %u: mask %#x; only full-warp masks are emulated", what,
                 blockIdx.x, threadIdx.x, mask);
}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu_full_mask(mask, "__syncwarp");
    emu_warp_sync("__syncwarp");
}

// ---- warp shuffles ------------------------------------------------------------------------
static std::uint64_t emu_shfl_slot[1024];

// `source(lane, width)`: the lane whose value this lane receives.
template <typename T, typename Source>
T emu_shuffle(const char* what, unsigned mask, T v, int width, Source source) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    emu_full_mask(mask, what);
    if (width < 1 || width > 32 || (width & (width - 1)))
        emu_fail("%s: block %u, thread %u: width %d is not a power of 2 up to 32", what,
                 blockIdx.x, threadIdx.x, width);
    const unsigned t = threadIdx.x;
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    emu_shfl_slot[t] = bits;
    emu_warp_sync(what);
    bits = emu_shfl_slot[(t & ~31u) | source(t & 31u, unsigned(width))];
    emu_warp_sync(what);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

template <typename T> T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    return emu_shuffle("__shfl_sync", mask, v, width, [=](unsigned l, unsigned w) {
        return (l & ~(w - 1)) + (unsigned(src_lane) & (w - 1));
    });
}
template <typename T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return emu_shuffle("__shfl_xor_sync", mask, v, width, [=](unsigned l, unsigned w) {
        const unsigned s = l ^ unsigned(lane_mask);  // a later group returns its own value
        return s >= (l & ~(w - 1)) + w ? l : s;
    });
}
template <typename T> T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return emu_shuffle("__shfl_down_sync", mask, v, width, [=](unsigned l, unsigned w) {
        return (l & (w - 1)) + delta < w ? l + delta : l;
    });
}
template <typename T> T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return emu_shuffle("__shfl_up_sync", mask, v, width, [=](unsigned l, unsigned w) {
        return (l & (w - 1)) >= delta ? l - delta : l;
    });
}

inline float emu_int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline double emu_longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }
#define __int_as_float emu_int_as_float
#define __longlong_as_double emu_longlong_as_double
using std::min;
using std::max;

// ---- PTX primitives of kernels/sepconv_ptx.cuh ----------------------------------------------
namespace sepconv {

namespace emu {

struct MmaSlot { unsigned a[32][4], b[32][2]; };
static MmaSlot mma_slot[32];
static const void* ldsm_slot[32][32];

inline double half_bits(unsigned bits) {
    __half_raw raw;
    raw.x = static_cast<unsigned short>(bits & 0xffffu);
    return __half2float(__half(raw));
}

inline double bf16_bits(unsigned bits) {
    bits = (bits & 0xffffu) << 16;   // bfloat16: the top half of a float
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline double tf32_bits(unsigned bits) {
    bits &= 0xffffe000u;  // the tensor core reads the top 19 bits
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// d += A * B for one m16n8kK shape: every lane publishes its fragments, then computes its
// own 4 accumulators from the matrices assembled with the PTX fragment layouts.
template <int K, typename Scatter>
void mma(const char* what, EmuSite site, float (&d)[4], const unsigned (&a)[4],
         const unsigned (&b)[2], Scatter scatter) {
    MmaSlot& slot = mma_slot[emu_warp()];
    const unsigned lane = emu_lane();
    std::copy(a, a + 4, slot.a[lane]);
    std::copy(b, b + 2, slot.b[lane]);
    emu_warp_sync(what, site);
    double A[16][K], B[K][8];
    for (unsigned l = 0; l < 32; ++l) scatter(slot, l, l >> 2, l & 3u, A, B);
    emu_warp_sync(what, site);
    const unsigned g = lane >> 2, q = lane & 3u;
    for (unsigned e = 0; e < 4; ++e) {
        const unsigned row = g + 8 * (e >> 1), col = 2 * q + (e & 1);
        double acc = d[e];
        for (int k = 0; k < K; ++k) acc += A[row][k] * B[k][col];
        d[e] = static_cast<float>(acc);
    }
}

template <int N> void ldsm(const char* what, bool trans, unsigned (&r)[N], const void* row,
                          EmuSite site = {}) {
    const unsigned lane = emu_lane();
    if (lane < 8 * N) emu_check_smem(row, 16, 16, what);
    ldsm_slot[emu_warp()][lane] = row;
    emu_warp_sync(what, site);
    const void* const* rows = ldsm_slot[emu_warp()];
    auto element = [&](unsigned matrix, unsigned i, unsigned j) {  // M_matrix[i][j], b16
        std::uint16_t v;
        std::memcpy(&v, static_cast<const unsigned char*>(rows[8 * matrix + i]) + 2 * j, 2);
        return unsigned(v);
    };
    const unsigned i = lane >> 2, j = 2 * (lane & 3u);
    for (unsigned m = 0; m < N; ++m)
        r[m] = trans ? element(m, j, i) | element(m, j + 1, i) << 16
                     : element(m, i, j) | element(m, i, j + 1) << 16;
    emu_warp_sync(what, site);
}

inline void cp_async(const char* what, void* smem_dst, const void* gmem_src, unsigned bytes,
                     bool valid) {
    emu_check_smem(smem_dst, bytes, bytes, what);
    if (gmem_src == nullptr || reinterpret_cast<std::uintptr_t>(gmem_src) % bytes)
        emu_fail("%s: block %u, thread %u: global source %p is null or not %u-byte aligned", what,
                 blockIdx.x, threadIdx.x, gmem_src, bytes);
    auto* dst = static_cast<unsigned char*>(smem_dst);
    std::memset(dst, 0xff, bytes);  // NaN until a wait covers the copy
    emu_self->copies.push_back({dst, static_cast<const unsigned char*>(gmem_src), bytes, valid,
                                emu_self->groups_committed});
}

// Performs the copies of every committed group except the `pending` most recent ones.
inline void cp_async_complete(unsigned pending) {
    if (emu_self->groups_committed < pending) return;
    const unsigned limit = emu_self->groups_committed - pending;
    auto done = [&](const EmuCopy& c) {
        if (c.group >= limit) return false;
        if (c.valid) std::memcpy(c.dst, c.src, c.bytes);
        else std::memset(c.dst, 0, c.bytes);
        return true;
    };
    auto& copies = emu_self->copies;
    copies.erase(std::remove_if(copies.begin(), copies.end(), done), copies.end());
}

// mma.m16n8k16 with 16-bit operands: f16 and bf16 share the fragment layouts; `Bits`
// gives an element's value from its 16 bits.
template <double (*Bits)(unsigned)>
void mma_m16n8k16(const char* what, EmuSite site, float (&d)[4], const unsigned (&a)[4],
                  const unsigned (&b)[2]) {
    mma<16>(what, site, d, a, b, [](const MmaSlot& s, unsigned l, unsigned g, unsigned q,
                              double (&A)[16][16], double (&B)[16][8]) {
        for (unsigned e = 0; e < 8; ++e)
            A[g + 8 * ((e >> 1) & 1)][2 * q + (e & 1) + 8 * (e >> 2)] =
                Bits(s.a[l][e >> 1] >> (16 * (e & 1)));
        for (unsigned e = 0; e < 4; ++e)
            B[2 * q + (e & 1) + 8 * (e >> 1)][g] = Bits(s.b[l][e >> 1] >> (16 * (e & 1)));
    });
}

}  // namespace emu

// The call site: a default argument, so kernels call these as they call the PTX wrappers.
using EmuHere = std::source_location;

inline void mma_f16_m16n8k16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                             EmuHere site = EmuHere::current()) {
    emu::mma_m16n8k16<emu::half_bits>("mma_f16_m16n8k16", site, d, a, b);
}

inline void mma_bf16_m16n8k16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                              EmuHere site = EmuHere::current()) {
    emu::mma_m16n8k16<emu::bf16_bits>("mma_bf16_m16n8k16", site, d, a, b);
}

inline void mma_tf32_m16n8k8(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                             EmuHere site = EmuHere::current()) {
    emu::mma<8>("mma_tf32_m16n8k8", site, d, a, b,
                [](const emu::MmaSlot& s, unsigned l, unsigned g, unsigned q, double (&A)[16][8],
                   double (&B)[8][8]) {
        for (unsigned e = 0; e < 4; ++e)
            A[g + 8 * (e & 1)][q + 4 * (e >> 1)] = emu::tf32_bits(s.a[l][e]);
        for (unsigned e = 0; e < 2; ++e) B[q + 4 * e][g] = emu::tf32_bits(s.b[l][e]);
    });
}

inline void ldsm_x4(unsigned (&r)[4], const void* p, EmuHere site = EmuHere::current()) {
    emu::ldsm("ldsm_x4", false, r, p, site);
}

inline void cp_async16(void* dst, const void* src, bool valid) {
    emu::cp_async("cp_async16", dst, src, 16, valid);
}
inline void cp_async_commit() { ++emu_self->groups_committed; }
template <int N> void cp_async_wait() { emu::cp_async_complete(N); }
inline void cp_async_wait_all() {
    cp_async_commit();
    emu::cp_async_complete(0);
}

// Round to nearest, ties away from zero, to tf32's 10 mantissa bits (cvt.rna.tf32.f32).
inline unsigned cvt_tf32(float v) {
    unsigned bits;
    std::memcpy(&bits, &v, 4);
    if ((bits & 0x7f800000u) == 0x7f800000u)  // inf stays inf, NaN stays (quiet) NaN
        return (bits & 0x007fffffu) ? 0x7fffffffu : bits;
    return (bits + 0x1000u) & 0xffffe000u;  // + half an ulp on the magnitude, truncate
}

}  // namespace sepconv

// ---- launches -----------------------------------------------------------------------------
template <typename... Args, std::size_t... I>
static void emu_call(void (*k)(Args...), void** a, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<Args>>*>(a[I])...);
}

#if defined(__SANITIZE_ADDRESS__)
extern "C" void __asan_poison_memory_region(void const volatile*, std::size_t);
extern "C" void __asan_unpoison_memory_region(void const volatile*, std::size_t);

static void emu_poison_smem() {
    __asan_unpoison_memory_region(smem_raw, sizeof smem_raw);
    std::memset(smem_raw, 0xff, emu_smem_bytes);
    __asan_poison_memory_region(smem_raw + emu_smem_bytes, sizeof smem_raw - emu_smem_bytes);
}

static void emu_check_guard() {}  // the poisoned guard: AddressSanitizer reports the write
#else
static void emu_poison_smem() { std::memset(smem_raw, 0xff, emu_smem_bytes + EMU_SMEM_GUARD); }

static void emu_check_guard() {
    for (std::size_t i = emu_smem_bytes; i < emu_smem_bytes + EMU_SMEM_GUARD; ++i)
        if (smem_raw[i] != 0xff)
            emu_fail("block %u wrote past its %zu bytes of dynamic shared memory (at byte %zu)",
                     blockIdx.x, emu_smem_bytes, i);
}
#endif

// Called as CUDA thread t starts (once a launch). Built with SEPCONV_EMU_OS_THREADS, the
// sanitizer driver names the OS thread that runs it, so that ThreadSanitizer's reports
// say which CUDA thread it was.
static void (*emu_on_thread_start)(unsigned thread) = nullptr;
// When set, a launch runs only these blocks, in this order (the sanitizer driver samples
// the blocks of large grids); by default every block, in order.
static const std::vector<unsigned>* emu_block_subset = nullptr;

// Runs body(t) as CUDA thread t, for t in [0, count), until every one has returned.
#if SEPCONV_EMU_OS_THREADS
template <typename Body> static void emu_run_threads(unsigned count, const Body& body) {
    std::vector<EmuThread> states(count);
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < count; ++t)
        threads.emplace_back([&, t] {
            emu_self = &states[t];
            body(t);
        });
    for (auto& th : threads) th.join();
}
#else
constexpr std::size_t EMU_FIBER_STACK = 256 * 1024;  // mapped lazily: only what is touched

// Fiber t's stack, kept for later launches, below a guard page (an overflow faults).
static char* emu_fiber_stack(unsigned t) {
    static std::vector<char*> stacks;
    static const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
    while (stacks.size() <= t) {
        void* p = mmap(nullptr, page + EMU_FIBER_STACK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED || mprotect(p, page, PROT_NONE) != 0)
            emu_fail("cannot map a fiber stack of %zu bytes", EMU_FIBER_STACK);
        stacks.push_back(static_cast<char*>(p) + page);
    }
    return stacks[t];
}

static const std::function<void(unsigned)>* emu_fiber_body;

static void emu_fiber_main() {
    (*emu_fiber_body)(emu_fiber->state.thread.x);
    emu_fiber->done = true;  // back to the scheduler (uc_link)
}

template <typename Body> static void emu_run_threads(unsigned count, const Body& body) {
    const std::function<void(unsigned)> fn = body;
    emu_fiber_body = &fn;
    std::unique_ptr<EmuFiber[]> fibers(new EmuFiber[count]);
    emu_runnable.clear();
    for (unsigned t = 0; t < count; ++t) {
        EmuFiber& f = fibers[t];
        f.state.thread.x = t;
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = emu_fiber_stack(t);
        f.context.uc_stack.ss_size = EMU_FIBER_STACK;
        f.context.uc_link = &emu_scheduler;
        makecontext(&f.context, emu_fiber_main, 0);
        emu_runnable.push_back(&f);
    }
    // Round robin: each runs until it parks at a collective or ends; the last to arrive
    // at a barrier queues the others again.
    emu_start_watchdog();
    emu_launching = true;
    while (!emu_runnable.empty()) {
        emu_fiber = emu_runnable.front();
        emu_runnable.pop_front();
        emu_self = &emu_fiber->state;
        emu_switches.fetch_add(1, std::memory_order_relaxed);
        swapcontext(&emu_scheduler, &emu_fiber->context);
    }
    emu_launching = false;
    emu_fiber = nullptr;
    emu_self = nullptr;   // the fibers' states go with this launch
    for (unsigned t = 0; t < count; ++t)
        if (!fibers[t].done)
            fibers[t].parked_at->stuck(t, fibers[t].state.block.x);
}
#endif

template <typename... Args>
static void emu_launch(void (*k)(Args...), unsigned grid, unsigned block, std::size_t shared_bytes,
                       void** args) {
    if (block == 0 || block > 1024 || block % 32)
        emu_fail("block of %u threads: the emulator runs whole warps, at most 1024 threads", block);
    if (shared_bytes > EMU_SMEM_LIMIT)
        emu_fail("%zu bytes of dynamic shared memory exceed %zu", shared_bytes, EMU_SMEM_LIMIT);
    gridDim.x = grid;
    blockDim.x = block;
    emu_smem_bytes = shared_bytes;
    EmuBarrier bar(block, "block");
    emu_block_barrier = &bar;
    std::vector<std::unique_ptr<EmuBarrier>> warps;
    for (unsigned w = 0; w < block / 32; ++w) {
        warps.emplace_back(new EmuBarrier(32, "warp"));
        emu_warp_barrier[w] = warps.back().get();
    }
    emu_poison_smem();
    const std::vector<unsigned>* subset = emu_block_subset;
    for (std::size_t i = 0; subset && i < subset->size(); ++i)
        if ((*subset)[i] >= grid) emu_fail("block %u of a grid of %u", (*subset)[i], grid);
    const std::size_t blocks = subset ? subset->size() : grid;
    emu_run_threads(block, [&](unsigned t) {
        threadIdx.x = t;
        if (emu_on_thread_start) emu_on_thread_start(t);
        for (std::size_t i = 0; i < blocks; ++i) {
            const unsigned b = subset ? (*subset)[i] : unsigned(i);
            blockIdx.x = b;
            emu_self->copies.clear();
            emu_self->groups_committed = 0;
            bar.wait("the start of a block");
            emu_call(k, args, std::index_sequence_for<Args...>{});
            if (!emu_self->copies.empty())
                emu_fail("block %u, thread %u ended with %zu cp.async copies never waited for",
                         b, t, emu_self->copies.size());
            emu_warp_sync(EMU_KERNEL_END);
            bar.wait(EMU_KERNEL_END);
            if (t == 0) {  // the others wait at the next block's start
                emu_check_guard();
                emu_poison_smem();
            }
        }
    });
}
