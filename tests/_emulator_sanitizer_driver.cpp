// Standalone driver of the host emulator for ThreadSanitizer / AddressSanitizer builds
// (tests/_emulator_sanitizer.py writes the launches, builds and runs it). A sanitizer
// cannot be loaded into the Python process (TSan crashes there), hence an executable.
//
// Built from: tests/_cuda_emulator_runtime.h + the kernel source + this file + a table
// `emu_kernel_table` of the kernels it may launch (generated, appended after this file).
//
// Usage: driver LAUNCHES OUTPUT. LAUNCHES (little-endian, written by Python):
//   "SEPCSAN1" u32 arrays, then per array: u64 bytes, u64 lead, the bytes
//              u32 launches, then per launch: u32 name length, the name, u32 grid,
//              u32 block, u64 dynamic shared bytes, u32 blocks to run (0: all),
//              u32 each of those block indices, u32 args, then per argument:
//              u8 kind, then for 'a' (an array) u32 its index, u64 byte offset of the
//              pointer in it; for 'i' / 'u' / 'f' / 'b' (a scalar) u8 size, the bytes
// Every array is its own heap allocation of exactly `bytes` (`lead` bytes before it, kept
// poisoned, give it the caller's address modulo 64, so alignment-dependent code paths are
// the same): under AddressSanitizer an access past either end is reported. A scalar of
// another kind or size than its parameter is refused (exit status 2). OUTPUT: every
// array's bytes after the last launch, in order. Exit status 0, or the sanitizer's / the
// emulator's failure with a report on stderr naming the kernel, block and thread.
#include <pthread.h>

#include <fstream>
#include <string>

struct EmuKernelEntry {
    const char* name;
    void (*launch)(unsigned grid, unsigned block, std::size_t shared_bytes, void** args);
    std::string kinds;  // per parameter: emu_param_kind
    std::string sizes;  // per parameter: its size in bytes
};
extern const EmuKernelEntry emu_kernel_table[];
extern const std::size_t emu_kernel_count;

// 'a' pointer (an array), 'f' floating point, 'b' bool, 'i' signed, 'u' unsigned integer:
// the same codes as the launch file's (NumPy's dtype.kind).
template <typename P> constexpr char emu_param_kind() {
    using T = std::remove_cv_t<std::remove_reference_t<P>>;
    return std::is_pointer_v<T> ? 'a' : std::is_same_v<T, bool> ? 'b'
         : std::is_floating_point_v<T> ? 'f' : std::is_signed_v<T> ? 'i' : 'u';
}
template <typename... Args> std::string emu_param_kinds(void (*)(Args...)) {
    return {emu_param_kind<Args>()...};
}
template <typename... Args> std::string emu_param_sizes(void (*)(Args...)) {
    return {char(sizeof(std::remove_cv_t<std::remove_reference_t<Args>>))...};
}

struct EmuArray {
    unsigned char* base;  // the allocation: lead bytes, then the array
    std::uint64_t lead, bytes;
    unsigned char* data() const { return base + lead; }
};

// Where a sanitizer report comes from: the kernel of the current launch and its array
// arguments (index, array), and (thread-local, set when an emulated thread starts)
// whether this OS thread runs a CUDA thread.
static const char* emu_current_kernel = "(no launch yet)";
static std::vector<std::pair<std::size_t, EmuArray>> emu_current_arrays;
thread_local bool emu_is_cuda_thread = false;

static void emu_name_thread(unsigned t) {
    emu_is_cuda_thread = true;
    char name[16];  // Linux's limit; ThreadSanitizer prints it with every thread it names
    std::snprintf(name, sizeof name, "cuda thread %u", t);
    pthread_setname_np(pthread_self(), name);
}

static void emu_report_where(const char* check) {
    if (emu_is_cuda_thread)
        std::fprintf(stderr, "sepconv sanitizer %s: reported in kernel %s, block %u, thread "
                     "%u (warp %u, lane %u); the OS threads are named 'cuda thread N'\n", check,
                     emu_current_kernel, blockIdx.x, threadIdx.x, threadIdx.x / 32,
                     threadIdx.x % 32);
    else
        std::fprintf(stderr, "sepconv sanitizer %s: reported in the driver's own thread, during "
                     "or after kernel %s\n", check, emu_current_kernel);
}

#if defined(__SANITIZE_ADDRESS__)
extern "C" void* __asan_get_report_address();

// Which array argument of the launch the bad address is nearest to, and how far outside.
extern "C" void __asan_on_error() {
    emu_report_where("memcheck");
    const auto* bad = static_cast<const unsigned char*>(__asan_get_report_address());
    const std::pair<std::size_t, EmuArray>* nearest = nullptr;
    std::uint64_t distance = UINT64_MAX;
    for (const auto& arg : emu_current_arrays) {
        const unsigned char *begin = arg.second.data(), *end = begin + arg.second.bytes;
        const std::uint64_t d = bad < begin ? begin - bad : bad >= end ? bad - end + 1 : 0;
        if (d < distance) distance = d, nearest = &arg;
    }
    if (nearest && distance == 0)
        std::fprintf(stderr, "sepconv sanitizer memcheck: the address is inside argument %zu\n",
                     nearest->first);
    else if (nearest)
        std::fprintf(stderr, "sepconv sanitizer memcheck: the address is %llu bytes %s argument "
                     "%zu (an array of %llu bytes)\n",
                     (unsigned long long)(bad < nearest->second.data() ? distance : distance - 1),
                     bad < nearest->second.data() ? "before" : "past the end of", nearest->first,
                     (unsigned long long)nearest->second.bytes);
}
#endif
#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_on_report(const void*) { emu_report_where("racecheck"); }
#endif

[[noreturn]] static void emu_bad_input(const std::string& what) {
    std::fprintf(stderr, "sepconv sanitizer driver: %s\n", what.c_str());
    std::exit(2);
}

class EmuReader {
public:
    explicit EmuReader(const char* path) : in_(path, std::ios::binary) {
        if (!in_) emu_bad_input(std::string("cannot open ") + path);
    }
    template <typename T> T get() {
        T v;
        bytes(&v, sizeof v);
        return v;
    }
    void bytes(void* dst, std::size_t n) {
        if (n && !in_.read(static_cast<char*>(dst), std::streamsize(n)))
            emu_bad_input("the launch file ends early");
    }
    std::string text() {
        std::string s(get<std::uint32_t>(), '\0');
        bytes(s.data(), s.size());
        return s;
    }

private:
    std::ifstream in_;
};

static EmuArray emu_allocate(std::uint64_t lead, std::uint64_t bytes) {
    void* p = nullptr;
    if (posix_memalign(&p, 64, lead + bytes ? lead + bytes : 1))
        emu_bad_input("out of memory for an array of " + std::to_string(bytes) + " bytes");
#if defined(__SANITIZE_ADDRESS__)
    if (lead) __asan_poison_memory_region(p, lead);  // whole 8-byte granules only
#endif
    return {static_cast<unsigned char*>(p), lead, bytes};
}

// A copy of `bytes` in an allocation of exactly that size (never freed: the process ends
// after its launches, with LeakSanitizer off).
static void* emu_hold(const void* bytes, std::size_t n) {
    void* p = std::malloc(n);
    std::memcpy(p, bytes, n);
    return p;
}

int main(int argc, char** argv) {
    if (argc != 3) emu_bad_input("usage: driver LAUNCHES OUTPUT");
    emu_on_thread_start = emu_name_thread;
    EmuReader in(argv[1]);
    char magic[8];
    in.bytes(magic, sizeof magic);
    if (std::memcmp(magic, "SEPCSAN1", 8)) emu_bad_input("not a launch file");
    std::vector<EmuArray> arrays(in.get<std::uint32_t>());
    for (auto& a : arrays) {
        const auto bytes = in.get<std::uint64_t>();
        a = emu_allocate(in.get<std::uint64_t>(), bytes);
        in.bytes(a.data(), a.bytes);
    }
    const auto launches = in.get<std::uint32_t>();
    for (std::uint32_t l = 0; l < launches; ++l) {
        const std::string name = in.text();
        const auto grid = in.get<std::uint32_t>(), block = in.get<std::uint32_t>();
        const auto shared = in.get<std::uint64_t>();
        std::vector<unsigned> subset(in.get<std::uint32_t>());
        for (auto& b : subset) b = in.get<std::uint32_t>();
        const EmuKernelEntry* entry = nullptr;
        for (std::size_t k = 0; k < emu_kernel_count; ++k)
            if (name == emu_kernel_table[k].name) entry = &emu_kernel_table[k];
        if (!entry) emu_bad_input("kernel " + name + " is not in this build");
        std::vector<void*> args(in.get<std::uint32_t>());
        emu_current_arrays.clear();
        if (args.size() != entry->kinds.size())
            emu_bad_input(name + " takes " + std::to_string(entry->kinds.size()) +
                          " arguments, the launch has " + std::to_string(args.size()));
        for (std::size_t i = 0; i < args.size(); ++i) {
            const char kind = in.get<char>();
            if (kind != entry->kinds[i])
                emu_bad_input(name + ": argument " + std::to_string(i) + " is of kind '" + kind +
                              "', the parameter of kind '" + entry->kinds[i] + "'");
            if (kind == 'a') {
                const auto index = in.get<std::uint32_t>();
                const auto offset = in.get<std::uint64_t>();
                if (index >= arrays.size() || offset > arrays[index].bytes)
                    emu_bad_input(name + ": argument " + std::to_string(i) + " is no array");
                emu_current_arrays.emplace_back(i, arrays[index]);
                const void* pointer = arrays[index].data() + offset;
                args[i] = emu_hold(&pointer, sizeof pointer);
            } else {
                const auto size = in.get<std::uint8_t>();
                if (size != std::uint8_t(entry->sizes[i]))
                    emu_bad_input(name + ": argument " + std::to_string(i) + " has " +
                                  std::to_string(size) + " bytes, the parameter " +
                                  std::to_string(int(entry->sizes[i])));
                unsigned char value[255];
                in.bytes(value, size);
                args[i] = emu_hold(value, size);
            }
        }
        emu_current_kernel = entry->name;
        emu_block_subset = subset.empty() ? nullptr : &subset;
        entry->launch(grid, block, shared, args.data());
    }
    std::ofstream out(argv[2], std::ios::binary);
    for (const auto& a : arrays) out.write(reinterpret_cast<const char*>(a.data()), std::streamsize(a.bytes));
    if (!out) emu_bad_input(std::string("cannot write ") + argv[2]);
    return 0;
}
