"""Every Triton kernel launch the package makes, recorded under the interpreter.

`record()` patches the interpreter's launch (``InterpretedFunction.run``) for the duration of a
``with`` block and appends a `Launch` per call: the kernel, its argument types in
``triton.compile``'s notation, its constexpr values and launch options.  With ``dry=True`` the
kernels are not executed: the host code (which reads no device value: tests/test_host_syncs.py)
still makes every launch it would make, so LLaVA-sized shapes are recorded in milliseconds.
Device-side asserts and the exact erank's eigensolver are stubbed meanwhile, since they would
read the unwritten outputs.

Run as a script it records with ``ADA_VTP_GPU_CONFIG=1`` (kernels/triton_device.py), so the
launches carry the GPU's tile sizes rather than the interpreter's.

Used by tests/test_triton_launches.py (launches per call) and, through ``python
tests/support/launches.py OUT.json [ERANK_METHOD ...]``, by tests/support/sm90_compile.py, which
compiles every recorded launch for sm_90.
"""

import contextlib
import dataclasses
import inspect
import json
import os
import sys
from pathlib import Path
from unittest import mock

import torch

TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16",
         torch.int32: "i32", torch.int64: "i64", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
         torch.bool: "i1"}
OPTIONS = ("num_warps", "num_stages")


@dataclasses.dataclass(frozen=True)
class Launch:
    module: str
    kernel: str
    signature: tuple[tuple[str, str], ...]  # (argument, type) for the runtime arguments
    constexprs: tuple[tuple[str, object], ...]
    options: tuple[tuple[str, int], ...]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"unexpected kernel argument {value!r}")


def _is_constexpr(parameter: inspect.Parameter) -> bool:
    return "constexpr" in str(parameter.annotation)


@contextlib.contextmanager
def record(dry: bool = False):
    """Yields the list that collects a `Launch` per kernel launch inside the block."""
    from triton.runtime.interpreter import InterpretedFunction

    launches: list[Launch] = []
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        if not warmup:
            parameters = inspect.signature(self.fn).parameters
            bound = dict(zip(self.arg_names, args)) | {k: v for k, v in kwargs.items() if k in parameters}
            signature = tuple((name, _type(bound[name])) for name, p in parameters.items()
                              if not _is_constexpr(p) and name in bound)
            constexprs = tuple((name, bound[name]) for name, p in parameters.items()
                               if _is_constexpr(p) and name in bound)
            options = tuple((k, kwargs[k]) for k in OPTIONS if k in kwargs)
            launches.append(Launch(self.fn.__module__, self.fn.__name__, signature, constexprs, options))
        if dry:
            return None
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(InterpretedFunction, "run", run))
        if dry:
            stack.enter_context(mock.patch.object(torch, "_assert_async", lambda *a, **k: None))
            stack.enter_context(mock.patch.object(torch.linalg, "eigvalsh",
                                                  lambda a, *r, **k: a.new_zeros(a.shape[:-1])))
        yield launches


def llava_launches(erank_methods=("exact", "fast")) -> set[Launch]:
    """The distinct launches of every op and method (with its default parameters, the erank by
    each of `erank_methods`) at the shapes our users run: LLaVA-1.5 (576 tokens) and LLaVA-NeXT
    (2880), widths 1024 (CLIP-L) and 4096 (the LLM's), every feature dtype; dry, so it takes
    seconds."""
    from ada_vtp_kernels import ops, spec

    stages = ops.triton_stages()
    with record(dry=True) as launches:
        for n in (576, 2880):
            for dim in (1024, 4096):
                for dtype in (torch.float32, torch.float16, torch.bfloat16):
                    features = torch.zeros(2, n, dim, dtype=dtype)
                    scores = torch.ones(2, n)
                    lengths = torch.tensor([n, n - 1])
                    for method in spec.METHODS:
                        relevance = scores if method == "dpp" else None
                        for erank_method in erank_methods:
                            p = spec.PruneParams.of(method, erank_method=erank_method)
                            ops.prune_forward(stages, features, scores, 64, lengths, relevance, p)
                    for erank_method in erank_methods:
                        ops.erank_forward(stages, features, lengths, erank_method)
                    ops.entropy_forward(stages, scores, lengths)
    return set(launches)


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ["ADA_VTP_GPU_CONFIG"] = "1"  # the tiles and dots a GPU gets
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    found = sorted(llava_launches(tuple(sys.argv[2:]) or ("exact", "fast")),
                   key=lambda launch: (launch.module, launch.kernel, repr(launch)))
    Path(sys.argv[1]).write_text(json.dumps([launch.to_json() for launch in found], indent=1))
    print(f"{len(found)} distinct launches")
