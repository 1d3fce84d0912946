// CUDA kernels of the native core: flat-buffer Adam/AdamW (K-stacked), the fused meta step, SGD
// and the non-finite check. Bandwidth-bound: every row is a scalar head, a body of 16-byte vector
// accesses and a scalar tail, walked by a grid of a few waves in grid-stride loops (launch_plan.h,
// the same plan for every cols and row); one launch per op plus a one-thread launch that advances the
// step counters after the update (stream order makes it safe and keeps the step capturable in a graph).
// Every CUDA call and every launch is checked; errors become std::runtime_error.
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "launch_plan.h"
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

constexpr int kThreads = kFlatThreads;

inline unsigned grid_for(int64_t n, int per_thread) {
  const int64_t per_block = int64_t(kThreads) * per_thread;
  const int64_t blocks = std::max<int64_t>(1, (n + per_block - 1) / per_block);
  return static_cast<unsigned>(std::min<int64_t>(blocks, int64_t(1) << 20));
}

void check_rows(int64_t rows, const char* what) {
  if (rows > kMaxFlatRows)
    throw std::invalid_argument(std::string(what) + ": at most 65535 stacked rows are supported per launch, got " +
                                std::to_string(rows) + ".");
}

// ---------------------------------------------------------------------------------------------
// Device figures the launch plan needs, queried once per device (and per kernel) and kept.
int cached_figure(const void* kernel, int device, int (*query)(const void*, int)) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, int> cache;
  const auto key = std::make_pair(kernel, device);
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  const int value = query(kernel, device);
  std::lock_guard<std::mutex> lock(mu);
  cache[key] = value;
  return value;
}

int sm_count(int device) {
  return cached_figure(nullptr, device, [](const void*, int dev) {
    int n = 0;
    DF_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  });
}

// Resident blocks of `kernel` per SM at kThreads threads (registers and shared memory decide it).
int resident_blocks(const void* kernel, int device) {
  return cached_figure(kernel, device, [](const void* fn, int) {
    int n = 0;
    DF_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, fn, kThreads, 0));
    return std::max(n, 1);
  });
}

template <typename Kernel>
FlatLaunchPlan grid_for_kernel(const FlatLaunchPlan& layout, Kernel* kernel, int device) {
  return with_grid(layout, sm_count(device), resident_blocks(reinterpret_cast<const void*>(kernel), device));
}

inline dim3 grid_of(const FlatLaunchPlan& plan) {
  return dim3(static_cast<unsigned>(plan.grid_x), static_cast<unsigned>(plan.grid_y));
}

// ---------------------------------------------------------------------------------------------
// N consecutive elements; with kVector (and N > 1) one 16-byte access at an aligned address.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N, bool kVector>
__device__ __forceinline__ void load(T (&out)[N], const T* at) {
  if constexpr (kVector && N > 1) {
    const Pack<T, N> x = *reinterpret_cast<const Pack<T, N>*>(at);
#pragma unroll
    for (int e = 0; e < N; ++e) out[e] = x.v[e];
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) out[e] = at[e];
  }
}

template <typename T, int N, bool kVector>
__device__ __forceinline__ void store(T* at, const T (&in)[N]) {
  if constexpr (kVector && N > 1) {
    Pack<T, N> x;
#pragma unroll
    for (int e = 0; e < N; ++e) x.v[e] = in[e];
    *reinterpret_cast<Pack<T, N>*>(at) = x;
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) at[e] = in[e];
  }
}

// Adam's coefficients, formed by every warp from the step count on the device (the host cannot:
// launches are captured in CUDA graphs). Lanes 0 and 1 evaluate beta1^s and beta2^s in one pow
// call and the warp shares them by shuffles: one pow of latency, no block barrier, and with a grid
// of a few waves only a few thousand warps per launch do it (not 8 per 256 elements).
template <typename T>
__device__ __forceinline__ AdamCoef<T> warp_adam_coef(const AdamArgs& a, int64_t step_index, int64_t lr_index) {
  const double s = static_cast<double>(reinterpret_cast<const float*>(a.step)[step_index]) + 1.0;
  const double lr = load_scalar(reinterpret_cast<const void*>(a.lr), a.lr_dtype, lr_index);
  const double power = pow((threadIdx.x & 1) ? a.beta2 : a.beta1, s);
  const double beta1_pow = __shfl_sync(0xffffffffu, power, 0);
  const double beta2_pow = __shfl_sync(0xffffffffu, power, 1);
  return adam_coef_from_powers<T>(beta1_pow, beta2_pow, lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.adamw);
}

inline __device__ int64_t flat_thread() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
inline __device__ int64_t flat_threads() { return int64_t(gridDim.x) * blockDim.x; }

// ---------------------------------------------------------------------------------------------
template <typename T, int N>
__device__ __forceinline__ void adam_at(T* p, const T* g, T* m, T* v, const AdamCoef<T>& c, bool scaled, T scale) {
  T pp[N], gg[N], mm[N], vv[N];
  load<T, N, true>(pp, p);
  load<T, N, true>(gg, g);
  load<T, N, true>(mm, m);
  load<T, N, true>(vv, v);
#pragma unroll
  for (int e = 0; e < N; ++e) {
    const T gi = scaled ? gg[e] / scale : gg[e];
    adam_update<T>(pp[e], gi, mm[e], vv[e], c);
  }
  store<T, N, true>(p, pp);
  store<T, N, true>(m, mm);
  store<T, N, true>(v, vv);
}

// Row blockIdx.y of [rows, cols]: the scalar head (up to the first cache line of the row) and tail
// (fewer than N elements) taken by the row's first threads, the vector body in a grid-stride loop.
template <typename T, int N>
__global__ void __launch_bounds__(kThreads) adam_kernel(AdamArgs a, FlatLaunchPlan plan) {
  if (flag_set(reinterpret_cast<const float*>(a.found_inf))) return;
  const int64_t k = blockIdx.y;
  const AdamCoef<T> c = warp_adam_coef<T>(a, a.step_numel == 1 ? 0 : k, a.lr_numel == 1 ? 0 : k);
  const float* gs = reinterpret_cast<const float*>(a.grad_scale);
  const bool scaled = gs != nullptr;
  const T scale = scaled ? static_cast<T>(*gs) : T(1);
  const int64_t row = k * a.cols;
  T* p = reinterpret_cast<T*>(a.param) + row;
  const T* g = reinterpret_cast<const T*>(a.grad) + row;
  T* m = reinterpret_cast<T*>(a.exp_avg) + row;
  T* v = reinterpret_cast<T*>(a.exp_avg_sq) + row;
  const RowSplit s = row_split(plan, k);
  const int64_t tid = flat_thread(), stride = flat_threads();
  if (tid < s.head) adam_at<T, 1>(p + tid, g + tid, m + tid, v + tid, c, scaled, scale);
  const int64_t t = s.head + s.body + tid;
  if (tid < s.tail) adam_at<T, 1>(p + t, g + t, m + t, v + t, c, scaled, scale);
  for (int64_t i = s.head + tid * N; i < s.head + s.body; i += stride * N)
    adam_at<T, N>(p + i, g + i, m + i, v + i, c, scaled, scale);
}

// Advances the step counters once the update kernel has read them (same stream, so ordered).
__global__ void advance_steps_kernel(float* step, int64_t n, const float* found_inf) {
  if (flag_set(found_inf)) return;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    step[i] += 1.0f;
}

// Columns [i, i + N) of the meta step: the gradient reduced over the K source rows in order, one
// Adam update of meta, and (reset) the updated meta written back to every source row.
template <typename T, int N, bool kSourcesVector>
__device__ __forceinline__ void meta_at(const MetaArgs& ma, int64_t i, const AdamCoef<T>& c) {
  const AdamArgs& a = ma.adam;
  T* meta = reinterpret_cast<T*>(a.param) + i;
  T* src = reinterpret_cast<T*>(a.grad) + i;
  T* m = reinterpret_cast<T*>(a.exp_avg) + i;
  T* v = reinterpret_cast<T*>(a.exp_avg_sq) + i;
  const int64_t K = a.rows, P = a.cols;
  const bool diff = ma.mode == 0;
  T old[N], g[N], mm[N], vv[N];
  load<T, N, true>(old, meta);
  load<T, N, true>(mm, m);
  load<T, N, true>(vv, v);
  for (int64_t k = 0; k < K; ++k) {
    T x[N];
    load<T, N, kSourcesVector>(x, src + k * P);
#pragma unroll
    for (int e = 0; e < N; ++e) {
      const T t = diff ? old[e] - x[e] : x[e];
      g[e] = k == 0 ? t : g[e] + t;
    }
  }
  const T kf = T(K);
#pragma unroll
  for (int e = 0; e < N; ++e) {
    if (K > 1) g[e] = g[e] / kf;
    adam_update<T>(old[e], g[e], mm[e], vv[e], c);
  }
  store<T, N, true>(meta, old);
  store<T, N, true>(m, mm);
  store<T, N, true>(v, vv);
  if (ma.reset)
    for (int64_t k = 0; k < K; ++k) store<T, N, kSourcesVector>(src + k * P, old);
}

// Meta [cols] (with exp_avg, exp_avg_sq) split as one row of the plan; the sources' K rows are
// read in vectors when they line up with it (plan.side_vec), else per element.
template <typename T, int N, bool kSourcesVector>
__global__ void __launch_bounds__(kThreads) meta_adam_kernel(MetaArgs ma, FlatLaunchPlan plan) {
  const AdamArgs& a = ma.adam;
  if (flag_set(reinterpret_cast<const float*>(a.found_inf))) {  // no update; reset the sources to meta
    if (!ma.reset) return;
    const T* meta_in = reinterpret_cast<const T*>(a.param);
    T* sources = reinterpret_cast<T*>(a.grad);
    const int64_t n = a.rows * a.cols;
    for (int64_t i = flat_thread(); i < n; i += flat_threads()) sources[i] = meta_in[i % a.cols];
    return;
  }
  const AdamCoef<T> c = warp_adam_coef<T>(a, 0, 0);
  const RowSplit s = row_split(plan, 0);
  const int64_t tid = flat_thread(), stride = flat_threads();
  if (tid < s.head) meta_at<T, 1, false>(ma, tid, c);
  if (tid < s.tail) meta_at<T, 1, false>(ma, s.head + s.body + tid, c);
  for (int64_t i = s.head + tid * N; i < s.head + s.body; i += stride * N) meta_at<T, N, kSourcesVector>(ma, i, c);
}

template <typename T, int N, bool kBaseVector>
__device__ __forceinline__ void sgd_at(T* p, const T* g, const T* x, T neg_lr, T wd, bool has_wd) {
  T xx[N], gg[N], out[N];
  load<T, N, kBaseVector>(xx, x);
  load<T, N, true>(gg, g);
#pragma unroll
  for (int e = 0; e < N; ++e) out[e] = sgd_update<T>(xx[e], gg[e], neg_lr, wd, has_wd);
  store<T, N, true>(p, out);
}

// Row blockIdx.y of [rows, cols]; x is the row itself or the broadcast base (read in vectors when
// it lines up with the rows, plan.side_vec).
template <typename T, int N, bool kBaseVector>
__global__ void __launch_bounds__(kThreads) sgd_kernel(SgdArgs a, FlatLaunchPlan plan) {
  if (flag_set(reinterpret_cast<const float*>(a.found_inf))) return;
  const int64_t k = blockIdx.y;
  const double lr = load_scalar(reinterpret_cast<const void*>(a.lr), a.lr_dtype, a.lr_numel == 1 ? 0 : k);
  const T neg_lr = static_cast<T>(-lr);
  const T wd = static_cast<T>(a.weight_decay);
  const bool has_wd = a.weight_decay != 0.0;
  T* p = reinterpret_cast<T*>(a.param) + k * a.cols;
  const T* g = reinterpret_cast<const T*>(a.grad) + k * a.cols;
  const T* x = a.base ? reinterpret_cast<const T*>(a.base) : p;
  const RowSplit s = row_split(plan, k);
  const int64_t tid = flat_thread(), stride = flat_threads();
  if (tid < s.head) sgd_at<T, 1, false>(p + tid, g + tid, x + tid, neg_lr, wd, has_wd);
  const int64_t t = s.head + s.body + tid;
  if (tid < s.tail) sgd_at<T, 1, false>(p + t, g + t, x + t, neg_lr, wd, has_wd);
  for (int64_t i = s.head + tid * N; i < s.head + s.body; i += stride * N)
    sgd_at<T, N, kBaseVector>(p + i, g + i, x + i, neg_lr, wd, has_wd);
}

template <typename T>
__global__ void nonfinite_kernel(const T* x, int64_t n, float* found_inf) {
  bool bad = false;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    bad |= !df_grad_ok(x[i]);
  if (__syncthreads_or(bad) && threadIdx.x == 0) *found_inf = 1.0f;
}

void check_dtype(int dtype, const char* what) {
  if (dtype != kFloat32 && dtype != kFloat64)
    throw std::invalid_argument(std::string(what) + ": dtype code " + std::to_string(dtype) +
                                " is not supported; use float32 (0) or float64 (1).");
}

template <typename T>
void launch_adam(const AdamArgs& a, int device, cudaStream_t stream) {
  constexpr int N = kVectorBytes / sizeof(T);
  const FlatLaunchPlan layout = flat_layout(a.rows, a.cols, sizeof(T), {a.param, a.grad, a.exp_avg, a.exp_avg_sq});
  if (layout.rows == 0 || layout.cols == 0) return;
  if (layout.vec == N) {
    const FlatLaunchPlan plan = grid_for_kernel(layout, adam_kernel<T, N>, device);
    adam_kernel<T, N><<<grid_of(plan), kThreads, 0, stream>>>(a, plan);
  } else {
    const FlatLaunchPlan plan = grid_for_kernel(layout, adam_kernel<T, 1>, device);
    adam_kernel<T, 1><<<grid_of(plan), kThreads, 0, stream>>>(a, plan);
  }
  DF_CHECK_LAUNCH("adam_kernel");
}

template <typename T, int N, bool kSourcesVector>
void launch_meta_with(const FlatLaunchPlan& layout, const MetaArgs& ma, int device, cudaStream_t stream) {
  const FlatLaunchPlan plan = grid_for_kernel(layout, meta_adam_kernel<T, N, kSourcesVector>, device);
  meta_adam_kernel<T, N, kSourcesVector><<<grid_of(plan), kThreads, 0, stream>>>(ma, plan);
  DF_CHECK_LAUNCH("meta_adam_kernel");
}

template <typename T>
void launch_meta(const MetaArgs& ma, int device, cudaStream_t stream) {
  constexpr int N = kVectorBytes / sizeof(T);
  const AdamArgs& a = ma.adam;
  const FlatLaunchPlan layout = flat_layout(1, a.cols, sizeof(T), {a.param, a.exp_avg, a.exp_avg_sq}, a.grad, a.rows);
  if (layout.cols == 0) return;
  if (layout.vec != N) launch_meta_with<T, 1, false>(layout, ma, device, stream);
  else if (layout.side_vec) launch_meta_with<T, N, true>(layout, ma, device, stream);
  else launch_meta_with<T, N, false>(layout, ma, device, stream);
}

template <typename T, int N, bool kBaseVector>
void launch_sgd_with(const FlatLaunchPlan& layout, const SgdArgs& a, int device, cudaStream_t stream) {
  const FlatLaunchPlan plan = grid_for_kernel(layout, sgd_kernel<T, N, kBaseVector>, device);
  sgd_kernel<T, N, kBaseVector><<<grid_of(plan), kThreads, 0, stream>>>(a, plan);
  DF_CHECK_LAUNCH("sgd_kernel");
}

template <typename T>
void launch_sgd(const SgdArgs& a, int device, cudaStream_t stream) {
  constexpr int N = kVectorBytes / sizeof(T);
  const FlatLaunchPlan layout = flat_layout(a.rows, a.cols, sizeof(T), {a.param, a.grad}, a.base, 1);
  if (layout.rows == 0 || layout.cols == 0) return;
  if (layout.vec != N) launch_sgd_with<T, 1, false>(layout, a, device, stream);
  else if (layout.side_vec) launch_sgd_with<T, N, true>(layout, a, device, stream);
  else launch_sgd_with<T, N, false>(layout, a, device, stream);
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
  if (a.dtype == kFloat64) launch_adam<double>(a, device, stream);
  else launch_adam<float>(a, device, stream);
  launch_advance(a, stream);
}

void meta_adam_cuda(const MetaArgs& ma, int device, uintptr_t stream_handle) {
  check_dtype(ma.adam.dtype, "meta_adam");
  DeviceGuard guard(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (ma.adam.dtype == kFloat64) launch_meta<double>(ma, device, stream);
  else launch_meta<float>(ma, device, stream);
  launch_advance(ma.adam, stream);
}

void sgd_cuda(const SgdArgs& a, int device, uintptr_t stream_handle) {
  check_dtype(a.dtype, "sgd");
  check_rows(a.rows, "sgd");
  if (a.cols == 0 || a.rows == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (a.dtype == kFloat64) launch_sgd<double>(a, device, stream);
  else launch_sgd<float>(a, device, stream);
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
