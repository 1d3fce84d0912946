// Entry points of the native core. Plain C++ (no torch, no CUDA headers): tensors arrive as raw
// addresses of contiguous buffers, and CUDA launches take the stream handle as an integer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dil_fast {

// Scalar dtype codes shared with the Python side (dil_fast/ops/optim.py).
enum DType : int { kFloat32 = 0, kFloat64 = 1 };

// Adam/AdamW over `rows` independent rows of `cols` elements ([rows, cols], contiguous).
// step: float32, `step_numel` is 1 (shared) or `rows`; it is read as the count *before* this
// update and every element is incremented afterwards (unless found_inf is set).
// lr: `lr_dtype` (float32/float64), numel 1 or `rows`. found_inf / grad_scale: float32 or 0.
struct AdamArgs {
  int dtype = 0;
  int64_t rows = 1, cols = 0;
  uintptr_t param = 0, grad = 0, exp_avg = 0, exp_avg_sq = 0;
  uintptr_t step = 0;
  int64_t step_numel = 1;
  uintptr_t lr = 0;
  int lr_dtype = 0;
  int64_t lr_numel = 1;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool adamw = false;
  uintptr_t found_inf = 0, grad_scale = 0;
};

// Meta step: one Adam update of `meta` [cols] whose gradient is reduced from `sources` [rows, cols]:
// mode 0 ("diff"): g = mean_k(meta - sources[k]); mode 1 ("mean"): g = mean_k(sources[k]).
// reset (mode 0 only): sources[k] <- updated meta, in the same pass (under found_inf: the unchanged
// meta; nothing else is written). step numel 1 or more (all
// incremented), lr numel 1.
struct MetaArgs {
  AdamArgs adam;  // rows/cols/param/grad describe meta and sources; grad_scale unused
  int mode = 0;
  bool reset = false;
};

// SGD over [rows, cols]: param[k] <- base[k] - lr_k * (grad[k] + wd * base[k]), where base is
// param itself (base == 0) or a [cols] buffer broadcast over rows (virtual updates from one theta).
struct SgdArgs {
  int dtype = 0;
  int64_t rows = 1, cols = 0;
  uintptr_t param = 0, grad = 0, base = 0;
  uintptr_t lr = 0;
  int lr_dtype = 0;
  int64_t lr_numel = 1;
  double weight_decay = 0.0;
  uintptr_t found_inf = 0;
};

// CPU twins (run on the calling thread plus up to `threads - 1` helpers).
void adam_cpu(const AdamArgs& a, int threads);
void meta_adam_cpu(const MetaArgs& a, int threads);
void sgd_cpu(const SgdArgs& a, int threads);
void nonfinite_cpu(int dtype, int64_t n, uintptr_t data, uintptr_t found_inf);

// CUDA (defined in optim_cuda.cu when built with nvcc; otherwise they throw).
bool cuda_compiled();
std::vector<std::string> cuda_archs_compiled();
int cuda_runtime_version_compiled();
int cuda_runtime_version();  // cudaRuntimeGetVersion of the linked (static) runtime
int cuda_driver_version();   // 0 when no driver is installed
int cuda_device_count();     // throws with the CUDA error when the runtime cannot start
void adam_cuda(const AdamArgs& a, int device, uintptr_t stream);
void meta_adam_cuda(const MetaArgs& a, int device, uintptr_t stream);
void sgd_cuda(const SgdArgs& a, int device, uintptr_t stream);
void nonfinite_cuda(int dtype, int64_t n, uintptr_t data, uintptr_t found_inf, int device,
                    uintptr_t stream);

}  // namespace dil_fast
