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
    env = {**os.environ, "DIL_FAST_CUDA_ARCHS": os.environ.get("DIL_FAST_CUDA_ARCHS", "90"),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
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
        with pytest.raises(SystemExit, match="no CUDA toolkit"):
            s.cuda_plan()
    else:
        plan = s.cuda_plan()
        assert plan["targets"] == ["sm_90", "compute_90"] and plan["cudart_static"].endswith("libcudart_static.a")


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
