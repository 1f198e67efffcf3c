"""Compile every Triton kernel launch the package makes for an H100 (sm_90) without a GPU, and
report ptxas's registers and spills.

The interpreter runs kernels as numpy, so it misses what only the compiler checks (constexpr
globals, types of loop-carried values, dot operand layouts, a Triton version's rules) and says
nothing about register pressure.  triton.compile with an explicit GPUTarget needs no device: it
runs the whole pipeline to PTX, and triton's bundled ptxas assembles it.  The launches are not a
hand-kept list: a child process records them under the interpreter (tests/support/launches.py:
every op, method and erank method at LLaVA-1.5 and LLaVA-NeXT shapes, every dtype), and each
distinct one is compiled here.  Run without TRITON_INTERPRET (the kernels must be defined for the
compiler):

    python tests/support/sm90_compile.py [ERANK_METHOD ...]   # default: exact and fast

One line per launch (OK or FAIL, shared memory, ptxas's registers and spills); exit status 1 if
any fails to compile.

tests/test_triton_compile.py runs it and checks the lines.
"""

import importlib
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("run without TRITON_INTERPRET: the kernels must be defined for the compiler")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from ada_vtp_kernels.kernels.prune import triton as prune  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def recorded_launches(erank_methods: list[str]) -> list[dict]:
    """The distinct launches, recorded by tests/support/launches.py in a child process (the
    interpreter must be on before triton is imported there, and off here)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "launches.json"
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        subprocess.run([sys.executable, str(HERE / "launches.py"), str(out), *erank_methods], env=env, check=True,
                       capture_output=True, text=True)
        return json.loads(out.read_text())


def label(launch: dict) -> str:
    constexprs = ", ".join(f"{k}={v}" for k, v in launch["constexprs"])
    pointers = ",".join(t[1:] for _, t in launch["signature"] if t.startswith("*"))
    return f"{launch['kernel']}[{constexprs}] ({pointers})"


def ptxas_report(ptx: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    run = subprocess.run([get_ptxas(TARGET.arch).path, "-v", f"--gpu-name=sm_{TARGET.arch}a", f.name, "-o", os.devnull],
                         capture_output=True, text=True)
    os.unlink(f.name)
    lines = [line.split("info    :")[-1].strip() for line in run.stderr.splitlines()
             if "registers" in line or "spill" in line]
    return "; ".join(lines)


def compile_launch(launch: dict) -> str:
    """One report line: OK with shared memory and ptxas's registers and spills, or FAIL and why."""
    kernel = getattr(importlib.import_module(launch["module"]), launch["kernel"])
    names = kernel.arg_names
    types = dict(launch["signature"])
    constexprs = dict(launch["constexprs"])
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in names}
    source = ASTSource(fn=kernel, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    try:
        compiled = triton.compile(source, target=TARGET, options={**dict(launch["options"]), **prune.NO_FMA})
    except Exception as error:  # noqa: BLE001 - every kernel is reported, then the status says
        return f"FAIL {label(launch)}: {type(error).__name__}: {str(error)[-1500:]}"
    return f"OK   {label(launch)}: shared {compiled.metadata.shared} B; {ptxas_report(compiled.asm['ptx'])}"


def main(erank_methods: list[str]) -> int:
    # one compile per core: each is single-threaded, and the fast erank's 43 launches take minutes
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        lines = list(pool.map(compile_launch, recorded_launches(erank_methods)))
    print(f"triton {triton.__version__}")
    print("\n".join(lines))
    return 1 if any(line.startswith("FAIL") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
