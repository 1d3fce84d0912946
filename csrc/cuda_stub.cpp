// Linked instead of optim_cuda.cu when the extension is built without nvcc: the CUDA entry points
// exist and say why they cannot run.
#include <stdexcept>

#include "optim.h"

namespace dil_fast {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw std::runtime_error(std::string("dil_fast._C.") + what +
                           ": this build has no CUDA kernels (nvcc was not found or "
                           "DIL_FAST_BUILD_CUDA=0); rebuild with nvcc on PATH or CUDA_HOME set.");
}
}  // namespace

bool cuda_compiled() { return false; }
std::vector<std::string> cuda_archs_compiled() { return {}; }
int cuda_runtime_version_compiled() { return 0; }
int cuda_runtime_version() { return 0; }
int cuda_driver_version() { return 0; }
int cuda_device_count() { return 0; }
void adam_cuda(const AdamArgs&, int, uintptr_t) { no_cuda("adam_cuda"); }
void meta_adam_cuda(const MetaArgs&, int, uintptr_t) { no_cuda("meta_adam_cuda"); }
void sgd_cuda(const SgdArgs&, int, uintptr_t) { no_cuda("sgd_cuda"); }
void nonfinite_cuda(int, int64_t, uintptr_t, uintptr_t, int, uintptr_t) { no_cuda("nonfinite_cuda"); }

}  // namespace dil_fast
