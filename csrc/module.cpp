// pybind11 bindings of dil_fast._C. Arguments are raw addresses (tensor.data_ptr()), sizes,
// scalars and, for CUDA, the device index and stream handle; the Python wrappers in
// dil_fast/ops/optim.py check dtypes, shapes and devices, this layer checks what it can see.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "optim.h"

namespace py = pybind11;
using namespace dil_fast;

namespace {

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("dil_fast._C: " + msg);
}

AdamArgs make_adam(int dtype, int64_t rows, int64_t cols, uintptr_t param, uintptr_t grad, uintptr_t exp_avg,
                   uintptr_t exp_avg_sq, uintptr_t step, int64_t step_numel, uintptr_t lr, int lr_dtype,
                   int64_t lr_numel, double beta1, double beta2, double eps, double weight_decay, bool adamw,
                   uintptr_t found_inf, uintptr_t grad_scale) {
  require(rows >= 0 && cols >= 0, "rows and cols must be non-negative.");
  require(rows * cols == 0 || (param && grad && exp_avg && exp_avg_sq),
          "param, grad, exp_avg and exp_avg_sq must all be valid addresses when there is work to do.");
  require(step != 0 && step_numel >= 1, "a float32 step tensor with at least one element is required.");
  require(lr != 0 && (lr_numel == 1 || lr_numel == rows), "lr must have one element or one per row.");
  require(lr_dtype == kFloat32 || lr_dtype == kFloat64, "lr must be float32 (0) or float64 (1).");
  require(beta1 >= 0.0 && beta1 < 1.0 && beta2 >= 0.0 && beta2 < 1.0, "betas must lie in [0, 1).");
  require(eps >= 0.0 && weight_decay >= 0.0, "eps and weight_decay must be non-negative.");
  AdamArgs a;
  a.dtype = dtype;
  a.rows = rows;
  a.cols = cols;
  a.param = param;
  a.grad = grad;
  a.exp_avg = exp_avg;
  a.exp_avg_sq = exp_avg_sq;
  a.step = step;
  a.step_numel = step_numel;
  a.lr = lr;
  a.lr_dtype = lr_dtype;
  a.lr_numel = lr_numel;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.weight_decay = weight_decay;
  a.adamw = adamw;
  a.found_inf = found_inf;
  a.grad_scale = grad_scale;
  return a;
}

MetaArgs make_meta(int dtype, int64_t rows, int64_t cols, uintptr_t meta, uintptr_t sources, uintptr_t exp_avg,
                   uintptr_t exp_avg_sq, uintptr_t step, int64_t step_numel, uintptr_t lr, int lr_dtype,
                   double beta1, double beta2, double eps, double weight_decay, bool adamw, int mode, bool reset,
                   uintptr_t found_inf) {
  require(rows >= 1, "the meta step needs at least one source row.");
  require(mode == 0 || mode == 1, "mode must be 0 (mean of meta - source) or 1 (mean of sources).");
  require(!(reset && mode == 1), "reset copies meta into the sources and only makes sense with mode 0.");
  MetaArgs m;
  m.adam = make_adam(dtype, rows, cols, meta, sources, exp_avg, exp_avg_sq, step, step_numel, lr, lr_dtype, 1,
                     beta1, beta2, eps, weight_decay, adamw, found_inf, 0);
  m.mode = mode;
  m.reset = reset;
  return m;
}

SgdArgs make_sgd(int dtype, int64_t rows, int64_t cols, uintptr_t param, uintptr_t grad, uintptr_t base,
                 uintptr_t lr, int lr_dtype, int64_t lr_numel, double weight_decay, uintptr_t found_inf) {
  require(rows >= 0 && cols >= 0, "rows and cols must be non-negative.");
  require(rows * cols == 0 || (param && grad), "param and grad must be valid addresses.");
  require(lr != 0 && (lr_numel == 1 || lr_numel == rows), "lr must have one element or one per row.");
  require(lr_dtype == kFloat32 || lr_dtype == kFloat64, "lr must be float32 (0) or float64 (1).");
  SgdArgs a;
  a.dtype = dtype;
  a.rows = rows;
  a.cols = cols;
  a.param = param;
  a.grad = grad;
  a.base = base;
  a.lr = lr;
  a.lr_dtype = lr_dtype;
  a.lr_numel = lr_numel;
  a.weight_decay = weight_decay;
  a.found_inf = found_inf;
  return a;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "dil_fast native core: flat-buffer Adam, meta step, SGD and non-finite check (CUDA + CPU twins).";

  m.def("has_cuda", &cuda_compiled, "True when this build carries CUDA kernels.");
  m.def("cuda_archs", &cuda_archs_compiled, "The CUDA targets compiled in, e.g. ['sm_90', 'compute_90'].");
  m.def("cuda_runtime_version_compiled", &cuda_runtime_version_compiled,
        "CUDART_VERSION of the toolkit used at build time (0 without CUDA).");
  m.def("cuda_runtime_version", &cuda_runtime_version, "cudaRuntimeGetVersion of the static runtime (0 without CUDA).");
  m.def("cuda_driver_version", &cuda_driver_version, "cudaDriverGetVersion (0 without a driver or without CUDA).");
  m.def("cuda_device_count", &cuda_device_count, "Devices the static runtime sees; raises with the CUDA error.");


  m.def(
      "adam_cpu",
      [](int dtype, int64_t rows, int64_t cols, uintptr_t param, uintptr_t grad, uintptr_t exp_avg,
         uintptr_t exp_avg_sq, uintptr_t step, int64_t step_numel, uintptr_t lr, int lr_dtype, int64_t lr_numel,
         double beta1, double beta2, double eps, double weight_decay, bool adamw, uintptr_t found_inf,
         uintptr_t grad_scale, int threads) {
        const AdamArgs a = make_adam(dtype, rows, cols, param, grad, exp_avg, exp_avg_sq, step, step_numel, lr,
                                     lr_dtype, lr_numel, beta1, beta2, eps, weight_decay, adamw, found_inf,
                                     grad_scale);
        py::gil_scoped_release nogil;
        adam_cpu(a, threads);
      },
      py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("param"), py::arg("grad"), py::arg("exp_avg"),
      py::arg("exp_avg_sq"), py::arg("step"), py::arg("step_numel"), py::arg("lr"), py::arg("lr_dtype"),
      py::arg("lr_numel"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
      py::arg("adamw"), py::arg("found_inf"), py::arg("grad_scale"), py::arg("threads"),
      "Adam/AdamW over [rows, cols] float buffers on the CPU; steps read before and incremented after.");

  m.def(
      "adam_cuda",
      [](int dtype, int64_t rows, int64_t cols, uintptr_t param, uintptr_t grad, uintptr_t exp_avg,
         uintptr_t exp_avg_sq, uintptr_t step, int64_t step_numel, uintptr_t lr, int lr_dtype, int64_t lr_numel,
         double beta1, double beta2, double eps, double weight_decay, bool adamw, uintptr_t found_inf,
         uintptr_t grad_scale, int device, uintptr_t stream) {
        const AdamArgs a = make_adam(dtype, rows, cols, param, grad, exp_avg, exp_avg_sq, step, step_numel, lr,
                                     lr_dtype, lr_numel, beta1, beta2, eps, weight_decay, adamw, found_inf,
                                     grad_scale);
        adam_cuda(a, device, stream);
      },
      py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("param"), py::arg("grad"), py::arg("exp_avg"),
      py::arg("exp_avg_sq"), py::arg("step"), py::arg("step_numel"), py::arg("lr"), py::arg("lr_dtype"),
      py::arg("lr_numel"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
      py::arg("adamw"), py::arg("found_inf"), py::arg("grad_scale"), py::arg("device"), py::arg("stream"),
      "Adam/AdamW over [rows, cols] device buffers, launched on `stream` of `device`.");

  m.def(
      "meta_adam_cpu",
      [](int dtype, int64_t rows, int64_t cols, uintptr_t meta, uintptr_t sources, uintptr_t exp_avg,
         uintptr_t exp_avg_sq, uintptr_t step, int64_t step_numel, uintptr_t lr, int lr_dtype, double beta1,
         double beta2, double eps, double weight_decay, bool adamw, int mode, bool reset, uintptr_t found_inf,
         int threads) {
        const MetaArgs a = make_meta(dtype, rows, cols, meta, sources, exp_avg, exp_avg_sq, step, step_numel, lr,
                                     lr_dtype, beta1, beta2, eps, weight_decay, adamw, mode, reset, found_inf);
        py::gil_scoped_release nogil;
        meta_adam_cpu(a, threads);
      },
      py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("meta"), py::arg("sources"), py::arg("exp_avg"),
      py::arg("exp_avg_sq"), py::arg("step"), py::arg("step_numel"), py::arg("lr"), py::arg("lr_dtype"),
      py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("adamw"),
      py::arg("mode"), py::arg("reset"), py::arg("found_inf"), py::arg("threads"),
      "Meta Adam step on the CPU with the gradient reduced from [rows, cols] sources.");

  m.def(
      "meta_adam_cuda",
      [](int dtype, int64_t rows, int64_t cols, uintptr_t meta, uintptr_t sources, uintptr_t exp_avg,
         uintptr_t exp_avg_sq, uintptr_t step, int64_t step_numel, uintptr_t lr, int lr_dtype, double beta1,
         double beta2, double eps, double weight_decay, bool adamw, int mode, bool reset, uintptr_t found_inf,
         int device, uintptr_t stream) {
        const MetaArgs a = make_meta(dtype, rows, cols, meta, sources, exp_avg, exp_avg_sq, step, step_numel, lr,
                                     lr_dtype, beta1, beta2, eps, weight_decay, adamw, mode, reset, found_inf);
        meta_adam_cuda(a, device, stream);
      },
      py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("meta"), py::arg("sources"), py::arg("exp_avg"),
      py::arg("exp_avg_sq"), py::arg("step"), py::arg("step_numel"), py::arg("lr"), py::arg("lr_dtype"),
      py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("adamw"),
      py::arg("mode"), py::arg("reset"), py::arg("found_inf"), py::arg("device"), py::arg("stream"),
      "Meta Adam step on `stream` of `device` with the gradient reduced from [rows, cols] sources.");

  m.def(
      "sgd_cpu",
      [](int dtype, int64_t rows, int64_t cols, uintptr_t param, uintptr_t grad, uintptr_t base, uintptr_t lr,
         int lr_dtype, int64_t lr_numel, double weight_decay, uintptr_t found_inf, int threads) {
        const SgdArgs a =
            make_sgd(dtype, rows, cols, param, grad, base, lr, lr_dtype, lr_numel, weight_decay, found_inf);
        py::gil_scoped_release nogil;
        sgd_cpu(a, threads);
      },
      py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("param"), py::arg("grad"), py::arg("base"),
      py::arg("lr"), py::arg("lr_dtype"), py::arg("lr_numel"), py::arg("weight_decay"), py::arg("found_inf"),
      py::arg("threads"), "SGD over [rows, cols] on the CPU, optionally from a broadcast [cols] base.");

  m.def(
      "sgd_cuda",
      [](int dtype, int64_t rows, int64_t cols, uintptr_t param, uintptr_t grad, uintptr_t base, uintptr_t lr,
         int lr_dtype, int64_t lr_numel, double weight_decay, uintptr_t found_inf, int device, uintptr_t stream) {
        const SgdArgs a =
            make_sgd(dtype, rows, cols, param, grad, base, lr, lr_dtype, lr_numel, weight_decay, found_inf);
        sgd_cuda(a, device, stream);
      },
      py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("param"), py::arg("grad"), py::arg("base"),
      py::arg("lr"), py::arg("lr_dtype"), py::arg("lr_numel"), py::arg("weight_decay"), py::arg("found_inf"),
      py::arg("device"), py::arg("stream"), "SGD over [rows, cols] on `stream` of `device`.");

  m.def(
      "nonfinite_cpu",
      [](int dtype, int64_t n, uintptr_t data, uintptr_t found_inf) {
        require(n == 0 || (data && found_inf), "data and found_inf must be valid addresses.");
        py::gil_scoped_release nogil;
        nonfinite_cpu(dtype, n, data, found_inf);
      },
      py::arg("dtype"), py::arg("n"), py::arg("data"), py::arg("found_inf"),
      "Sets *found_inf = 1 when any of the n values is NaN or infinite (never clears it).");

  m.def(
      "nonfinite_cuda",
      [](int dtype, int64_t n, uintptr_t data, uintptr_t found_inf, int device, uintptr_t stream) {
        require(n == 0 || (data && found_inf), "data and found_inf must be valid addresses.");
        nonfinite_cuda(dtype, n, data, found_inf, device, stream);
      },
      py::arg("dtype"), py::arg("n"), py::arg("data"), py::arg("found_inf"), py::arg("device"), py::arg("stream"),
      "Device-side non-finite check on `stream`: sets *found_inf = 1, never clears it, no host sync.");
}
