// C++ CPU twins of the CUDA kernels in optim_cuda.cu: the same element math (optim_math.h) over
// contiguous buffers. They are the CPU path and the oracle of the GPU tier.
//
// Each op is an element loop (a "span") whose form (weight decay, lerp side, grad scale, base,
// reduction) is a template argument, so the loop carries no branch and vectorises; the loop is
// compiled per ISA (cpu_isa.h) and split over persistent helper threads (cpu_pool.h). Results do
// not depend on the thread count or the ISA: pieces are disjoint, and vector and scalar code run
// the same IEEE operations in the same order.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_isa.h"
#include "cpu_pool.h"
#include "optim.h"
#include "optim_math.h"

namespace dil_fast {
namespace {

void check_dtype(int dtype, const char* what) {
  if (dtype != kFloat32 && dtype != kFloat64)
    throw std::invalid_argument(std::string(what) + ": dtype code " + std::to_string(dtype) +
                                " is not supported; use float32 (0) or float64 (1).");
}

// f(std::true_type) or f(std::false_type): a run-time flag made a compile-time one.
template <typename F>
void bool_switch(bool flag, F&& f) {
  if (flag) f(std::true_type{});
  else f(std::false_type{});
}

// f(decay, lerp_from_m) with both as compile-time constants read from `c`.
template <typename T, typename F>
void adam_form_switch(const AdamCoef<T>& c, F&& f) {
  auto with_decay = [&](auto decay) { bool_switch(c.lerp_from_m, [&](auto lerp) { f(decay, lerp); }); };
  switch (c.decay_form) {
    case Decay::kNone: with_decay(std::integral_constant<Decay, Decay::kNone>{}); break;
    case Decay::kL2: with_decay(std::integral_constant<Decay, Decay::kL2>{}); break;
    case Decay::kDecoupled: with_decay(std::integral_constant<Decay, Decay::kDecoupled>{}); break;
  }
}

// Calls seg(row, col, len) for each row's part of the flat range [begin, end) of a [rows, cols]
// buffer.
template <typename F>
void for_row_segments(int64_t begin, int64_t end, int64_t cols, F&& seg) {
  while (begin < end) {
    const int64_t row = begin / cols, col = begin % cols;
    const int64_t len = std::min(end - begin, cols - col);
    seg(row, col, len);
    begin += len;
  }
}

// ---------------------------------------------------------------------------------------------
// Spans: run(args) is the element loop over n contiguous elements.

// Adam on one row segment: g = grad (or grad / grad_scale), then adam_update_form.
template <typename T, Decay kDecay, bool kLerpFromM, bool kScaled>
struct AdamSpan {
  struct Args {
    T* param;
    const T* grad;
    T* exp_avg;
    T* exp_avg_sq;
    int64_t n;
    AdamCoef<T> coef;
    T grad_scale;
  };
  static DF_ALWAYS_INLINE void loop(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v,
                                    int64_t n, const AdamCoef<T> c, const T scale) {
    for (int64_t i = 0; i < n; ++i) {
      T pi = p[i], mi = m[i], vi = v[i];
      const T gi = kScaled ? g[i] / scale : g[i];
      adam_update_form<T, kDecay, kLerpFromM>(pi, gi, mi, vi, c);
      p[i] = pi;
      m[i] = mi;
      v[i] = vi;
    }
  }
  static DF_ALWAYS_INLINE void run(const Args& a) {
    loop(a.param, a.grad, a.exp_avg, a.exp_avg_sq, a.n, a.coef, a.grad_scale);
  }
};

// How the meta gradient comes from the sources [rows, P]: mean_k(meta - sources[k]) (with or
// without sources[k] <- new meta afterwards) or mean_k(sources[k]).
enum class MetaGrad { kDiff, kDiffReset, kMean };

// The meta step on meta[0, n) (and the same columns of every source row): the gradient is reduced
// a block at a time into a small buffer (rows in order, as the CUDA kernel does), then updated.
template <typename T, Decay kDecay, bool kLerpFromM, MetaGrad kGrad>
struct MetaSpan {
  struct Args {
    T* meta;
    T* sources;
    T* exp_avg;
    T* exp_avg_sq;
    int64_t n, rows, row_stride;
    AdamCoef<T> coef;
  };
  static constexpr int64_t kBlock = 512;
  static constexpr bool kDiffGrad = kGrad != MetaGrad::kMean;

  static DF_ALWAYS_INLINE void first_row(T* __restrict grad, const T* __restrict meta, const T* __restrict src,
                                         int64_t len) {
    for (int64_t i = 0; i < len; ++i) grad[i] = kDiffGrad ? meta[i] - src[i] : src[i];
  }
  static DF_ALWAYS_INLINE void add_row(T* __restrict grad, const T* __restrict meta, const T* __restrict src,
                                       int64_t len) {
    for (int64_t i = 0; i < len; ++i) grad[i] = grad[i] + (kDiffGrad ? meta[i] - src[i] : src[i]);
  }
  static DF_ALWAYS_INLINE void divide(T* __restrict grad, const T rows, int64_t len) {
    for (int64_t i = 0; i < len; ++i) grad[i] = grad[i] / rows;
  }
  static DF_ALWAYS_INLINE void update(T* __restrict meta, const T* __restrict grad, T* __restrict m,
                                      T* __restrict v, int64_t len, const AdamCoef<T> c) {
    for (int64_t i = 0; i < len; ++i) {
      T p = meta[i], mi = m[i], vi = v[i];
      adam_update_form<T, kDecay, kLerpFromM>(p, grad[i], mi, vi, c);
      meta[i] = p;
      m[i] = mi;
      v[i] = vi;
    }
  }
  static DF_ALWAYS_INLINE void copy(T* __restrict dst, const T* __restrict src, int64_t len) {
    for (int64_t i = 0; i < len; ++i) dst[i] = src[i];
  }
  static DF_ALWAYS_INLINE void run(const Args& a) {
    T grad[kBlock];
    const T rows = static_cast<T>(a.rows);
    for (int64_t b = 0; b < a.n; b += kBlock) {
      const int64_t len = std::min(kBlock, a.n - b);
      T* meta = a.meta + b;
      T* src = a.sources + b;
      first_row(grad, meta, src, len);
      for (int64_t k = 1; k < a.rows; ++k) add_row(grad, meta, src + k * a.row_stride, len);
      if (a.rows > 1) divide(grad, rows, len);
      update(meta, grad, a.exp_avg + b, a.exp_avg_sq + b, len, a.coef);
      if (kGrad == MetaGrad::kDiffReset)
        for (int64_t k = 0; k < a.rows; ++k) copy(src + k * a.row_stride, meta, len);
    }
  }
};

// SGD on one row segment: p = x - lr * (g + wd * x), x = base (broadcast row) or p itself.
template <typename T, bool kHasWd, bool kHasBase>
struct SgdSpan {
  struct Args {
    T* param;
    const T* grad;
    const T* base;
    int64_t n;
    T neg_lr, wd;
  };
  static DF_ALWAYS_INLINE void loop(T* __restrict p, const T* __restrict g, const T* __restrict base, int64_t n,
                                    const T neg_lr, const T wd) {
    for (int64_t i = 0; i < n; ++i) p[i] = sgd_update<T>(kHasBase ? base[i] : p[i], g[i], neg_lr, wd, kHasWd);
  }
  static DF_ALWAYS_INLINE void run(const Args& a) { loop(a.param, a.grad, a.base, a.n, a.neg_lr, a.wd); }
};

// True when any of n values is NaN or infinite; looks a block at a time so a bad value stops it.
template <typename T>
struct NonfiniteSpan {
  struct Args {
    const T* data;
    int64_t n;
  };
  static constexpr int64_t kBlock = 4096;
  static DF_ALWAYS_INLINE bool block(const T* __restrict x, int64_t len) {
    int bad = 0;  // an int OR-reduction vectorises where a bool one may not
    for (int64_t i = 0; i < len; ++i) bad |= df_grad_ok(x[i]) ? 0 : 1;
    return bad != 0;
  }
  static DF_ALWAYS_INLINE bool run(const Args& a) {
    for (int64_t b = 0; b < a.n; b += kBlock)
      if (block(a.data + b, std::min(kBlock, a.n - b))) return true;
    return false;
  }
};

// ---------------------------------------------------------------------------------------------

template <typename T>
void adam_rows(const AdamArgs& a, int threads) {
  const float* found_inf = reinterpret_cast<const float*>(a.found_inf);
  if (flag_set(found_inf)) return;
  float* step = reinterpret_cast<float*>(a.step);
  const int64_t rows = a.rows, cols = a.cols;
  if (rows > 0 && cols > 0) {
    std::vector<AdamCoef<T>> coefs(rows);
    for (int64_t k = 0; k < rows; ++k) {
      const double s = static_cast<double>(step[a.step_numel == 1 ? 0 : k]) + 1.0;
      const double lr = load_scalar(reinterpret_cast<const void*>(a.lr), a.lr_dtype, a.lr_numel == 1 ? 0 : k);
      coefs[k] = adam_coef<T>(s, lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.adamw);
    }
    const float* grad_scale = reinterpret_cast<const float*>(a.grad_scale);
    const T scale = grad_scale ? static_cast<T>(*grad_scale) : T(1);
    T* p = reinterpret_cast<T*>(a.param);
    const T* g = reinterpret_cast<const T*>(a.grad);
    T* m = reinterpret_cast<T*>(a.exp_avg);
    T* v = reinterpret_cast<T*>(a.exp_avg_sq);
    // The form depends on beta1 and weight decay only, so every row shares it.
    adam_form_switch(coefs[0], [&](auto decay, auto lerp_from_m) {
      bool_switch(grad_scale != nullptr, [&](auto scaled) {
        using Span = AdamSpan<T, decltype(decay)::value, decltype(lerp_from_m)::value, decltype(scaled)::value>;
        const auto kernel = span_kernel<Span>();
        parallel_for(rows * cols, threads, [&](int64_t begin, int64_t end) {
          for_row_segments(begin, end, cols, [&](int64_t k, int64_t col, int64_t len) {
            const int64_t at = k * cols + col;
            kernel({p + at, g + at, m + at, v + at, len, coefs[k], scale});
          });
        });
      });
    });
  }
  for (int64_t i = 0; i < a.step_numel; ++i) step[i] += 1.0f;
}

template <typename T>
void meta_rows(const MetaArgs& ma, int threads) {
  const AdamArgs& a = ma.adam;
  const float* found_inf = reinterpret_cast<const float*>(a.found_inf);
  if (flag_set(found_inf)) {  // no update; the sources still restart from the (unchanged) meta
    if (ma.reset) {
      const T* meta_in = reinterpret_cast<const T*>(a.param);
      T* sources = reinterpret_cast<T*>(a.grad);
      for (int64_t k = 0; k < a.rows; ++k) std::copy(meta_in, meta_in + a.cols, sources + k * a.cols);
    }
    return;
  }
  float* step = reinterpret_cast<float*>(a.step);
  const double s = static_cast<double>(step[0]) + 1.0;
  const double lr = load_scalar(reinterpret_cast<const void*>(a.lr), a.lr_dtype, 0);
  const AdamCoef<T> c = adam_coef<T>(s, lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.adamw);
  T* meta = reinterpret_cast<T*>(a.param);
  T* src = reinterpret_cast<T*>(a.grad);
  T* m = reinterpret_cast<T*>(a.exp_avg);
  T* v = reinterpret_cast<T*>(a.exp_avg_sq);
  const int64_t rows = a.rows, cols = a.cols;
  const MetaGrad reduction = ma.mode == 1 ? MetaGrad::kMean : ma.reset ? MetaGrad::kDiffReset : MetaGrad::kDiff;
  auto with_reduction = [&](auto f) {
    switch (reduction) {
      case MetaGrad::kDiff: f(std::integral_constant<MetaGrad, MetaGrad::kDiff>{}); break;
      case MetaGrad::kDiffReset: f(std::integral_constant<MetaGrad, MetaGrad::kDiffReset>{}); break;
      case MetaGrad::kMean: f(std::integral_constant<MetaGrad, MetaGrad::kMean>{}); break;
    }
  };
  adam_form_switch(c, [&](auto decay, auto lerp_from_m) {
    with_reduction([&](auto grad_form) {
      using Span = MetaSpan<T, decltype(decay)::value, decltype(lerp_from_m)::value, decltype(grad_form)::value>;
      const auto kernel = span_kernel<Span>();
      parallel_for(cols, threads, [&](int64_t begin, int64_t end) {
        kernel({meta + begin, src + begin, m + begin, v + begin, end - begin, rows, cols, c});
      });
    });
  });
  for (int64_t i = 0; i < a.step_numel; ++i) step[i] += 1.0f;
}

template <typename T>
void sgd_rows(const SgdArgs& a, int threads) {
  if (flag_set(reinterpret_cast<const float*>(a.found_inf))) return;
  const int64_t rows = a.rows, cols = a.cols;
  if (rows == 0 || cols == 0) return;
  std::vector<T> neg_lr(rows);
  for (int64_t k = 0; k < rows; ++k)
    neg_lr[k] = static_cast<T>(-load_scalar(reinterpret_cast<const void*>(a.lr), a.lr_dtype, a.lr_numel == 1 ? 0 : k));
  const T wd = static_cast<T>(a.weight_decay);
  T* p = reinterpret_cast<T*>(a.param);
  const T* g = reinterpret_cast<const T*>(a.grad);
  const T* base = reinterpret_cast<const T*>(a.base);
  bool_switch(a.weight_decay != 0.0, [&](auto has_wd) {
    bool_switch(base != nullptr, [&](auto has_base) {
      using Span = SgdSpan<T, decltype(has_wd)::value, decltype(has_base)::value>;
      const auto kernel = span_kernel<Span>();
      parallel_for(rows * cols, threads, [&](int64_t begin, int64_t end) {
        for_row_segments(begin, end, cols, [&](int64_t k, int64_t col, int64_t len) {
          const int64_t at = k * cols + col;
          kernel({p + at, g + at, base ? base + col : nullptr, len, neg_lr[k], wd});
        });
      });
    });
  });
}

template <typename T>
void nonfinite_rows(int64_t n, uintptr_t data, uintptr_t found_inf) {
  if (span_kernel<NonfiniteSpan<T>>()({reinterpret_cast<const T*>(data), n}))
    *reinterpret_cast<float*>(found_inf) = 1.0f;
}

}  // namespace

void adam_cpu(const AdamArgs& a, int threads) {
  check_dtype(a.dtype, "adam");
  if (a.dtype == kFloat64) adam_rows<double>(a, threads);
  else adam_rows<float>(a, threads);
}

void meta_adam_cpu(const MetaArgs& a, int threads) {
  check_dtype(a.adam.dtype, "meta_adam");
  if (a.adam.dtype == kFloat64) meta_rows<double>(a, threads);
  else meta_rows<float>(a, threads);
}

void sgd_cpu(const SgdArgs& a, int threads) {
  check_dtype(a.dtype, "sgd");
  if (a.dtype == kFloat64) sgd_rows<double>(a, threads);
  else sgd_rows<float>(a, threads);
}

void nonfinite_cpu(int dtype, int64_t n, uintptr_t data, uintptr_t found_inf) {
  check_dtype(dtype, "nonfinite");
  if (dtype == kFloat64) nonfinite_rows<double>(n, data, found_inf);
  else nonfinite_rows<float>(n, data, found_inf);
}

}  // namespace dil_fast
