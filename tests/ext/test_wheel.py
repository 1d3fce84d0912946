"""The wheel builds, installs into a fresh virtualenv (no nvcc needed there) and imports."""
from __future__ import annotations

import glob
import os
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


@pytest.mark.slow
@pytest.mark.ext
def test_wheel_builds_installs_and_imports(tmp_path):
    if os.environ.get("DIL_FAST_BUILD_EXT", "1").strip() == "0":
        pytest.skip("DIL_FAST_BUILD_EXT=0: no extension to put in a wheel")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if _support().find_toolkit()["nvcc"]:  # an explicit arch list without nvcc fails the build, by design
        env.setdefault("DIL_FAST_CUDA_ARCHS", "90")
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), ROOT],
        env=env, cwd=tmp_path)
    (whl,) = glob.glob(str(wheels / "dil_fast-*.whl"))
    names = zipfile.ZipFile(whl).namelist()
    assert any(n.startswith("dil_fast/_C") and n.endswith(".so") for n in names), names
    assert "dil_fast/kernels/__init__.py" in names
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
    out = run([py, "-c", "import dil_fast, dil_fast._C as C; print(dil_fast.__file__); print(C.has_cuda())"],
              env=clean_env, cwd=tmp_path)
    assert str(venv) in out.splitlines()[0], "imported the checkout instead of the installed wheel"
    has_cuda = out.splitlines()[1] == "True"
    cli = subprocess.run([str(venv / "bin" / "dil-fast"), "info"], capture_output=True, text=True, env=clean_env,
                         cwd=tmp_path)
    info = cli.stdout
    if cli.returncode != 0:
        # Only tolerated when the outer environment lacks a declared runtime dependency that the CLI
        # imports (a dev venv without opencv); CI installs .[test] and must pass the real command.
        missing = next((m for m in ("cv2", "numpy") if f"No module named '{m}'" in cli.stderr), None)
        assert missing and subprocess.run([sys.executable, "-c", f"import {missing}"]).returncode != 0, cli.stderr
        info = run([py, "-c", "from dil_fast._info import collect, format_info; print(format_info(collect()))"],
                   env=clean_env, cwd=tmp_path)
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
    assert flags == ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
                     "-gencode", "arch=compute_90,code=compute_90"]
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
NO_STATIC_RUNTIME = {"nvcc": "/opt/cuda/bin/nvcc", "home": None, "include": None, "cudart_static": None,
                     "searched": ["/opt/cuda", "/usr/local/cuda"]}
COMPLETE = {"nvcc": "/opt/cuda/bin/nvcc", "home": "/opt/cuda", "include": "/opt/cuda/include",
            "cudart_static": "/opt/cuda/lib64/libcudart_static.a", "searched": ["/opt/cuda"]}


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


@pytest.mark.parametrize("mode,archs", [("auto", ""), ("auto", "90"), ("1", "")],
                         ids=["auto", "explicit-archs", "required"])
def test_cuda_decision_with_nvcc_but_no_static_runtime_fails(mode, archs):
    s = _support()
    with pytest.raises(SystemExit) as exc:
        s.decide_cuda(mode, archs, NO_STATIC_RUNTIME)
    assert_one_sentence_naming(exc, "nvcc was found at /opt/cuda/bin/nvcc", "libcudart_static.a",
                               "/opt/cuda, /usr/local/cuda", "cannot be built")
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
    out = run([sys.executable, "-c", "from dil_fast._info import collect, format_info; print(format_info(collect()))"],
              env=env, cwd=ROOT)
    line = next(ln for ln in out.splitlines() if ln.startswith("native_core"))
    assert "not loaded" in line and "DIL_FAST_DISABLE_EXT" in line
    assert "cuda_archs" not in out  # nothing is claimed about a module that did not load


def test_info_names_the_triton_mode():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "dil_fast", "info"], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr
    assert "interpreter: kernels run on CPU tensors" in out.stdout
