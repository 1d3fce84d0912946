// C++ CPU twins of the CUDA kernels in optim_cuda.cu: the same element math (optim_math.h), run
// over contiguous buffers on a few host threads. They are the CPU path and the oracle of the GPU
// tier.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "optim.h"
#include "optim_math.h"

namespace dil_fast {
namespace {

// Splits [0, n) into contiguous chunks; small problems stay on the calling thread.
template <typename F>
void parallel_for(int64_t n, int threads, F&& fn) {
  constexpr int64_t kMinChunk = 1 << 15;
  int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, n / kMinChunk));
  if (workers <= 1) {
    fn(int64_t(0), n);
    return;
  }
  const int64_t chunk = (n + workers - 1) / workers;
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (int64_t w = 1; w < workers; ++w) {
    const int64_t b = w * chunk, e = std::min(n, b + chunk);
    if (b < e) pool.emplace_back([&fn, b, e] { fn(b, e); });
  }
  fn(int64_t(0), std::min(n, chunk));
  for (auto& t : pool) t.join();
}

void check_dtype(int dtype, const char* what) {
  if (dtype != kFloat32 && dtype != kFloat64)
    throw std::invalid_argument(std::string(what) + ": dtype code " + std::to_string(dtype) +
                                " is not supported; use float32 (0) or float64 (1).");
}

template <typename T>
void adam_rows(const AdamArgs& a, int threads) {
  const float* found_inf = reinterpret_cast<const float*>(a.found_inf);
  if (flag_set(found_inf)) return;
  const float* grad_scale = reinterpret_cast<const float*>(a.grad_scale);
  float* step = reinterpret_cast<float*>(a.step);
  for (int64_t k = 0; k < a.rows; ++k) {
    const double s = static_cast<double>(step[a.step_numel == 1 ? 0 : k]) + 1.0;
    const double lr = load_scalar(reinterpret_cast<const void*>(a.lr), a.lr_dtype, a.lr_numel == 1 ? 0 : k);
    const AdamCoef<T> c = adam_coef<T>(s, lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.adamw);
    T* p = reinterpret_cast<T*>(a.param) + k * a.cols;
    const T* g = reinterpret_cast<const T*>(a.grad) + k * a.cols;
    T* m = reinterpret_cast<T*>(a.exp_avg) + k * a.cols;
    T* v = reinterpret_cast<T*>(a.exp_avg_sq) + k * a.cols;
    const bool scaled = grad_scale != nullptr;
    const T scale = scaled ? static_cast<T>(*grad_scale) : T(1);
    parallel_for(a.cols, threads, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const T gi = scaled ? g[i] / scale : g[i];
        adam_update<T>(p[i], gi, m[i], v[i], c);
      }
    });
  }
  for (int64_t i = 0; i < a.step_numel; ++i) step[i] += 1.0f;
}

template <typename T>
void meta_rows(const MetaArgs& ma, int threads) {
  const AdamArgs& a = ma.adam;
  const float* found_inf = reinterpret_cast<const float*>(a.found_inf);
  if (flag_set(found_inf)) return;
  float* step = reinterpret_cast<float*>(a.step);
  const double s = static_cast<double>(step[0]) + 1.0;
  const double lr = load_scalar(reinterpret_cast<const void*>(a.lr), a.lr_dtype, 0);
  const AdamCoef<T> c = adam_coef<T>(s, lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.adamw);
  T* meta = reinterpret_cast<T*>(a.param);
  T* src = reinterpret_cast<T*>(a.grad);
  T* m = reinterpret_cast<T*>(a.exp_avg);
  T* v = reinterpret_cast<T*>(a.exp_avg_sq);
  const int64_t K = a.rows, P = a.cols;
  const bool diff = ma.mode == 0;
  const T inv = T(K);
  parallel_for(P, threads, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T old = meta[i];
      T g = diff ? old - src[i] : src[i];
      for (int64_t k = 1; k < K; ++k) g = g + (diff ? old - src[k * P + i] : src[k * P + i]);
      if (K > 1) g = g / inv;
      T p = old;
      adam_update<T>(p, g, m[i], v[i], c);
      meta[i] = p;
      if (ma.reset)
        for (int64_t k = 0; k < K; ++k) src[k * P + i] = p;
    }
  });
  for (int64_t i = 0; i < a.step_numel; ++i) step[i] += 1.0f;
}

template <typename T>
void sgd_rows(const SgdArgs& a, int threads) {
  if (flag_set(reinterpret_cast<const float*>(a.found_inf))) return;
  const T wd = static_cast<T>(a.weight_decay);
  const bool has_wd = a.weight_decay != 0.0;
  for (int64_t k = 0; k < a.rows; ++k) {
    const double lr = load_scalar(reinterpret_cast<const void*>(a.lr), a.lr_dtype, a.lr_numel == 1 ? 0 : k);
    const T neg_lr = static_cast<T>(-lr);
    T* p = reinterpret_cast<T*>(a.param) + k * a.cols;
    const T* g = reinterpret_cast<const T*>(a.grad) + k * a.cols;
    const T* x = a.base ? reinterpret_cast<const T*>(a.base) : p;
    parallel_for(a.cols, threads, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p[i] = sgd_update<T>(x[i], g[i], neg_lr, wd, has_wd);
    });
  }
}

template <typename T>
void nonfinite_rows(int64_t n, uintptr_t data, uintptr_t found_inf) {
  const T* x = reinterpret_cast<const T*>(data);
  for (int64_t i = 0; i < n; ++i) {
    if (!df_isfinite(x[i])) {
      *reinterpret_cast<float*>(found_inf) = 1.0f;
      return;
    }
  }
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
