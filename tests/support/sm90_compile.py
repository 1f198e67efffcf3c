"""Compile the prune and entropy Triton kernels for an H100 (sm_90) without a GPU, and report
ptxas's registers and spills.

The interpreter runs kernels as numpy, so it misses what only the compiler checks (constexpr
globals, types of loop-carried values, dot operand layouts) and says nothing about register
pressure.  triton.compile with an explicit GPUTarget needs no device: it runs the whole pipeline
to PTX, and triton's bundled ptxas assembles it.  Run without TRITON_INTERPRET (the kernels must be
defined for the compiler):

    python tests/support/sm90_compile.py        # one line per kernel; exit status 1 if any fails to compile

tests/test_triton_compile.py runs it and checks the lines.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("run without TRITON_INTERPRET: the kernels must be defined for the compiler")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ada_vtp_kernels import spec  # noqa: E402
from ada_vtp_kernels.kernels.entropy import triton as entropy  # noqa: E402
from ada_vtp_kernels.kernels.prune import triton as prune  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
F32, F64, I32, I64 = "*fp32", "*fp64", "*i32", "*i64"


def cases():
    """(label, kernel, argument types by name (others: i32), constexprs, launch options)."""
    tiles = prune.GPU_TILES
    dist = {"NORM_EPS": spec.NORM_EPS, "SNAP": spec.DISTANCE_SNAP, "BLOCK_I": tiles.dist,
            "BLOCK_J": tiles.dist, "BLOCK_D": tiles.dist_d}
    x = {"lengths_ptr": I32, "scale_ptr": F64, "norms_ptr": F32, "dist_ptr": F32, "stride_xb": "i64"}
    yield ("norms bf16", prune._row_norms_kernel, {**x, "x_ptr": "*bf16"},
           {"BLOCK_N": tiles.norm_n, "BLOCK_D": tiles.norm_d}, {})
    for dtype, native in (("*bf16", True), ("*fp16", True), ("*fp32", False)):
        yield (f"distances {dtype[1:]}", prune._distance_kernel, {**x, "x_ptr": dtype},
               {**dist, "NATIVE_DOT": native}, {"num_warps": prune.DIST_WARPS})
    warps = {"num_warps": prune.SELECT_WARPS}
    for block_n in (1024, 4096):  # LLaVA-1.5 (576 tokens) and LLaVA-NeXT (2880)
        for mode, name in ((prune.MODE_MAXMIN, "maxmin"), (prune.MODE_AGILE, "agile")):
            yield (f"select {name} N<={block_n}", prune._select_diverse_kernel,
                   {"dist_ptr": F32, "rank_ptr": I32, "order_ptr": I64, "count_ptr": I32, "complexity_ptr": F64,
                    "params_ptr": F64, "lengths_ptr": I32, "out_ptr": I64},
                   {"MODE": mode, "BLOCK_N": block_n, "BLOCK_I": max(1, tiles.first_pick // block_n)}, warps)
        yield (f"select dpp N<={block_n}", prune._select_dpp_kernel,
               {"dist_ptr": F32, "relevance_ptr": F32, "relevance_rank_ptr": I32, "params_ptr": F64, "c_ptr": F64,
                "lengths_ptr": I32, "out_ptr": I64}, {"BLOCK_N": block_n}, warps)
        yield (f"select vispruner N<={block_n}", prune._select_vispruner_kernel,
               {"dist_ptr": F32, "order_ptr": I64, "count_ptr": I32, "rest_ptr": I32, "key_ptr": I64,
                "lengths_ptr": I32, "out_ptr": I64},
               {"ROUND": spec.VISPRUNER_ROUND, "BLOCK_N": block_n, "BLOCK_A": tiles.vispruner,
                "BLOCK_B": tiles.vispruner}, warps)
    yield ("attention entropy", entropy._attention_entropy_kernel,
           {"s_ptr": F32, "lengths_ptr": I32, "out_ptr": F64}, {"BLOCK_N": entropy.BLOCK_N}, {})


def ptxas_report(ptx: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    run = subprocess.run([get_ptxas(TARGET.arch).path, "-v", f"--gpu-name=sm_{TARGET.arch}a", f.name, "-o", os.devnull],
                         capture_output=True, text=True)
    os.unlink(f.name)
    lines = [line.split("info    :")[-1].strip() for line in run.stderr.splitlines()
             if "registers" in line or "spill" in line]
    return "; ".join(lines)


def main() -> int:
    failed = 0
    for label, kernel, types, constexprs, options in cases():
        names = kernel.arg_names
        signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in names}
        source = ASTSource(fn=kernel, signature=signature,
                           constexprs={(names.index(k),): v for k, v in constexprs.items()})
        try:
            compiled = triton.compile(source, target=TARGET, options={**options, **prune.NO_FMA})
        except Exception as error:  # noqa: BLE001 - every kernel is reported, then the status says
            failed += 1
            print(f"FAIL {label}: {type(error).__name__}: {str(error)[-1500:]}")
            continue
        print(f"OK   {label}: shared {compiled.metadata.shared} B; {ptxas_report(compiled.asm['ptx'])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
