// Per-ISA code selection for the CPU twins, portable across wheels (no -march in the build).
//
// An element loop is written once, as the always-inline `run` of a "span" struct, and compiled
// in the same file for the wheel's baseline ISA (x86-64: SSE2; aarch64: NEON) and, on x86-64,
// once more for AVX2 through a function target attribute. The ISA is picked once per process
// from CPUID, or forced with set_cpu_isa (DIL_FAST_CPU_ISA=generic|avx2, read by dil_fast.backends;
// auto by default). With FMA
// contraction off (build_ext_support.py) every ISA gives the same bits.
#pragma once

#include <stdexcept>
#include <string>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define DF_HAVE_AVX2 1
#define DF_TARGET_AVX2 __attribute__((target("avx2")))
#else
#define DF_HAVE_AVX2 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DF_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define DF_ALWAYS_INLINE inline
#endif

namespace dil_fast {

enum class CpuIsa { kGeneric, kAvx2 };

inline bool cpu_has_avx2() {
#if DF_HAVE_AVX2
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");  // also checks that the OS saves the YMM registers
#else
  return false;
#endif
}

// The ISA of this process: the best this CPU runs, unless set_cpu_isa() chose another (dil_fast's
// Python side passes DIL_FAST_CPU_ISA here once, when it loads the module).
inline CpuIsa& cpu_isa_slot() {
  static CpuIsa isa = cpu_has_avx2() ? CpuIsa::kAvx2 : CpuIsa::kGeneric;
  return isa;
}

inline CpuIsa cpu_isa() { return cpu_isa_slot(); }

inline const char* cpu_isa_name() { return cpu_isa() == CpuIsa::kAvx2 ? "avx2" : "generic"; }

// "auto", "generic" or "avx2"; anything else, or avx2 on a CPU without it, raises.
inline void set_cpu_isa(const std::string& want) {
  if (want.empty() || want == "auto") {
    cpu_isa_slot() = cpu_has_avx2() ? CpuIsa::kAvx2 : CpuIsa::kGeneric;
  } else if (want == "generic") {
    cpu_isa_slot() = CpuIsa::kGeneric;
  } else if (want == "avx2") {
    if (!cpu_has_avx2())
      throw std::invalid_argument("DIL_FAST_CPU_ISA=avx2, but this CPU (or this build) has no AVX2; "
                                  "use auto or generic.");
    cpu_isa_slot() = CpuIsa::kAvx2;
  } else {
    throw std::invalid_argument("DIL_FAST_CPU_ISA=" + want + " is not an ISA of the CPU twins; use auto, "
                                "generic or avx2.");
  }
}

template <class Span>
auto span_generic(const typename Span::Args& a) -> decltype(Span::run(a)) {
  return Span::run(a);
}

#if DF_HAVE_AVX2
template <class Span>
DF_TARGET_AVX2 auto span_avx2(const typename Span::Args& a) -> decltype(Span::run(a)) {
  return Span::run(a);
}
#endif

// Span::run compiled for the ISA of this process.
template <class Span>
auto span_kernel() -> decltype(&span_generic<Span>) {
#if DF_HAVE_AVX2
  if (cpu_isa() == CpuIsa::kAvx2) return &span_avx2<Span>;
#endif
  return &span_generic<Span>;
}

}  // namespace dil_fast
