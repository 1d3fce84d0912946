"""Build script: packages, the kernels/ -> dil_fast.kernels mapping, and the native core dil_fast._C.

Build switches are environment variables (docs/ENV.md); the logic lives in build_ext_support.py.
"""
import os
import sys

from setuptools import find_packages, setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_ext_support  # noqa: E402

packages = find_packages(include=["dil_fast", "dil_fast.*"]) + ["dil_fast.kernels"]
ext_modules, cmdclass = build_ext_support.make_extension() if build_ext_support.want_extension() else ([], {})

setup(
    packages=packages,
    package_dir={"dil_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
