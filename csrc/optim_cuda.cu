// CUDA kernels of the native core: flat-buffer Adam/AdamW (K-stacked), the fused meta step, SGD
// and the non-finite check. Bandwidth-bound: 16-byte vector loads when every buffer allows it,
// grid-stride loops, one launch per op plus a one-thread launch that advances the step counters
// after the update (stream order makes it safe and keeps the whole step capturable in a graph).
// Every CUDA call and every launch is checked; errors become std::runtime_error.
#include <cuda_runtime.h>

#include <algorithm>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "optim.h"
#include "optim_math.h"

#ifndef DF_CUDA_ARCHS
#define DF_CUDA_ARCHS ""
#endif

namespace dil_fast {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::ostringstream os;
    os << "dil_fast._C: " << what << " failed: " << cudaGetErrorName(err) << " ("
       << cudaGetErrorString(err) << ")";
    throw std::runtime_error(os.str());
  }
}
#define DF_CHECK(call) check((call), #call)
#define DF_CHECK_LAUNCH(name) check(cudaGetLastError(), "launch of " name)

// Makes `device` current for the scope of a launch and restores the caller's device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    DF_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) DF_CHECK(cudaSetDevice(device));
    changed_ = prev_ != device;
  }
  ~DeviceGuard() {
    if (changed_) (void)cudaSetDevice(prev_);  // best effort in a destructor; the launch was checked
  }

 private:
  int prev_ = 0;
  bool changed_ = false;
};

constexpr int kThreads = 256;

template <typename T>
struct alignas(16) Pack {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

inline bool aligned16(uintptr_t p) { return p % 16 == 0; }

inline unsigned grid_for(int64_t n, int per_thread) {
  const int64_t per_block = int64_t(kThreads) * per_thread;
  const int64_t blocks = std::max<int64_t>(1, (n + per_block - 1) / per_block);
  return static_cast<unsigned>(std::min<int64_t>(blocks, int64_t(1) << 20));
}

void check_rows(int64_t rows, const char* what) {
  if (rows > 65535)
    throw std::invalid_argument(std::string(what) + ": at most 65535 stacked rows are supported per launch, got " +
                                std::to_string(rows) + ".");
}

// ---------------------------------------------------------------------------------------------
template <typename T, bool VEC>
__global__ void adam_kernel(AdamArgs a) {
  const float* found_inf = reinterpret_cast<const float*>(a.found_inf);
  if (flag_set(found_inf)) return;
  const int64_t k = blockIdx.y;
  // One thread per block forms the coefficients (two double pow calls), the block shares them.
  __shared__ AdamCoef<T> coef;
  if (threadIdx.x == 0) {
    const float* step = reinterpret_cast<const float*>(a.step);
    const double s = static_cast<double>(step[a.step_numel == 1 ? 0 : k]) + 1.0;
    const double lr = load_scalar(reinterpret_cast<const void*>(a.lr), a.lr_dtype, a.lr_numel == 1 ? 0 : k);
    coef = adam_coef<T>(s, lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.adamw);
  }
  __syncthreads();
  const AdamCoef<T> c = coef;
  const float* gs = reinterpret_cast<const float*>(a.grad_scale);
  const bool scaled = gs != nullptr;
  const T scale = scaled ? static_cast<T>(*gs) : T(1);
  T* p = reinterpret_cast<T*>(a.param) + k * a.cols;
  const T* g = reinterpret_cast<const T*>(a.grad) + k * a.cols;
  T* m = reinterpret_cast<T*>(a.exp_avg) + k * a.cols;
  T* v = reinterpret_cast<T*>(a.exp_avg_sq) + k * a.cols;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (VEC) {
    using V = Pack<T>;
    const int64_t nv = a.cols / V::N;
    for (int64_t j = tid; j < nv; j += stride) {
      V pp = reinterpret_cast<V*>(p)[j];
      V gg = reinterpret_cast<const V*>(g)[j];
      V mm = reinterpret_cast<V*>(m)[j];
      V vv = reinterpret_cast<V*>(v)[j];
#pragma unroll
      for (int e = 0; e < V::N; ++e) {
        const T gi = scaled ? gg.v[e] / scale : gg.v[e];
        adam_update<T>(pp.v[e], gi, mm.v[e], vv.v[e], c);
      }
      reinterpret_cast<V*>(p)[j] = pp;
      reinterpret_cast<V*>(m)[j] = mm;
      reinterpret_cast<V*>(v)[j] = vv;
    }
  } else {
    for (int64_t i = tid; i < a.cols; i += stride) {
      T pi = p[i], mi = m[i], vi = v[i];
      const T gi = scaled ? g[i] / scale : g[i];
      adam_update<T>(pi, gi, mi, vi, c);
      p[i] = pi;
      m[i] = mi;
      v[i] = vi;
    }
  }
}

// Advances the step counters once the update kernel has read them (same stream, so ordered).
__global__ void advance_steps_kernel(float* step, int64_t n, const float* found_inf) {
  if (flag_set(found_inf)) return;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    step[i] += 1.0f;
}

template <typename T, bool VEC>
__global__ void meta_adam_kernel(MetaArgs ma) {
  const AdamArgs& a = ma.adam;
  if (flag_set(reinterpret_cast<const float*>(a.found_inf))) {  // no update; reset the sources to meta
    if (!ma.reset) return;
    const T* meta_in = reinterpret_cast<const T*>(a.param);
    T* sources = reinterpret_cast<T*>(a.grad);
    const int64_t n = a.rows * a.cols;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
      sources[i] = meta_in[i % a.cols];
    return;
  }
  __shared__ AdamCoef<T> coef;
  if (threadIdx.x == 0) {
    const double s = static_cast<double>(reinterpret_cast<const float*>(a.step)[0]) + 1.0;
    const double lr = load_scalar(reinterpret_cast<const void*>(a.lr), a.lr_dtype, 0);
    coef = adam_coef<T>(s, lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.adamw);
  }
  __syncthreads();
  const AdamCoef<T> c = coef;
  T* meta = reinterpret_cast<T*>(a.param);
  T* src = reinterpret_cast<T*>(a.grad);
  T* m = reinterpret_cast<T*>(a.exp_avg);
  T* v = reinterpret_cast<T*>(a.exp_avg_sq);
  const int64_t K = a.rows, P = a.cols;
  const bool diff = ma.mode == 0;
  const T kf = T(K);
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  using V = Pack<T>;
  constexpr int N = VEC ? V::N : 1;
  const int64_t n = P / N;
  for (int64_t j = tid; j < n; j += stride) {
    T old[N], g[N], mm[N], vv[N];
    if (VEC) {
      const V o = reinterpret_cast<const V*>(meta)[j];
      const V mv = reinterpret_cast<const V*>(m)[j];
      const V vvv = reinterpret_cast<const V*>(v)[j];
#pragma unroll
      for (int e = 0; e < N; ++e) { old[e] = o.v[e]; mm[e] = mv.v[e]; vv[e] = vvv.v[e]; }
    } else {
      old[0] = meta[j]; mm[0] = m[j]; vv[0] = v[j];
    }
    for (int64_t k = 0; k < K; ++k) {
      T x[N];
      if (VEC) {
        const V sv = reinterpret_cast<const V*>(src + k * P)[j];
#pragma unroll
        for (int e = 0; e < N; ++e) x[e] = sv.v[e];
      } else {
        x[0] = src[k * P + j];
      }
#pragma unroll
      for (int e = 0; e < N; ++e) {
        const T t = diff ? old[e] - x[e] : x[e];
        g[e] = k == 0 ? t : g[e] + t;
      }
    }
#pragma unroll
    for (int e = 0; e < N; ++e) {
      if (K > 1) g[e] = g[e] / kf;
      adam_update<T>(old[e], g[e], mm[e], vv[e], c);
    }
    if (VEC) {
      V o, mv, vvv;
#pragma unroll
      for (int e = 0; e < N; ++e) { o.v[e] = old[e]; mv.v[e] = mm[e]; vvv.v[e] = vv[e]; }
      reinterpret_cast<V*>(meta)[j] = o;
      reinterpret_cast<V*>(m)[j] = mv;
      reinterpret_cast<V*>(v)[j] = vvv;
      if (ma.reset)
        for (int64_t k = 0; k < K; ++k) reinterpret_cast<V*>(src + k * P)[j] = o;
    } else {
      meta[j] = old[0]; m[j] = mm[0]; v[j] = vv[0];
      if (ma.reset)
        for (int64_t k = 0; k < K; ++k) src[k * P + j] = old[0];
    }
  }
}

template <typename T>
__global__ void sgd_kernel(SgdArgs a) {
  if (flag_set(reinterpret_cast<const float*>(a.found_inf))) return;
  const int64_t k = blockIdx.y;
  const double lr = load_scalar(reinterpret_cast<const void*>(a.lr), a.lr_dtype, a.lr_numel == 1 ? 0 : k);
  const T neg_lr = static_cast<T>(-lr);
  const T wd = static_cast<T>(a.weight_decay);
  const bool has_wd = a.weight_decay != 0.0;
  T* p = reinterpret_cast<T*>(a.param) + k * a.cols;
  const T* g = reinterpret_cast<const T*>(a.grad) + k * a.cols;
  const T* x = a.base ? reinterpret_cast<const T*>(a.base) : p;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < a.cols; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = sgd_update<T>(x[i], g[i], neg_lr, wd, has_wd);
}

template <typename T>
__global__ void nonfinite_kernel(const T* x, int64_t n, float* found_inf) {
  bool bad = false;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    bad |= !df_isfinite(x[i]);
  if (__syncthreads_or(bad) && threadIdx.x == 0) *found_inf = 1.0f;
}

void check_dtype(int dtype, const char* what) {
  if (dtype != kFloat32 && dtype != kFloat64)
    throw std::invalid_argument(std::string(what) + ": dtype code " + std::to_string(dtype) +
                                " is not supported; use float32 (0) or float64 (1).");
}

template <typename T>
void launch_adam(const AdamArgs& a, cudaStream_t stream) {
  const int n = Pack<T>::N;
  const bool vec = a.cols % n == 0 && aligned16(a.param) && aligned16(a.grad) && aligned16(a.exp_avg) &&
                   aligned16(a.exp_avg_sq);
  if (a.cols > 0) {
    dim3 grid(grid_for(a.cols, vec ? n : 1), static_cast<unsigned>(a.rows));
    if (vec) adam_kernel<T, true><<<grid, kThreads, 0, stream>>>(a);
    else adam_kernel<T, false><<<grid, kThreads, 0, stream>>>(a);
    DF_CHECK_LAUNCH("adam_kernel");
  }
}

template <typename T>
void launch_meta(const MetaArgs& ma, cudaStream_t stream) {
  const AdamArgs& a = ma.adam;
  const int n = Pack<T>::N;
  const bool vec = a.cols % n == 0 && aligned16(a.param) && aligned16(a.grad) && aligned16(a.exp_avg) &&
                   aligned16(a.exp_avg_sq);
  if (a.cols > 0) {
    const unsigned grid = grid_for(a.cols, vec ? n : 1);
    if (vec) meta_adam_kernel<T, true><<<grid, kThreads, 0, stream>>>(ma);
    else meta_adam_kernel<T, false><<<grid, kThreads, 0, stream>>>(ma);
    DF_CHECK_LAUNCH("meta_adam_kernel");
  }
}

void launch_advance(const AdamArgs& a, cudaStream_t stream) {
  advance_steps_kernel<<<grid_for(a.step_numel, 1), kThreads, 0, stream>>>(
      reinterpret_cast<float*>(a.step), a.step_numel, reinterpret_cast<const float*>(a.found_inf));
  DF_CHECK_LAUNCH("advance_steps_kernel");
}

std::vector<std::string> split_archs(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : s) {
    if (ch == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

}  // namespace

bool cuda_compiled() { return true; }
std::vector<std::string> cuda_archs_compiled() { return split_archs(DF_CUDA_ARCHS); }
int cuda_runtime_version_compiled() { return CUDART_VERSION; }

int cuda_runtime_version() {
  int v = 0;
  // Without a usable driver the call reports an error; the linked runtime is still this one.
  if (cudaRuntimeGetVersion(&v) != cudaSuccess || v == 0) {
    (void)cudaGetLastError();  // clear the error handled here
    v = CUDART_VERSION;
  }
  return v;
}

int cuda_driver_version() {
  int v = 0;
  // cudaErrorNoDevice / InsufficientDriver still leave v meaningful (0 without a driver).
  const cudaError_t err = cudaDriverGetVersion(&v);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the error handled here
    return 0;
  }
  return v;
}

int cuda_device_count() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err == cudaErrorNoDevice) {
    (void)cudaGetLastError();  // clear the error handled here
    return 0;
  }
  check(err, "cudaGetDeviceCount");
  return n;
}

void adam_cuda(const AdamArgs& a, int device, uintptr_t stream_handle) {
  check_dtype(a.dtype, "adam");
  check_rows(a.rows, "adam");
  DeviceGuard guard(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (a.rows > 0) {
    if (a.dtype == kFloat64) launch_adam<double>(a, stream);
    else launch_adam<float>(a, stream);
  }
  launch_advance(a, stream);
}

void meta_adam_cuda(const MetaArgs& ma, int device, uintptr_t stream_handle) {
  check_dtype(ma.adam.dtype, "meta_adam");
  DeviceGuard guard(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (ma.adam.dtype == kFloat64) launch_meta<double>(ma, stream);
  else launch_meta<float>(ma, stream);
  launch_advance(ma.adam, stream);
}

void sgd_cuda(const SgdArgs& a, int device, uintptr_t stream_handle) {
  check_dtype(a.dtype, "sgd");
  check_rows(a.rows, "sgd");
  if (a.cols == 0 || a.rows == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  dim3 grid(grid_for(a.cols, 1), static_cast<unsigned>(a.rows));
  if (a.dtype == kFloat64) sgd_kernel<double><<<grid, kThreads, 0, stream>>>(a);
  else sgd_kernel<float><<<grid, kThreads, 0, stream>>>(a);
  DF_CHECK_LAUNCH("sgd_kernel");
}

void nonfinite_cuda(int dtype, int64_t n, uintptr_t data, uintptr_t found_inf, int device,
                    uintptr_t stream_handle) {
  check_dtype(dtype, "nonfinite");
  if (n == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const unsigned grid = std::min<unsigned>(grid_for(n, 4), 4096);
  if (dtype == kFloat64)
    nonfinite_kernel<double><<<grid, kThreads, 0, stream>>>(reinterpret_cast<const double*>(data), n,
                                                            reinterpret_cast<float*>(found_inf));
  else
    nonfinite_kernel<float><<<grid, kThreads, 0, stream>>>(reinterpret_cast<const float*>(data), n,
                                                           reinterpret_cast<float*>(found_inf));
  DF_CHECK_LAUNCH("nonfinite_kernel");
}

}  // namespace dil_fast
