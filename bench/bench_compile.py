"""Compile report: every Triton kernel x every autotune config, compiled for CUDA sm_90 without a GPU.

Triton's own pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin through the ptxas it ships) runs for
each (kernel, launch variant, config). ptxas' verbose log gives the registers per thread and the
spill stores; the kernel metadata gives the shared memory per program. A launch variant is the
argument types and constexprs a host launcher of kernels/ passes, with the divisibility hints a
real launch gets: every pointer (torch allocations are 16-byte aligned) and, for the "aligned"
variants, the sizes and strides of images whose sides are multiples of 16; "odd-size" variants
have none (e.g. 17 x 23).

The TTIR gives the scalar int32 products of two runtime values (``k * stride``, ``H * W``): offsets
that wrap once a tensor passes 2**31 elements (K * B * C * H * W of a fused launch does); every
kernel forms them in int64. For the noise kernel the PTX also gives the Philox work: the static
``mul.hi.u32`` count of the loop body over confounders, divided by the field elements one thread
owns in it. The minimum is 10 rounds x 2 products per counter / 4 normals per counter = 5; a
thread with n counters does 18 n + 2 (4.75 per element for n = 2) because the products of rounds
1 and 2 that see only the counter words shared by all counters of a program are computed once.

The PTX gives the approximate math (APPROX_MATH, static counts): div.full / div.approx (division
to 2 ulp), rcp/sqrt/ex2/lg2/sin/cos.approx, fma.rn.f32 (LLVM's contraction of a * b + c: one
rounding where torch rounds twice) and mul/add/sub.f32 with no rounding modifier (ptxas may still
contract those). NUMERICS says, for every kernel, what of its output is claimed bit-exact against
its torch reference and which of these kinds lie outside the claim (with the reason), or why the
kernel claims nothing; a launch variant compiles with the launch options its host launcher passes
(the noise kernel: no FMA contraction).

Rows are appended to ``<--out>/compile.csv`` (default ``$DIL_FAST_BENCH_OUT``, else
``~/.cache/dil_fast/bench``; the curated copy is ``--out bench/results``) one by one as they
are measured: kernel, variant, config, triton, target, registers, spill_bytes (ptxas "bytes spill
stores" per thread), stack_bytes (the stack frame: spills plus local arrays, such as the 28-byte
table of libdevice's sinf/cosf range reduction), shared_bytes, int32_products,
mulhi_per_element (noise only), one column per APPROX_MATH kind, compile_s. Exit status 1 if any
config spills, has an int32 offset product, the noise kernel is above its Philox minimum, or a
kernel claimed bit-exact holds approximate math outside its allowed kinds.

    python bench/bench_compile.py                # every kernel
    python bench/bench_compile.py --kernel blur  # the kernels whose name contains 'blur'
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import add_out_argument, print_table, record  # noqa: E402
from dil_fast import backends  # noqa: E402

TARGET_ARCH = 90
NOISE_MULHI_MIN = 10 * 2 / 4  # Philox-4x32-10: 2 mul.hi per round per counter, 4 normals per counter

P32, P16, PU8, PI32, PI64 = "*fp32", "*fp16", "*u8", "*i32", "*i64"


@dataclasses.dataclass(frozen=True)
class Launch:
    """One launch variant of a kernel of ``kernels/<module>.py``.

    pointers: pointer argument -> Triton type; constexprs: the launcher's fixed constexprs;
    wide: int64 scalars (all other scalars are int32); aligned: scalars given the divisibility-16
    hint; fixed: (meta-parameters, num_warps) of a kernel that is not autotuned."""

    kernel: str
    module: str
    attr: str
    variant: str
    pointers: dict
    constexprs: dict
    wide: tuple = ()
    aligned: tuple = ()
    fixed: tuple | None = None
    options: str = ""


@dataclasses.dataclass(frozen=True)
class Config:
    meta: dict
    num_warps: int
    num_stages: int

    def label(self) -> str:
        return " ".join([*(f"{k}={v}" for k, v in self.meta.items()), f"warps={self.num_warps}"])


def launches() -> list[Launch]:
    """The variants the host launchers compile on a GPU (dtypes, mode flags, size hints)."""
    out = []
    noise_sizes = ("CHW", "HW", "stride_xk", "stride_xb", "stride_ok", "stride_ob")
    for variant, x, y, round8, gray, aligned, cl in (
        ("fp32", P32, P32, False, False, noise_sizes, False),
        ("fp32 odd-size", P32, P32, False, False, (), False),
        ("u8 gray round8", PU8, P32, True, True, noise_sizes, False),
        ("fp16", P16, P16, False, False, noise_sizes, False),
        ("u8 channels_last", PU8, P32, False, False, noise_sizes, True),
        ("u8 gray round8 channels_last", PU8, P32, True, True, noise_sizes, True),
    ):
        out.append(
            Launch(
                "noise",
                "noise",
                "_noise_fwd_kernel",
                variant,
                {"x_ptr": x, "out_ptr": y, "sigma_ptr": P32, "gray_ptr": PI32},
                {"IN_U8": x == PU8, "CLIP": True, "ROUND8": round8, "HAS_GRAY": gray, "CL": cl},
                wide=("seed_lo", "seed_hi"),
                aligned=aligned,
                options="NOISE_LAUNCH_OPTIONS",
            )
        )
    blur_sizes = ("H", "W", "stride_xk", "stride_xb", "stride_ok", "stride_ob")
    for axis, variant, x, y, aligned in (
        (1, "u8->fp32 T=21", PU8, P32, blur_sizes),  # the first pass
        (1, "fp32 T=21 odd-size", P32, P32, ()),
        (0, "fp32 T=21", P32, P32, blur_sizes),
        (0, "fp32->fp16 T=21 odd-size", P32, P16, ()),
    ):
        out.append(
            Launch(
                f"blur_sep[AXIS={axis}]",
                "blur",
                "_blur_sep_fwd_kernel",
                variant,
                {"x_ptr": x, "w_ptr": P32, "out_ptr": y},
                {"IN_SCALE": 1 / 255 if x == PU8 else 1.0, "T": 21, "AXIS": axis},
                aligned=aligned,
            )
        )
    for variant, x, y, aligned in (("fp32 T=21", P32, P32, ("H", "W")), ("u8->fp16 T=21 odd-size", PU8, P16, ())):
        out.append(
            Launch(
                "blur2d",
                "blur",
                "_blur2d_fwd_kernel",
                variant,
                {"x_ptr": x, "kern_ptr": P32, "out_ptr": y},
                {"IN_SCALE": 1 / 255 if x == PU8 else 1.0, "T": 21},
                aligned=aligned,
            )
        )
    for axis, variant, x, aligned in (
        (0, "u8->fp32", PU8, ("H_in", "W_in", "H_out", "W_out")),  # the first pass
        (0, "fp32 odd-size", P32, ()),
        (1, "fp32", P32, ("H_in", "W_in", "H_out", "W_out")),
        (1, "fp32 odd-size", P32, ()),
    ):
        out.append(
            Launch(
                f"resample[AXIS={axis}]",
                "resize",
                "_resample_fwd_kernel",
                variant,
                {"x_ptr": x, "idx_ptr": PI32, "wt_ptr": P32, "out_ptr": P32},
                {"IN_SCALE": 1 / 255 if x == PU8 else 1.0, "AXIS": axis},
                aligned=aligned,
            )
        )
    # Hp and Wp are multiples of 16 by construction (jpeg_fwd pads to whole 16 x 16 macroblocks)
    out += [
        Launch(
            "jpeg_blocks",
            "jpeg",
            "_jpeg_blocks_fwd_kernel",
            "fp32",
            {"x_ptr": P32, "q_ptr": P32, "d_ptr": P32, "out_ptr": P32},
            {},
            aligned=("Wp",),
        ),
        Launch(
            "jpeg_pre",
            "jpeg",
            "_jpeg_pre_fwd_kernel",
            "u8 odd-size",
            {"x_ptr": PU8, "y_ptr": P32, "c_ptr": P32},
            {"IN_SCALE": 1 / 255},
            aligned=("Hp", "Wp"),
            fixed=({"BH": 16, "BW": 32}, 4),
        ),
        Launch(
            "jpeg_post",
            "jpeg",
            "_jpeg_post_fwd_kernel",
            "fp16 odd-size",
            {"y_ptr": P32, "c_ptr": P32, "out_ptr": P16},
            {},
            aligned=("Hp", "Wp"),
            fixed=({"BH": 16, "BW": 32}, 4),
        ),
    ]
    for variant, y, to_float in (("fp32 p=48", P32, True), ("fp16 p=48", P16, True), ("u8 p=48", PU8, False)):
        out.append(
            Launch(
                "sample_crops",
                "sample_crops",
                "_sample_crops_fwd_kernel",
                variant,
                {"store_ptr": PU8, "perm_ptr": PI64, "out_ptr": y},
                {"PATCH": 48, "TO_FLOAT": to_float},
                wide=("key", "counter_base"),
                fixed=({"BLOCK": 1024}, 4),
            )
        )
    return out


@dataclasses.dataclass(frozen=True)
class Numerics:
    """What of a kernel's compiled output is claimed bit-exact against its pure-torch reference.

    exact: the claim (what is exact, given what, and the test that holds it under the interpreter);
    "" for a kernel compared within a tolerance. allowed: APPROX_MATH column -> why that kind of
    instruction lies outside the claim. why_not: for a kernel with no claim, why it has none."""

    exact: str = ""
    allowed: dict = dataclasses.field(default_factory=dict)
    why_not: str = ""


_TOLERANCE_STENCIL = (
    "taps summed in the reference's order, but each tap is an FMA (one rounding where torch "
    "rounds the product and the sum) and uint8 input is scaled by x * (1/255): compared within "
    "tests.helpers.triton_tol; exact would cost a second instruction per tap"
)

# The one place where a kernel claims bit-exactness: a claimed kernel whose sm_90 PTX holds any
# APPROX_MATH instruction outside its ``allowed`` kinds fails the report (and tests/ops/test_compile.py).
# The check is on the whole kernel, so an allowed kind must belong only to the part outside the claim.
NUMERICS = {
    "noise": Numerics(
        exact="everything after the normal draw (bytes / 255, x + sigma * n, clip, round8) given the same normal "
        "field, against the reference on the CPU (test_noise_kernel_exact_given_the_same_normal_field)",
        allowed={
            kind: "only the normal field's log/cos/sin (documented to agree with the reference up to their "
            "float rounding); today they are libdevice's logf/cosf/sinf, which hold none"
            for kind in ("lg2_approx", "sin_approx", "cos_approx")
        },
    ),
    "sample_crops": Numerics(
        exact="every output: byte copies, and bytes / 255 by IEEE division for float outputs "
        "(tests/ops/test_sample_crops.py, torch.equal)"
    ),
    "blur_sep[AXIS=0]": Numerics(why_not=_TOLERANCE_STENCIL),
    "blur_sep[AXIS=1]": Numerics(why_not=_TOLERANCE_STENCIL),
    "blur2d": Numerics(why_not="the reference is F.conv2d (its own summation order): compared within triton_tol"),
    "resample[AXIS=0]": Numerics(why_not=_TOLERANCE_STENCIL),
    "resample[AXIS=1]": Numerics(why_not=_TOLERANCE_STENCIL),
    "jpeg_blocks": Numerics(
        why_not="the reference's DCT is a matmul (another summation order): rare one-level "
        "rounding flips are allowed by test_jpeg_block_kernel_matches_reference"
    ),
    "jpeg_pre": Numerics(
        why_not="the colour transform's products are contracted into FMAs before rounding: "
        "rare one-level flips (test_jpeg_full_pipeline_triton_vs_torch)"
    ),
    "jpeg_post": Numerics(
        why_not="FMA-contracted colour transform and an approximate / 255: rare one-level flips "
        "and 1 ulp (test_jpeg_full_pipeline_triton_vs_torch)"
    ),
}


def _kernel(launch: Launch):
    return getattr(backends.triton_kernels(launch.module), launch.attr)


def launch_options(launch: Launch) -> dict:
    """The launch options the host launcher passes (the module constant ``launch.options`` names)."""
    return dict(getattr(backends.triton_kernels(launch.module), launch.options)) if launch.options else {}


def configs_of(launch: Launch) -> list[Config]:
    """Every autotune config of the launch's kernel (or its one fixed launch config)."""
    if launch.fixed is not None:
        meta, warps = launch.fixed
        return [Config(dict(meta), warps, 3)]
    return [Config(dict(c.kwargs), c.num_warps, c.num_stages) for c in _kernel(launch).configs]


def compile_config(launch: Launch, config: Config):
    """Compile one config for sm_90 with Triton's own pipeline; returns (CompiledKernel, ptxas log)."""
    triton = backends.triton_status().module
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _kernel(launch)
    while not isinstance(fn, triton.runtime.JITFunction):
        fn = fn.fn  # unwrap @autotune
    constexprs = {**launch.constexprs, **config.meta}
    signature = {
        name: "constexpr" if name in constexprs else launch.pointers.get(name, "i64" if name in launch.wide else "i32")
        for name in fn.arg_names
    }
    hints = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if name in launch.pointers or name in launch.aligned
    }
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=hints)
    log = io.StringIO()
    knobs = triton.knobs
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its log
        knobs.nvidia.dump_ptxas_log = True
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages, **launch_options(launch)}
        compiled = triton.compile(source, target=GPUTarget("cuda", TARGET_ARCH, 32), options=options)
    return compiled, log.getvalue()


_I32_CONSTANT = re.compile(r"(%[\w-]+) = arith\.constant -?\d+ : i32")
_I32_SCALAR_PRODUCT = re.compile(r"= arith\.muli (%[\w-]+), (%[\w-]+) : i32 ")


def int32_scalar_products(ttir: str) -> int:
    """Scalar int32 products of two runtime values in the TTIR (k * stride, H * W, ...): the
    offsets that wrap past 2**31 elements. Every kernel forms them in int64 instead."""
    constants = set(_I32_CONSTANT.findall(ttir))
    return sum(1 for a, b in _I32_SCALAR_PRODUCT.findall(ttir) if a not in constants and b not in constants)


# PTX instructions that do not round like the IEEE operation torch performs: column -> mnemonic.
# fma.rn.f32 without .ftz is LLVM's contraction of the kernel's own a * b + c (kernels/ calls no
# tl.fma); libdevice's log/sin/cos are built from explicit fma.rn.ftz.f32, not counted. A mul/add/sub
# with no rounding modifier is one ptxas may still fuse into an FFMA (it does unless the kernel is
# launched with enable_fp_fusion=False, which also makes LLVM print .rn).
APPROX_MATH = {
    "div_full": r"div\.full(?:\.ftz)?\.f32",
    "div_approx": r"div\.approx(?:\.ftz)?\.f(?:32|64)",
    "rcp_approx": r"rcp\.approx(?:\.ftz)?\.f(?:32|64)",
    "sqrt_approx": r"sqrt\.approx(?:\.ftz)?\.f32",
    "ex2_approx": r"ex2\.approx(?:\.ftz)?\.(?:f32|f16|f16x2|bf16|bf16x2)",
    "lg2_approx": r"lg2\.approx(?:\.ftz)?\.f32",
    "sin_approx": r"sin\.approx(?:\.ftz)?\.f32",
    "cos_approx": r"cos\.approx(?:\.ftz)?\.f32",
    "fma_contracted": r"fma\.rn(?:\.sat)?\.(?:f32|f16|f16x2|bf16|bf16x2)",
    "fma_contractible": r"(?:mul|add|sub)(?:\.ftz)?(?:\.sat)?\.f32",
}
_APPROX_MATH = {column: re.compile(pattern) for column, pattern in APPROX_MATH.items()}
_PTX_MNEMONIC = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][\w.]*)", re.M)


def approx_math(ptx: str) -> dict:
    """APPROX_MATH column -> how many of those instructions the PTX holds (static count)."""
    counts = dict.fromkeys(APPROX_MATH, 0)
    for mnemonic in _PTX_MNEMONIC.findall(ptx):
        for column, pattern in _APPROX_MATH.items():
            if pattern.fullmatch(mnemonic):
                counts[column] += 1
    return counts


_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def measure(launch: Launch, config: Config) -> dict:
    """The report row of one config: registers, spills, stack, shared memory, Philox work."""
    t0 = time.perf_counter()
    compiled, log = compile_config(launch, config)
    regs, frame = _PTXAS_REGISTERS.search(log), _PTXAS_FRAME.search(log)
    if regs is None or frame is None or not compiled.asm.get("cubin"):
        raise RuntimeError(f"bench_compile: no cubin or ptxas report for {launch.kernel} {config.label()}:\n{log}")
    row = {
        "kernel": launch.kernel,
        "variant": launch.variant,
        "config": config.label(),
        "triton": backends.triton_status().module.__version__,
        "target": f"sm_{TARGET_ARCH}",
        "registers": int(regs.group(1)),
        "spill_bytes": int(frame.group(2)),
        "stack_bytes": int(frame.group(1)),
        "shared_bytes": int(compiled.metadata.shared),
        "mulhi_per_element": "",
        "int32_products": int32_scalar_products(compiled.asm["ttir"]),
        **approx_math(compiled.asm["ptx"]),
    }
    if launch.kernel == "noise":
        # the confounder loop's body covers one TILE of the program's BLOCK elements
        per_thread = config.meta["TILE"] / (32 * config.num_warps)
        row["mulhi_per_element"] = round(compiled.asm["ptx"].count("mul.hi.u32") / per_thread, 3)
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    return row


def inexact(row: dict) -> dict:
    """APPROX_MATH column -> count, of the instructions a kernel claimed bit-exact (NUMERICS) may not
    hold; empty for a kernel with no claim."""
    numerics = NUMERICS.get(row.get("kernel", ""))
    if numerics is None or not numerics.exact:
        return {}
    return {
        column: int(row[column])
        for column in APPROX_MATH
        if column not in numerics.allowed and int(row.get(column) or 0)
    }


def problems(row: dict) -> list[str]:
    """What is wrong with a measured row: spills, int32 offset products, Philox work above its
    minimum, approximate math in a kernel claimed bit-exact."""
    out = []
    if int(row["spill_bytes"]):
        out.append(f"spills {row['spill_bytes']} B per thread")
    if int(row["int32_products"]):
        out.append(f"{row['int32_products']} int32 products of runtime scalars (offsets that can wrap)")
    if row["mulhi_per_element"] not in ("", None) and float(row["mulhi_per_element"]) > NOISE_MULHI_MIN:
        out.append(f"{row['mulhi_per_element']} mul.hi per element > {NOISE_MULHI_MIN:g}")
    bad = inexact(row)
    if bad:
        out.append("claimed bit-exact, but " + ", ".join(f"{n} {column}" for column, n in bad.items()))
    return out


COLUMNS = [
    "kernel",
    "variant",
    "config",
    "triton",
    "target",
    "registers",
    "spill_bytes",
    "stack_bytes",
    "shared_bytes",
    "mulhi_per_element",
    "int32_products",
    *APPROX_MATH,
    "compile_s",
]


def approx_summary(row: dict) -> str:
    """The row's non-zero APPROX_MATH counts in one cell ("-" for none), a '!' after the forbidden."""
    bad = inexact(row)
    cells = [f"{column}={row[column]}{'!' if column in bad else ''}" for column in APPROX_MATH if int(row[column])]
    return " ".join(cells) or "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default="", help="only the kernels whose name contains this text")
    add_out_argument(ap)
    args = ap.parse_args(argv)
    if backends.triton_interpret() or backends.skip_autotune():
        print(
            "bench_compile: unset TRITON_INTERPRET and DIL_FAST_SKIP_AUTOTUNE; the report compiles every "
            "autotune config with Triton's compiler",
            file=sys.stderr,
        )
        return 2
    if not backends.triton_status().available:
        print(f"bench_compile: {backends.triton_status().reason}", file=sys.stderr)
        return 2
    chosen = [launch for launch in launches() if args.kernel in launch.kernel]
    if not chosen:
        print(f"bench_compile: --kernel {args.kernel!r} matches no kernel", file=sys.stderr)
        return 2
    rows, failures, path = [], [], None
    for launch in chosen:
        for config in configs_of(launch):
            row = measure(launch, config)
            path = record("compile", [row], "cpu", out=args.out, columns=COLUMNS)
            rows.append(row)
            failures += [f"{row['kernel']} {row['variant']} {row['config']}: {p}" for p in problems(row)]
    for row in rows:
        row["approx_math"] = approx_summary(row)
    print_table(
        rows,
        [
            "kernel",
            "variant",
            "config",
            "registers",
            "spill_bytes",
            "stack_bytes",
            "shared_bytes",
            "int32_products",
            "mulhi_per_element",
            "approx_math",
        ],
    )
    print(f"triton {rows[0]['triton']}, sm_{TARGET_ARCH}, {len(rows)} configs; appended to {path}")
    for line in failures:
        print(f"FAIL {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
