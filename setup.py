"""Build script: packages, the kernels/ -> dil_fast.kernels and bench/ -> dil_fast.benchmarks mappings,
and the native core dil_fast._C.

Build switches are environment variables (docs/ENV.md); the logic lives in build_ext_support.py.
"""

import os
import sys

from setuptools import find_packages, setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_ext_support  # noqa: E402

# kernels/ and bench/ stay top-level folders of the repository; installed they live inside the package
# (dil-fast bench finds the benchmarks there outside a checkout)
package_dir = {"dil_fast.kernels": "kernels", "dil_fast.benchmarks": "bench"}
packages = find_packages(include=["dil_fast", "dil_fast.*"]) + list(package_dir)
ext_modules, cmdclass = build_ext_support.make_extension() if build_ext_support.want_extension() else ([], {})

setup(
    packages=packages,
    package_dir=package_dir,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
