// DF_HD marks a function both compilers see: host + device (inlined) under nvcc, plain inline in
// the C++ build of the CPU twins and the bindings.
#pragma once

#if defined(__CUDACC__)
#define DF_HD __host__ __device__ __forceinline__
#else
#define DF_HD inline
#endif
