// The element math shared by the CUDA kernels and their C++ CPU twins (one definition, two
// compilers). It follows torch.optim.Adam (single-tensor path) operation by operation:
//   wd:   adamw ? p *= 1 - lr*wd : g += wd*p
//   m  <- lerp(m, g, 1 - beta1)          (torch's two-sided lerp, exact at beta1 = 0)
//   v  <- v*beta2 + (1 - beta2)*g*g
//   p  <- p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),  bc_i = 1 - beta_i^step
// Scalars (bias corrections, step size) are formed in double, elementwise work in T. Every
// elementwise operation is a correctly rounded IEEE add, multiply, divide or sqrt, so a compiler
// that does not contract them into FMAs (-ffp-contract=off for the CPU twins) gives the same bits
// in scalar and vector code on every ISA. nvcc contracts by default; an FMA only drops a rounding,
// so the CUDA kernels stay within the bound of tests/ext/test_cpu_twins_simd.py.
#pragma once

#include <cmath>
#include <cstdint>

#include "hd.h"
#include "optim.h"

namespace dil_fast {

DF_HD float df_sqrt(float x) { return sqrtf(x); }
DF_HD double df_sqrt(double x) { return sqrt(x); }
// The gradient check of the optimizer steps: NaN, inf, and any magnitude above 2^62 (its square
// would overflow Adam's float32 second moment and freeze the weight it divides) are refused; a NaN
// fails the comparison. dil_fast.meta.base.GRAD_LIMIT and the torch reference use the same bound.
constexpr double kGradLimit = 4611686018427387904.0;  // 2^62
DF_HD bool df_grad_ok(float x) { return fabsf(x) <= float(kGradLimit); }
DF_HD bool df_grad_ok(double x) { return fabs(x) <= kGradLimit; }
#if defined(__CUDACC__)
DF_HD bool df_isfinite(float x) { return isfinite(x); }
DF_HD bool df_isfinite(double x) { return isfinite(x); }
#else
inline bool df_isfinite(float x) { return std::isfinite(x); }
inline bool df_isfinite(double x) { return std::isfinite(x); }
#endif

// A device scalar (step, lr) read as double; dtype is kFloat32 or kFloat64.
DF_HD double load_scalar(const void* ptr, int dtype, int64_t index) {
  return dtype == kFloat64 ? static_cast<const double*>(ptr)[index]
                           : static_cast<double>(static_cast<const float*>(ptr)[index]);
}

// True when the optional non-finite flag is set: the update is skipped.
DF_HD bool flag_set(const float* found_inf) { return found_inf != nullptr && *found_inf != 0.0f; }

// Weight-decay form of an Adam update: none, L2 added to the gradient (torch.optim.Adam) or
// decoupled from it (AdamW).
enum class Decay : int { kNone = 0, kL2 = 1, kDecoupled = 2 };

template <typename T>
struct AdamCoef {
  T one_minus_beta1, beta2, one_minus_beta2, eps, wd, decay, neg_step_size, bc2_sqrt;
  Decay decay_form;
  bool lerp_from_m;  // torch's lerp starts from m when its weight 1 - beta1 is below 0.5
};

// Per-launch (per-row) coefficients from beta1^step and beta2^step, `step` being the count after
// this update (1 on the first). The CUDA kernels evaluate the two powers in one pow call spread
// over two lanes of a warp (optim_cuda.cu); adam_coef below evaluates them itself.
template <typename T>
DF_HD AdamCoef<T> adam_coef_from_powers(double beta1_pow, double beta2_pow, double lr, double beta1,
                                        double beta2, double eps, double weight_decay, bool adamw) {
  AdamCoef<T> c;
  const double bc1 = 1.0 - beta1_pow;
  const double bc2 = 1.0 - beta2_pow;
  c.neg_step_size = static_cast<T>(-(lr / bc1));
  c.bc2_sqrt = static_cast<T>(sqrt(bc2));
  c.one_minus_beta1 = static_cast<T>(1.0 - beta1);
  c.beta2 = static_cast<T>(beta2);
  c.one_minus_beta2 = static_cast<T>(1.0 - beta2);
  c.eps = static_cast<T>(eps);
  c.wd = static_cast<T>(weight_decay);
  c.decay = static_cast<T>(1.0 - lr * weight_decay);
  c.decay_form = weight_decay == 0.0 ? Decay::kNone : adamw ? Decay::kDecoupled : Decay::kL2;
  c.lerp_from_m = c.one_minus_beta1 < T(0.5);
  return c;
}

template <typename T>
DF_HD AdamCoef<T> adam_coef(double step, double lr, double beta1, double beta2, double eps,
                            double weight_decay, bool adamw) {
  return adam_coef_from_powers<T>(pow(beta1, step), pow(beta2, step), lr, beta1, beta2, eps, weight_decay, adamw);
}

// One update with its form fixed at compile time: the CPU twins instantiate one branch-free loop
// per form, the CUDA kernels reach it through adam_update below.
template <typename T, Decay kDecay, bool kLerpFromM>
DF_HD void adam_update_form(T& p, T g, T& m, T& v, const AdamCoef<T>& c) {
  if (kDecay == Decay::kDecoupled) p = p * c.decay;
  if (kDecay == Decay::kL2) g = g + c.wd * p;
  const T w = c.one_minus_beta1;
  m = kLerpFromM ? m + w * (g - m) : g - (g - m) * (T(1) - w);
  v = v * c.beta2 + c.one_minus_beta2 * g * g;
  const T denom = df_sqrt(v) / c.bc2_sqrt + c.eps;
  p = p + c.neg_step_size * m / denom;
}

// The same update with its form read from `c` (uniform over a launch: no divergence on the GPU).
template <typename T>
DF_HD void adam_update(T& p, T g, T& m, T& v, const AdamCoef<T>& c) {
  switch (c.decay_form) {
    case Decay::kNone:
      c.lerp_from_m ? adam_update_form<T, Decay::kNone, true>(p, g, m, v, c)
                    : adam_update_form<T, Decay::kNone, false>(p, g, m, v, c);
      break;
    case Decay::kL2:
      c.lerp_from_m ? adam_update_form<T, Decay::kL2, true>(p, g, m, v, c)
                    : adam_update_form<T, Decay::kL2, false>(p, g, m, v, c);
      break;
    case Decay::kDecoupled:
      c.lerp_from_m ? adam_update_form<T, Decay::kDecoupled, true>(p, g, m, v, c)
                    : adam_update_form<T, Decay::kDecoupled, false>(p, g, m, v, c);
      break;
  }
}

// torch.optim.SGD without momentum: x_new = x - lr * (g + wd * x).
template <typename T>
DF_HD T sgd_update(T x, T g, T neg_lr, T wd, bool has_wd) {
  if (has_wd) g = g + wd * x;
  return x + neg_lr * g;
}

}  // namespace dil_fast
