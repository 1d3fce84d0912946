"""dil_fast's hot ops, one module per op (family), each registered with the dispatcher
(:mod:`dil_fast.backends`) and, where a kernel exists, as a ``dil_fast::`` dispatcher op:

=============== ============================== ============================ ==========================
op module       public functions               kernels                      reference
=============== ============================== ============================ ==========================
noise           gaussian_noise                 kernels/noise.py (Triton)    reference/noise.py
blur            blur_separable, blur2d         kernels/blur.py (Triton)     reference/blur.py
resize          resize                         kernels/resize.py (Triton)   reference/resize.py
jpeg            jpeg                           kernels/jpeg.py (Triton)     reference/jpeg.py
poisson         poisson_noise                  (none)                       reference/poisson.py
rain            add_rain                       blur2d's                     reference/rain.py
isp             camera_noise                   (none; JPEG stage: jpeg's)   reference/isp.py
sample_crops    sample_crops                   kernels/sample_crops.py      reference/sample_crops.py
optim           adam_step_, meta_step_,        csrc/optim*.{h,cpp,cu}       reference/optim.py
                sgd_step_, nonfinite_check_    (native CUDA + C++ twins)
=============== ============================== ============================ ==========================

Importing this package declares every op (the explicit list below).
"""

from . import blur, isp, jpeg, noise, optim, poisson, rain, resize, sample_crops  # noqa: F401

__all__ = ["blur", "isp", "jpeg", "noise", "optim", "poisson", "rain", "resize", "sample_crops"]
