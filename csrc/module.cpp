// pybind11 bindings of dil_fast._C. The argument structs of optim.h are the one definition of every
// entry point's arguments: Python fills an AdamArgs / MetaArgs / SgdArgs field by field (raw
// addresses from tensor.data_ptr(), sizes, scalars) -- dil_fast/ops/optim.py checks dtypes, shapes
// and devices once -- and this layer checks what it can see before it runs anything.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "cpu_isa.h"
#include "launch_plan.h"
#include "optim.h"

namespace py = pybind11;
using namespace dil_fast;

namespace {

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("dil_fast._C: " + msg);
}

void check_adam(const AdamArgs& a) {
  require(a.dtype == kFloat32 || a.dtype == kFloat64, "dtype must be float32 (0) or float64 (1).");
  require(a.rows >= 0 && a.cols >= 0, "rows and cols must be non-negative.");
  require(a.rows * a.cols == 0 || (a.param && a.grad && a.exp_avg && a.exp_avg_sq),
          "param, grad, exp_avg and exp_avg_sq must all be valid addresses when there is work to do.");
  require(a.step != 0 && a.step_numel >= 1, "a float32 step tensor with at least one element is required.");
  require(a.lr != 0 && (a.lr_numel == 1 || a.lr_numel == a.rows), "lr must have one element or one per row.");
  require(a.lr_dtype == kFloat32 || a.lr_dtype == kFloat64, "lr must be float32 (0) or float64 (1).");
  require(a.beta1 >= 0.0 && a.beta1 < 1.0 && a.beta2 >= 0.0 && a.beta2 < 1.0, "betas must lie in [0, 1).");
  require(a.eps >= 0.0 && a.weight_decay >= 0.0, "eps and weight_decay must be non-negative.");
}

void check_meta(const MetaArgs& m) {
  check_adam(m.adam);
  require(m.adam.rows >= 1, "the meta step needs at least one source row.");
  require(m.adam.lr_numel == 1, "the meta step takes one learning rate.");
  require(m.adam.grad_scale == 0, "the meta step takes no gradient scale.");
  require(m.mode == 0 || m.mode == 1, "mode must be 0 (mean of meta - source) or 1 (mean of sources).");
  require(!(m.reset && m.mode == 1), "reset copies meta into the sources and only makes sense with mode 0.");
}

void check_sgd(const SgdArgs& a) {
  require(a.dtype == kFloat32 || a.dtype == kFloat64, "dtype must be float32 (0) or float64 (1).");
  require(a.rows >= 0 && a.cols >= 0, "rows and cols must be non-negative.");
  require(a.rows * a.cols == 0 || (a.param && a.grad), "param and grad must be valid addresses.");
  require(a.lr != 0 && (a.lr_numel == 1 || a.lr_numel == a.rows), "lr must have one element or one per row.");
  require(a.lr_dtype == kFloat32 || a.lr_dtype == kFloat64, "lr must be float32 (0) or float64 (1).");
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

  m.def("set_cpu_isa", &set_cpu_isa, py::arg("isa"),
        "Choose the ISA of the CPU twins: auto, generic or avx2 (dil_fast passes DIL_FAST_CPU_ISA once).");
  m.def("cpu_isa", &cpu_isa_name, "The ISA the CPU twins run: avx2 or generic.");

  m.def(
      "flat_launch_plan",
      [](int64_t rows, int64_t cols, int elem_bytes, const std::vector<uintptr_t>& buffers, int sm_count,
         int blocks_per_sm, uintptr_t side, int64_t side_rows) {
        const FlatLaunchPlan p =
            flat_launch_plan(rows, cols, elem_bytes, buffers, side, side_rows, sm_count, blocks_per_sm);
        py::list splits;
        for (int64_t k = 0; k < p.rows; ++k) {
          const RowSplit s = row_split(p, k);
          splits.append(py::make_tuple(s.head, s.body, s.tail));
        }
        py::dict out;
        out["rows"] = p.rows;
        out["cols"] = p.cols;
        out["vec"] = p.vec;
        out["line"] = p.line;
        out["lead"] = p.lead;
        out["side_vec"] = p.side_vec;
        out["block"] = p.block;
        out["grid_x"] = p.grid_x;
        out["grid_y"] = p.grid_y;
        out["splits"] = splits;
        return out;
      },
      py::arg("rows"), py::arg("cols"), py::arg("elem_bytes"), py::arg("buffers"), py::arg("sm_count"),
      py::arg("blocks_per_sm"), py::arg("side") = 0, py::arg("side_rows") = 0,
      "The launch plan the flat-buffer CUDA kernels use (csrc/launch_plan.h), computed on the host: vector "
      "width, alignment line and row 0's lead in it (elements), whether the side buffer is read in vectors, "
      "block, grid and each row's (head, body, tail) element counts. Adam: buffers = [param, grad, exp_avg, exp_avg_sq]; meta step: "
      "rows = 1, buffers = [meta, exp_avg, exp_avg_sq], side = sources with side_rows = K; SGD: "
      "buffers = [param, grad], side = base with side_rows = 1.");

  py::class_<AdamArgs>(m, "AdamArgs", "Arguments of adam_cpu / adam_cuda (see optim.h).")
      .def(py::init<>())
      .def_readwrite("dtype", &AdamArgs::dtype)
      .def_readwrite("rows", &AdamArgs::rows)
      .def_readwrite("cols", &AdamArgs::cols)
      .def_readwrite("param", &AdamArgs::param)
      .def_readwrite("grad", &AdamArgs::grad)
      .def_readwrite("exp_avg", &AdamArgs::exp_avg)
      .def_readwrite("exp_avg_sq", &AdamArgs::exp_avg_sq)
      .def_readwrite("step", &AdamArgs::step)
      .def_readwrite("step_numel", &AdamArgs::step_numel)
      .def_readwrite("lr", &AdamArgs::lr)
      .def_readwrite("lr_dtype", &AdamArgs::lr_dtype)
      .def_readwrite("lr_numel", &AdamArgs::lr_numel)
      .def_readwrite("beta1", &AdamArgs::beta1)
      .def_readwrite("beta2", &AdamArgs::beta2)
      .def_readwrite("eps", &AdamArgs::eps)
      .def_readwrite("weight_decay", &AdamArgs::weight_decay)
      .def_readwrite("adamw", &AdamArgs::adamw)
      .def_readwrite("found_inf", &AdamArgs::found_inf)
      .def_readwrite("grad_scale", &AdamArgs::grad_scale);

  py::class_<MetaArgs>(m, "MetaArgs", "Arguments of meta_adam_cpu / meta_adam_cuda: `adam` describes meta "
                                      "(param) and the [rows, cols] sources (grad).")
      .def(py::init<>())
      .def_readwrite("adam", &MetaArgs::adam)
      .def_readwrite("mode", &MetaArgs::mode)
      .def_readwrite("reset", &MetaArgs::reset);

  py::class_<SgdArgs>(m, "SgdArgs", "Arguments of sgd_cpu / sgd_cuda (see optim.h).")
      .def(py::init<>())
      .def_readwrite("dtype", &SgdArgs::dtype)
      .def_readwrite("rows", &SgdArgs::rows)
      .def_readwrite("cols", &SgdArgs::cols)
      .def_readwrite("param", &SgdArgs::param)
      .def_readwrite("grad", &SgdArgs::grad)
      .def_readwrite("base", &SgdArgs::base)
      .def_readwrite("lr", &SgdArgs::lr)
      .def_readwrite("lr_dtype", &SgdArgs::lr_dtype)
      .def_readwrite("lr_numel", &SgdArgs::lr_numel)
      .def_readwrite("weight_decay", &SgdArgs::weight_decay)
      .def_readwrite("found_inf", &SgdArgs::found_inf);

  m.def(
      "adam_cpu",
      [](const AdamArgs& a, int threads) {
        check_adam(a);
        py::gil_scoped_release nogil;
        adam_cpu(a, threads);
      },
      py::arg("args"), py::arg("threads"),
      "Adam/AdamW over [rows, cols] float buffers on the CPU; steps read before and incremented after.");
  m.def(
      "adam_cuda",
      [](const AdamArgs& a, int device, uintptr_t stream) {
        check_adam(a);
        adam_cuda(a, device, stream);
      },
      py::arg("args"), py::arg("device"), py::arg("stream"),
      "Adam/AdamW over [rows, cols] device buffers, launched on `stream` of `device`.");
  m.def(
      "meta_adam_cpu",
      [](const MetaArgs& a, int threads) {
        check_meta(a);
        py::gil_scoped_release nogil;
        meta_adam_cpu(a, threads);
      },
      py::arg("args"), py::arg("threads"),
      "Meta Adam step on the CPU with the gradient reduced from [rows, cols] sources.");
  m.def(
      "meta_adam_cuda",
      [](const MetaArgs& a, int device, uintptr_t stream) {
        check_meta(a);
        meta_adam_cuda(a, device, stream);
      },
      py::arg("args"), py::arg("device"), py::arg("stream"),
      "Meta Adam step on `stream` of `device` with the gradient reduced from [rows, cols] sources.");
  m.def(
      "sgd_cpu",
      [](const SgdArgs& a, int threads) {
        check_sgd(a);
        py::gil_scoped_release nogil;
        sgd_cpu(a, threads);
      },
      py::arg("args"), py::arg("threads"), "SGD over [rows, cols] on the CPU, optionally from a broadcast [cols] base.");
  m.def(
      "sgd_cuda",
      [](const SgdArgs& a, int device, uintptr_t stream) {
        check_sgd(a);
        sgd_cuda(a, device, stream);
      },
      py::arg("args"), py::arg("device"), py::arg("stream"), "SGD over [rows, cols] on `stream` of `device`.");
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
