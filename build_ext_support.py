"""Build support for the native core ``dil_fast._C`` (used by setup.py; see docs/ENV.md).

C++ sources are always compiled (g++ -O3 plus :data:`CXX_FLAGS`, no -march: the CPU twins pick
their ISA at run time, see csrc/cpu_isa.h). ``.cu`` sources are compiled with nvcc when it is
found (``CUDA_HOME``/``CUDA_PATH``, then ``PATH``, then ``/usr/local/cuda``) for the archs in
``DIL_FAST_CUDA_ARCHS`` (SASS for each, PTX for the newest) and the CUDA runtime is linked
statically. ``DIL_FAST_BUILD_CUDA=0|1`` forces either way; ``DIL_FAST_BUILD_EXT=0`` builds nothing.
libstdc++ and libgcc are linked statically and only ``PyInit__C`` is exported, so ``_C`` needs no
particular libstdc++ (GLIBCXX) on the machine that loads it. ``DIL_FAST_MANYLINUX=2_28`` also
makes it load on glibc 2.28 (RHEL 8 and newer, where torch's own wheels load): see
:func:`manylinux_plan`.
Only a machine without nvcc where nothing asked for CUDA gets a CPU-only ``_C`` without a word:
an explicit arch list, DIL_FAST_BUILD_CUDA=1, or an nvcc that cannot build (no static runtime,
a compile error) fails the build with the cause and the switch (:func:`decide_cuda`).
Nothing here probes hardware: only files and environment variables are read.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

DEFAULT_ARCHS = "80;86;89;90"
CSRC = "csrc"
# -fno-math-errno: sqrt becomes one instruction (errno handling blocks vectorising the twins).
# -ffp-contract=off: no FMA contraction, so vector, scalar and per-ISA code give the same bits.
# -pthread: the twins keep a pool of std::threads (csrc/cpu_pool.h).
CXX_FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-pthread"]


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _flag(name: str, default: str) -> str:
    value = _env(name, default).lower()
    if value in ("1", "true", "yes", "on"):
        return "1"
    if value in ("0", "false", "no", "off"):
        return "0"
    if value in ("", "auto"):
        return "auto"
    raise SystemExit(f"{name}={value!r}: expected 0, 1 or auto (see docs/ENV.md)")


def want_extension() -> bool:
    return _flag("DIL_FAST_BUILD_EXT", "1") != "0"


def parse_archs(spec: str) -> list[str]:
    """``"80;86;89;90"`` (also ``8.0``, ``sm_90``, ``90a``, commas or spaces) -> ``["80", ...]``."""
    archs = []
    for tok in spec.replace(",", ";").replace(" ", ";").split(";"):
        tok = tok.strip().lower().removeprefix("sm_").removeprefix("compute_").replace(".", "")
        if not tok:
            continue
        digits = tok.rstrip("af")
        if not digits.isdigit() or len(digits) < 2:
            raise SystemExit(f"DIL_FAST_CUDA_ARCHS: {tok!r} is not a CUDA arch such as 80, 8.6 or 90a")
        if tok not in archs:
            archs.append(tok)
    if not archs:
        raise SystemExit("DIL_FAST_CUDA_ARCHS is empty; give at least one arch, e.g. 90")
    return sorted(archs, key=lambda a: (int(a.rstrip("af")), a))


def gencode_flags(archs: list[str]) -> tuple[list[str], list[str]]:
    """nvcc -gencode flags (SASS for every arch, PTX for the newest) and the target names."""
    flags, names = [], []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        names.append(f"sm_{a}")
    newest = archs[-1]
    flags += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]
    names.append(f"compute_{newest}")
    return flags, names


def _cuda_home_candidates(nvcc: str | None) -> list[str]:
    out = [_env("CUDA_HOME"), _env("CUDA_PATH")]
    if nvcc:
        out.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    out.append("/usr/local/cuda")
    return [c for c in out if c]


def _static_cudart(home: str) -> str | None:
    for sub in ("lib64", "lib", "targets/*/lib"):
        for d in glob.glob(os.path.join(home, sub)):
            lib = os.path.join(d, "libcudart_static.a")
            if os.path.isfile(lib):
                return lib
    return None


def find_toolkit() -> dict:
    """The CUDA pieces on this machine: ``nvcc`` (None when not found) and, from the first toolkit
    root that has both, ``home``, ``include`` and ``cudart_static`` (None when no root has them;
    ``searched`` lists the roots looked at)."""
    nvcc = None
    for home in (_env("CUDA_HOME"), _env("CUDA_PATH")):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            nvcc = os.path.join(home, "bin", "nvcc")
            break
    nvcc = nvcc or shutil.which("nvcc")
    if nvcc is None and os.path.isfile("/usr/local/cuda/bin/nvcc"):
        nvcc = "/usr/local/cuda/bin/nvcc"
    found = {"nvcc": nvcc, "home": None, "include": None, "cudart_static": None, "searched": []}
    if nvcc is None:
        return found
    found["searched"] = _cuda_home_candidates(nvcc)
    for home in found["searched"]:
        include = os.path.join(home, "include")
        lib = _static_cudart(home)
        if lib and os.path.isfile(os.path.join(include, "cuda_runtime.h")):
            found.update(home=home, include=include, cudart_static=lib)
            break
    return found


_CPU_ONLY = "set DIL_FAST_BUILD_CUDA=0 to build the CPU twins only"

# Link flags of every build: no libstdc++/libgcc_s version requirement; with the version script
# (EXPORTS_MAP, written at build time) nothing but PyInit__C is exported, so neither the static
# runtime nor our template instances interpose the copies torch loads.
STATIC_RUNTIME_LINK = ["-static-libstdc++", "-static-libgcc"]
EXPORTS_MAP = "{ global: PyInit__C; local: *; };\n"


def decide_cuda(mode: str, archs_spec: str, toolkit: dict) -> dict | None:
    """What to do about CUDA; no side effects, so the cases are testable. ``mode`` is
    DIL_FAST_BUILD_CUDA (``"0"``, ``"1"`` or ``"auto"``), ``archs_spec`` DIL_FAST_CUDA_ARCHS (``""``
    when unset), ``toolkit`` what :func:`find_toolkit` found.

    Returns None for a CPU-only build (DIL_FAST_BUILD_CUDA=0, or no nvcc and nothing asked for
    CUDA) or the CUDA build plan. A build that was asked for CUDA (DIL_FAST_BUILD_CUDA=1 or an
    explicit arch list) or that found nvcc but cannot use it never turns into a quiet CPU-only
    ``_C``: it raises SystemExit with one sentence naming the cause and the switch that turns CUDA off.
    """
    if mode == "0":
        return None
    asked = "DIL_FAST_BUILD_CUDA=1" if mode == "1" else f"DIL_FAST_CUDA_ARCHS={archs_spec!r}" if archs_spec else ""
    nvcc = toolkit.get("nvcc")
    if nvcc is None:
        if not asked:
            return None
        raise SystemExit(
            f"dil_fast: {asked} asks for CUDA kernels but nvcc was not found ($CUDA_HOME/bin, $CUDA_PATH/bin, PATH, "
            f"/usr/local/cuda/bin); install the CUDA toolkit or set CUDA_HOME, or {_CPU_ONLY}."
        )
    if toolkit.get("cudart_static") is None or toolkit.get("include") is None:
        why = f"{asked} asks for CUDA kernels and " if asked else ""
        raise SystemExit(
            f"dil_fast: {why}nvcc was found at {nvcc} but no toolkit root ({', '.join(toolkit.get('searched') or [])}) "
            "has both include/cuda_runtime.h and lib64/libcudart_static.a (the CUDA runtime is linked statically), "
            f"so the CUDA kernels cannot be built; install the CUDA runtime development files or {_CPU_ONLY}."
        )
    plan = {k: toolkit[k] for k in ("nvcc", "home", "include", "cudart_static")}
    plan["archs"] = parse_archs(archs_spec or DEFAULT_ARCHS)
    plan["gencode"], plan["targets"] = gencode_flags(plan["archs"])
    return plan


def cuda_plan() -> dict | None:
    """:func:`decide_cuda` for this machine and environment."""
    mode = _flag("DIL_FAST_BUILD_CUDA", "auto")
    plan = decide_cuda(mode, _env("DIL_FAST_CUDA_ARCHS"), find_toolkit() if mode != "0" else {})
    if plan is None and mode == "auto":
        print("dil_fast: nvcc not found; building the C++ CPU twins only", file=sys.stderr)
    return plan


def parse_glibc(spec: str) -> str | None:
    """DIL_FAST_MANYLINUX (``2_28``, ``2.28``, ``manylinux_2_28``; empty or ``0``: off) -> ``"2.28"``."""
    spec = spec.strip().lower().removeprefix("manylinux_").removeprefix("manylinux")
    if spec in ("", "0", "off", "no", "false"):
        return None
    parts = spec.replace("_", ".").split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or parts[0] != "2" or not 17 <= int(parts[1]) <= 99:
        raise SystemExit(f"DIL_FAST_MANYLINUX={spec!r}: expected a glibc version such as 2_28 (see docs/ENV.md)")
    return f"2.{int(parts[1])}"


# What the build machine's newer toolchain leaves behind that glibc 2.28 lacks, defined inside _C
# (hidden): libstdc++ reads __libc_single_threaded (glibc 2.32; 0 = "threads may exist", always
# safe: its reference counts stay atomic) and its random_device can call arc4random (glibc 2.36;
# dil_fast never asks for it, and getrandom, glibc 2.25, gives the same contract).
_OLD_GLIBC_SHIM = """\
#include <stdint.h>
#include <sys/random.h>
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
__attribute__((visibility("hidden"))) uint32_t arc4random(void) {
  uint32_t v;
  while (getrandom(&v, sizeof v, 0) != (long)sizeof v) {
  }
  return v;
}
"""


def _gcc_file(name: str) -> str:
    """The path of ``name`` in g++'s library search (``libstdc++.a``, ``libgcc_s.so.1``)."""
    try:
        path = subprocess.run(
            ["g++", f"-print-file-name={name}"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"dil_fast: DIL_FAST_MANYLINUX needs g++ to locate {name} ({exc}).") from exc
    if not os.path.isabs(path) or not os.path.isfile(path):
        raise SystemExit(
            f"dil_fast: DIL_FAST_MANYLINUX needs {name} from g++ (libstdc++ development files), "
            "but g++ does not find it; install them or unset DIL_FAST_MANYLINUX."
        )
    return path


def manylinux_plan(glibc: str | None, machine: str | None = None) -> dict | None:
    """How ``_C`` is linked for ``DIL_FAST_MANYLINUX`` (None: the plain link).

    The objects are compiled by the usual compilers (g++, nvcc); only the final link changes: it
    runs through Zig's linker (``pip install ziglang``), which links against stubs of glibc
    ``glibc``, so every glibc symbol is bound to a version that release has; libstdc++ and libgcc
    stay static, the unwinder comes from libgcc_s.so.1 (on every manylinux system; the static
    one needs glibc 2.35), two symbols newer than glibc 2.28 are defined inside ``_C``
    (``_OLD_GLIBC_SHIM``), and a version script exports ``PyInit__C`` alone. ``auditwheel
    repair --plat manylinux_2_28_<arch>`` then tags the wheel.
    """
    if glibc is None:
        return None
    import platform

    machine = machine or platform.machine()
    if sys.platform != "linux" or machine not in ("x86_64", "aarch64"):
        raise SystemExit(f"DIL_FAST_MANYLINUX is for Linux x86_64/aarch64 wheels, not {sys.platform} {machine}.")
    try:
        import ziglang  # noqa: F401
    except ImportError:
        raise SystemExit(
            f"dil_fast: DIL_FAST_MANYLINUX={glibc} links through Zig's linker, which is not "
            "installed; pip install ziglang, or unset DIL_FAST_MANYLINUX for a wheel for this "
            "machine's glibc."
        ) from None
    return {
        "glibc": glibc,
        "linker": [sys.executable, "-m", "ziglang", "cc", "-target", f"{machine}-linux-gnu.{glibc}", "-shared"],
        "archives": [_gcc_file("libstdc++.a"), _gcc_file("libgcc.a")],
        "libgcc_s": _gcc_file("libgcc_s.so.1"),
    }


def make_extension():
    """The ``dil_fast._C`` extension and the build_ext class that compiles its ``.cu`` files."""
    try:
        from pybind11.setup_helpers import Pybind11Extension, build_ext
    except ImportError as exc:
        raise SystemExit(
            "building dil_fast._C needs pybind11: `pip install pybind11` (the build uses "
            "--no-build-isolation), or set DIL_FAST_BUILD_EXT=0 for a pure-Python install"
        ) from exc

    cuda = cuda_plan()
    sources = [f"{CSRC}/module.cpp", f"{CSRC}/optim_cpu.cpp"]
    if cuda is None:
        sources.append(f"{CSRC}/cuda_stub.cpp")
    ext = Pybind11Extension(
        "dil_fast._C",
        sources,
        include_dirs=[CSRC],
        cxx_std=17,
        extra_compile_args=CXX_FLAGS,
        extra_link_args=["-pthread", *STATIC_RUNTIME_LINK],
        depends=glob.glob(f"{CSRC}/*.h") + glob.glob(f"{CSRC}/*.cu"),
    )
    if cuda is not None:
        ext.libraries += ["rt", "pthread", "dl"]
    portable = manylinux_plan(parse_glibc(_env("DIL_FAST_MANYLINUX")))

    class BuildExt(build_ext):
        """build_ext that first compiles csrc/*.cu with nvcc and links the objects in."""

        def build_extension(self, ext_):
            # A build folder reused with other switches (CUDA on/off, archs) must not keep a stale _C.
            stamp_path = os.path.join(self.build_temp, "dil_fast_build_config.txt")
            stamp = repr(
                (
                    None if cuda is None else (cuda["nvcc"], cuda["gencode"], cuda["cudart_static"]),
                    None if portable is None else portable["glibc"],
                    STATIC_RUNTIME_LINK,
                )
            )
            old = open(stamp_path).read() if os.path.isfile(stamp_path) else None
            if old != stamp:
                self.force = True
            if cuda is not None and ext_.name == "dil_fast._C":
                ext_.extra_objects = self._compile_cuda() + [cuda["cudart_static"]]
            os.makedirs(self.build_temp, exist_ok=True)
            self._exports = os.path.join(os.path.abspath(self.build_temp), "dil_fast_exports.map")
            with open(self._exports, "w") as f:
                f.write(EXPORTS_MAP)
            if portable is not None:
                ext_.extra_objects = list(ext_.extra_objects or []) + [self._compile_shim()]
                self.compiler.link = self._link_portable
            else:
                ext_.extra_link_args = [a for a in ext_.extra_link_args if not a.startswith("-Wl,--version-script")]
                ext_.extra_link_args.append(f"-Wl,--version-script={self._exports}")
            super().build_extension(ext_)
            os.makedirs(self.build_temp, exist_ok=True)
            with open(stamp_path, "w") as f:
                f.write(stamp)

        def _compile_shim(self) -> str:
            src = os.path.join(self.build_temp, "old_glibc_shim.c")
            with open(src, "w") as f:
                f.write(_OLD_GLIBC_SHIM)
            (obj,) = self.compiler.compile([src], output_dir=self.build_temp, extra_postargs=["-O2", "-fPIC"])
            return obj

        def _link_portable(self, _target_desc, objects, output_filename, output_dir=None, *_args, **_kwargs):
            """The compiler's ``link`` for DIL_FAST_MANYLINUX (:func:`manylinux_plan`)."""
            if output_dir is not None:
                output_filename = os.path.join(output_dir, output_filename)
            os.makedirs(os.path.dirname(os.path.abspath(output_filename)), exist_ok=True)
            cmd = [
                *portable["linker"],
                "-o",
                output_filename,
                *objects,
                *portable["archives"],
                portable["libgcc_s"],
                "-lm",
                "-lpthread",
                "-ldl",
                "-lrt",
                "-pthread",
                f"-Wl,--version-script={self._exports}",
            ]
            print("dil_fast: " + " ".join(cmd), file=sys.stderr)
            try:
                subprocess.run(cmd, check=True)
            except (OSError, subprocess.CalledProcessError) as exc:
                raise SystemExit(
                    f"dil_fast: the glibc {portable['glibc']} link of _C failed ({exc}); unset "
                    "DIL_FAST_MANYLINUX for a wheel for this machine's glibc."
                ) from exc

        def _compile_cuda(self) -> list[str]:
            out_dir = os.path.join(self.build_temp, "cuda")
            os.makedirs(out_dir, exist_ok=True)
            # The target list reaches the code through a generated header: nvcc splits -D values
            # on commas.
            with open(os.path.join(out_dir, "df_build_info.h"), "w") as f:
                f.write(f'#define DF_CUDA_ARCHS "{",".join(cuda["targets"])}"\n')
            objects = []
            for src in sorted(glob.glob(f"{CSRC}/*.cu")):
                obj = os.path.join(out_dir, os.path.basename(src) + ".o")
                inputs = [src, *glob.glob(f"{CSRC}/*.h")]
                if (
                    not self.force
                    and os.path.isfile(obj)
                    and all(os.path.getmtime(obj) >= os.path.getmtime(i) for i in inputs)
                ):
                    objects.append(obj)
                    continue
                cmd = [
                    cuda["nvcc"],
                    "-c",
                    src,
                    "-o",
                    obj,
                    "-O3",
                    "-std=c++17",
                    "--threads",
                    "0",
                    "-Xcompiler",
                    "-fPIC",
                    "-I",
                    CSRC,
                    "-I",
                    out_dir,
                    "-include",
                    "df_build_info.h",
                    *cuda["gencode"],
                ]
                print("dil_fast: " + " ".join(cmd), file=sys.stderr)
                try:
                    subprocess.run(cmd, check=True)
                except (OSError, subprocess.CalledProcessError) as exc:
                    raise SystemExit(
                        f"dil_fast: nvcc failed on {src} ({exc}), so the CUDA kernels cannot be built; fix the "
                        f"toolkit or {_CPU_ONLY}."
                    ) from exc
                objects.append(obj)
            return objects

    return [ext], {"build_ext": BuildExt}
