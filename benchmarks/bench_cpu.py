"""CPU latency of `torch.ops.ada_vtp.prune` against the peers' own loops, the matrix-product work
every implementation must do, and the pure-PyTorch reference.

    python benchmarks/bench_cpu.py [--quick] [--csv PATH]

Inputs: fp32 ``torch.randn`` features [B, N, D] (fixed seed), random positive scores and
relevance, for every method at B in {1, 8}, N = 576 (LLaVA-1.5), D in {1024, 4096} (vision
encoder / LLM width), K in {64, 128}.  ``--quick`` runs one tiny shape (a smoke test, seconds).

Providers, all timed in this one process (median of repeats after a warm-up call):

- ``op``: the C++ kernel, ``functional.prune(..., backend="cpu")``.
- ``peer``: the peer's official selection loop, ported in `peers.py`: attention -> FasterVLM's
  ``topk``, divprune -> DivPrune, dpp -> CDPruner (fed the same relevance), vispruner ->
  VisPruner.  mix, mix_adaptive and agile have no published loop.
- ``bound``: the matrix-product work that any implementation of the method must do, timed with
  torch's own BLAS on features normalised beforehand:
  ``gram`` = one N x N fp32 product per image (divprune and vispruner compare all pairs; so
  does a max-min fill that starts from nothing, e.g. mix_adaptive when the erank drives its
  attention share to 0); ``rows`` = K rows of distances per image (dpp, agile, mix,
  mix_adaptive), timed as one K x N GEMM (``bound ms``) and as K sequential ``torch.mv`` row
  products (``seq ms``), since the greedy loops learn each row's token only after the previous
  step; mix's attention tokens are known upfront, so its sequential form is one GEMM for them and
  ``mv`` for the rest.  attention has none.
- ``ref``: ``backend="reference"``, the Python specification.  It runs one image at a time and
  takes up to seconds per call, so it is timed at B = 1 only, without a warm-up call (the other
  providers have run the same torch ops by then) and with at most 3 repeats; its B = 8 cells are
  that time x 8 (marked ``x8``) and are not written to the CSV.

agile and mix_adaptive need the exact erank (an fp64 eigensolver), included in their ``op``
time; the ``erank`` rows time it alone (bound: fp64 Gram + ``torch.linalg.eigvalsh``), and the
``agile[entropy]`` rows time agile's selection with complexity="entropy", i.e. without it.

On a shared machine other processes stall torch's OpenMP barriers: a measurement during which
they used more than a tenth of the CPU is retried after waiting for the machine to go idle (see
`_common.measure`); one still contended is marked "!" in the table and "latency_contended" in
the CSV.  Every timing is appended as a tidy row to ``--csv`` (default for a full run:
benchmarks/results/cpu_<cpu model>.csv; ``--quick`` writes only where ``--csv`` is given).
"""

import argparse
import dataclasses
import functools
import os
import sys
import time

import torch

from ada_vtp_kernels import functional, ops, reference, spec

import _common
import peers

PEER_PROVIDERS = {"attention": "fastervlm_official", "divprune": "divprune_official",
                  "dpp": "cdpruner_official", "vispruner": "vispruner_official"}


@dataclasses.dataclass(frozen=True)
class Case:
    """One table row's selection: a method and the parameters that differ from the spec."""

    label: str
    method: str
    params: tuple = ()

    def prune(self, features, scores, relevance, keep, backend):
        kwargs = dict(self.params)
        if self.method == "dpp":
            kwargs["relevance"] = relevance
        return functional.prune(features, scores, keep, self.method, backend=backend, **kwargs)


CASES = tuple(Case(m, m) for m in spec.METHODS) + (Case("agile[entropy]", "agile", (("complexity", "entropy"),)),)


@dataclasses.dataclass(frozen=True)
class Sweep:
    batches: tuple
    dims: tuple
    keeps: tuple
    n: int


FULL = Sweep(batches=(1, 8), dims=(1024, 4096), keeps=(64, 128), n=576)
QUICK = Sweep(batches=(1, 2), dims=(128,), keeps=(16,), n=96)

# repeats per provider; the peers' DivPrune and VisPruner loops and the reference are slow
OP_REPEATS = {"min_repeats": 5, "max_repeats": 100, "budget_s": 1.0}
PEER_REPEATS = {"min_repeats": 3, "max_repeats": 100, "budget_s": 1.0}
BOUND_REPEATS = {"min_repeats": 5, "max_repeats": 100, "budget_s": 0.5}
REF_REPEATS = {"min_repeats": 1, "max_repeats": 3, "budget_s": 1.0}
QUICK_REPEATS = {"min_repeats": 1, "max_repeats": 2, "budget_s": 0.0, "retries": 0}

# --------------------------------------------------------------------------------------------
# the unavoidable matrix-product work


def normalised(features: torch.Tensor) -> torch.Tensor:
    """Unit rows, as every method compares them (the bound does not time this cheap pass)."""
    return features / features.norm(dim=-1, keepdim=True).clamp_min(spec.NORM_EPS)


def attention_counts(case: Case, keep: int, eranks: torch.Tensor) -> list[int] | None:
    """Per image, how many tokens mix / mix_adaptive take by attention before the max-min fill
    (`spec.Method.attention_count`); None for the other methods."""
    if case.method not in ("mix", "mix_adaptive"):
        return None
    p = spec.PruneParams.of(case.method, **dict(case.params))
    erank = eranks.to(torch.float64)
    return p.spec.attention_count(p, keep, erank, torch.zeros_like(erank)).tolist()


def work_plan(case: Case, keep: int, eranks: torch.Tensor) -> list[tuple[str, int]] | None:
    """Per image, the product work of the selection: ("gram", 0) or ("rows", tokens known upfront); None when none."""
    batch = len(eranks)
    if case.method == "attention":
        return None
    if case.method in ("divprune", "vispruner"):
        return [("gram", 0)] * batch
    counts = attention_counts(case, keep, eranks)
    if counts is None:  # dpp, agile: every row's token comes from the previous step
        return [("rows", 0)] * batch
    if all(c == keep for c in counts):  # pure attention
        return None
    return [("gram", 0) if c == 0 else ("rows", c) for c in counts]


def plan_name(plan: list[tuple[str, int]]) -> str:
    kinds = {kind for kind, _ in plan}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def product_work(xn: torch.Tensor, plan: list[tuple[str, int]], keep: int, sequential: bool) -> None:
    """Runs the plan's products on unit rows xn [B, N, D]: a Gram per image, or K rows of xn·xnᵀ,
    as one GEMM or (``sequential``) as a GEMM for the tokens known upfront plus one ``mv`` per greedy step."""
    for x, (kind, upfront) in zip(xn, plan):
        if kind == "gram":
            torch.mm(x, x.t())
        elif not sequential:
            torch.mm(x[:keep], x.t())
        else:
            if upfront:
                torch.mm(x[:upfront], x.t())
            for j in range(upfront, keep):
                torch.mv(x, x[j])


def erank_work(x64: torch.Tensor) -> None:
    """The exact erank's core per image: the fp64 Gram (the smaller one) and its eigenvalues."""
    for x in x64:
        gram = x @ x.t() if x.shape[0] <= x.shape[1] else x.t() @ x
        torch.linalg.eigvalsh(gram)


# --------------------------------------------------------------------------------------------
# the sweep


@dataclasses.dataclass
class Row:
    """One line of the printed table; None where not measured."""

    label: str
    batch: int
    dim: int
    keep: int | None
    op: _common.Timing | None = None
    peer_name: str = "-"
    peer: _common.Timing | None = None
    bound_name: str = "-"
    bound: _common.Timing | None = None
    seq: _common.Timing | None = None
    ref: _common.Timing | None = None
    ref_scale: float = 1.0  # the reference's B = 1 time is scaled to this row's batch


class Recorder:
    """Collects the tidy CSV rows of one run; a measurement that stayed contended by other
    processes after its retries gets metric "latency_contended" instead of "latency"."""

    def __init__(self, n: int):
        self.n = n
        self.env = _common.environment()
        self.rows: list[dict] = []

    def add(self, op: str, provider: str, method: str, batch: int, dim: int, keep, timing: _common.Timing):
        self.rows.append(dict(
            op=op, provider=provider, method=method, B=batch, N=self.n, D=dim, K="" if keep is None else keep,
            metric="latency_contended" if timing.contended else "latency", unit="ms",
            p50=f"{timing.p50:.4f}", p20=f"{timing.p20:.4f}", p80=f"{timing.p80:.4f}", **self.env))


class Sweeper:
    """Runs the sweep: fills `rows` (the table), `notes` and the CSV `recorder`."""

    def __init__(self, sweep: Sweep, quick: bool):
        self.sweep = sweep
        self.quick = quick
        self.has_op = ops.extension_loaded()
        self.recorder = Recorder(sweep.n)
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.reference_ms: dict = {}  # (label, D, K) -> the reference's Timing at the smallest batch
        # what the random inputs make of the adaptive methods, for the notes
        self.mix_adaptive_eranks: list[torch.Tensor] = []
        self.plain_attention: dict = {"agile": [], "agile[entropy]": []}

    def timed(self, fn, repeats: dict, warmup: int = 1):
        return _common.measure(fn, warmup=warmup, **(QUICK_REPEATS if self.quick else repeats))

    def run(self) -> None:
        for dim in self.sweep.dims:
            for batch in self.sweep.batches:
                features, scores, relevance = _common.make_inputs(batch, self.sweep.n, dim)
                self.erank_row(features, batch, dim)
                eranks = functional.erank(features, backend="cpu" if self.has_op else "reference")
                xn = normalised(features)
                for keep in self.sweep.keeps:
                    self.prune_rows(features, scores, relevance, xn, eranks, batch, dim, keep)
        self.summarise_inputs()
        if not self.has_op:
            self.notes.append("the C++ extension is not built: op columns are empty (" + ops.BUILD_HINT + ")")

    def reference(self, row: Row, key, measure) -> None:
        """The reference's time for `row`: measured (by `measure`) at the smallest batch, scaled above it."""
        if row.batch == min(self.sweep.batches):
            self.reference_ms[key] = (measure(), row.batch)
        timing, measured_batch = self.reference_ms[key]
        row.ref, row.ref_scale = timing, row.batch / measured_batch

    def erank_row(self, features, batch: int, dim: int) -> None:
        row = Row("erank", batch, dim, None, bound_name="gram64+eigh")
        if self.has_op:
            row.op, _ = self.timed(lambda: functional.erank(features, backend="cpu"), OP_REPEATS)
            self.recorder.add("erank", "ada_vtp_cpu", "exact", batch, dim, None, row.op)
        x64 = reference.rescale(features.reshape(-1, dim)).reshape(features.shape).double()
        row.bound, _ = self.timed(lambda: erank_work(x64), BOUND_REPEATS)
        self.recorder.add("bound", "gram64_eigvalsh", "erank", batch, dim, None, row.bound)

        def measure_reference():
            t, _ = self.timed(lambda: functional.erank(features, backend="reference"), REF_REPEATS, warmup=0)
            self.recorder.add("erank", "reference", "exact", batch, dim, None, t)
            return t

        self.reference(row, ("erank", dim), measure_reference)
        self.rows.append(row)

    def prune_rows(self, features, scores, relevance, xn, eranks, batch: int, dim: int, keep: int) -> None:
        where = f"B={batch} D={dim} K={keep}"
        products: dict = {}  # product work shared by methods with the same plan
        op_selection: dict = {}
        for case in CASES:
            row = Row(case.label, batch, dim, keep)
            if self.has_op:
                row.op, res = self.timed(functools.partial(case.prune, features, scores, relevance, keep, "cpu"),
                                         OP_REPEATS)
                self.recorder.add("prune", "ada_vtp_cpu", case.label, batch, dim, keep, row.op)
                op_selection[case.label] = res.indices

            if case.label in peers.PEER_OF_METHOD:
                row.peer_name, peer = peers.PEER_OF_METHOD[case.label]
                row.peer, peer_indices = self.timed(functools.partial(peer, features, scores, relevance, keep),
                                                    PEER_REPEATS)
                self.recorder.add("prune", PEER_PROVIDERS[case.label], case.label, batch, dim, keep, row.peer)
                if case.label in op_selection:
                    differ = int((peer_indices != op_selection[case.label]).any(dim=1).sum())
                    if differ:
                        self.notes.append(f"{case.label} {where}: the op and {row.peer_name} select different "
                                          f"tokens on {differ}/{batch} images")

            plan = work_plan(case, keep, eranks)
            if plan is not None:
                row.bound_name = plan_name(plan)
                if case.method == "mix_adaptive" and row.bound_name == "gram":
                    self.mix_adaptive_eranks.append(eranks)
                # a Gram has no sequential form: only "rows" plans get a seq column
                for sequential in (False,) if row.bound_name == "gram" else (False, True):
                    key = (tuple(plan), sequential)
                    if key not in products:
                        products[key], _ = self.timed(functools.partial(product_work, xn, plan, keep, sequential),
                                                      BOUND_REPEATS)
                    provider = f"{row.bound_name}_{'mv' if sequential else 'mm'}"
                    self.recorder.add("bound", provider, case.label, batch, dim, keep, products[key])
                    if sequential:
                        row.seq = products[key]
                    else:
                        row.bound = products[key]

            self.reference(row, (case.label, dim, keep), functools.partial(
                self.time_reference_prune, case, features, scores, relevance, keep, op_selection.get(case.label)))
            self.rows.append(row)
            print(f"  {time.strftime('%H:%M:%S')} measured {case.label} {where}", file=sys.stderr, flush=True)
        for label, shapes in self.plain_attention.items():
            if label in op_selection and torch.equal(op_selection[label], op_selection["attention"]):
                shapes.append(where)

    def time_reference_prune(self, case: Case, features, scores, relevance, keep: int, op_indices) -> _common.Timing:
        batch, _, dim = features.shape
        t, res = self.timed(functools.partial(case.prune, features, scores, relevance, keep, "reference"),
                            REF_REPEATS, warmup=0)
        self.recorder.add("prune", "reference", case.label, batch, dim, keep, t)
        if op_indices is not None and not torch.equal(res.indices, op_indices):
            self.notes.append(f"{case.label} B={batch} D={dim} K={keep}: the op and the reference select "
                              f"different tokens")
        return t

    def summarise_inputs(self) -> None:
        if self.mix_adaptive_eranks:
            seen = torch.cat(self.mix_adaptive_eranks)
            self.notes.append(
                f"mix_adaptive ran as divprune wherever its bound is 'gram': the erank of randn features "
                f"({float(seen.min()):.0f}-{float(seen.max()):.0f}) far exceeds erank_ref {spec.DEFAULTS.erank_ref}, "
                f"which sets its attention share to 0")
        for label, shapes in self.plain_attention.items():
            if shapes:
                where = "every shape" if len(shapes) == len(self.sweep.batches) * len(self.sweep.dims) * len(
                    self.sweep.keeps) else ", ".join(shapes)
                self.notes.append(
                    f"{label} selected exactly attention's top K at {where}: randn tokens are all about cosine "
                    f"distance 1 apart, beyond tau_max {spec.DEFAULTS.tau_max}, so nothing is suppressed and the "
                    f"max-min fill never runs")


# --------------------------------------------------------------------------------------------
# output


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_timing(t: _common.Timing | None, scale: float = 1.0) -> str:
    """Median ms; "!" marks a measurement that other processes contended even after its retries."""
    return "-" if t is None else fmt_ms(t.p50 * scale) + ("!" if t.contended else "")


def fmt_ratio(num: _common.Timing | None, den: _common.Timing | None) -> str:
    return "-" if num is None or den is None or den.p50 == 0 else f"{num.p50 / den.p50:.2f}"


def table(rows: list[Row]) -> str:
    header = ("method", "B", "D", "K", "op ms", "peer", "peer ms", "peer/op", "bound", "bound ms", "op/bound",
              "seq ms", "op/seq", "ref ms")
    lines = [header]
    order = {c.label: i for i, c in enumerate(CASES)} | {"erank": len(CASES)}
    for r in sorted(rows, key=lambda r: (order[r.label], r.batch, r.dim, r.keep or 0)):
        ref = fmt_timing(r.ref, r.ref_scale) + (f" x{r.ref_scale:g}" if r.ref_scale != 1 else "")
        lines.append((r.label, str(r.batch), str(r.dim), "-" if r.keep is None else str(r.keep), fmt_timing(r.op),
                      r.peer_name, fmt_timing(r.peer), fmt_ratio(r.peer, r.op), r.bound_name, fmt_timing(r.bound),
                      fmt_ratio(r.op, r.bound), fmt_timing(r.seq), fmt_ratio(r.op, r.seq), ref))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = {0, 5, 8}  # text columns
    text = [" ".join(cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one tiny shape, 1-2 repeats: a smoke test")
    parser.add_argument("--csv", default=None,
                        help="append the timings here (default: benchmarks/results/cpu_<cpu>.csv; none with --quick)")
    args = parser.parse_args(argv)
    sweep = QUICK if args.quick else FULL
    csv_path = args.csv or (None if args.quick else _common.default_csv_path())

    env = _common.environment()
    print(f"ada_vtp CPU benchmark: {env['cpu_name']}, {os.cpu_count()} cores, torch {env['torch_version']} "
          f"({torch.get_num_threads()} threads), git {env['git_sha']}, {env['timestamp']}")
    print(f"N={sweep.n}, B in {sweep.batches}, D in {sweep.dims}, K in {sweep.keeps}; fp32 randn features, "
          f"random positive scores/relevance; ms = median wall clock")
    contention = _common.Contention()
    sweeper = Sweeper(sweep, args.quick)
    sweeper.run()
    print(table(sweeper.rows))
    if args.quick:
        print("\nrepeats (--quick): 1-2 per provider, no retries.")
    else:
        print(f"\nrepeats: op >= {OP_REPEATS['min_repeats']}, peer >= {PEER_REPEATS['min_repeats']}, bound >= "
              f"{BOUND_REPEATS['min_repeats']}, more until ~1 s is spent; ref <= {REF_REPEATS['max_repeats']}, "
              f"measured at B={min(sweep.batches)} only, 'xB' cells scaled from it (the reference runs image by "
              f"image).  A measurement during which other processes used > {_common.CONTENTION_LIMIT:.0%} of the "
              f"CPU is retried up to twice; '!' marks one still contended.")
    print("bound: gram = N x N fp32 torch.mm per image; rows = K x N torch.mm per image, seq = K torch.mv per "
          "image (mix: its attention tokens in one torch.mm); erank: fp64 Gram + eigvalsh.  The agile and "
          "mix_adaptive ops include the erank (see the erank rows).")
    for note in sweeper.notes:
        print("note:", note)
    share = contention.share()
    if share > _common.CONTENTION_LIMIT:
        print(f"WARNING: other processes used {share:.0%} of the {os.cpu_count()} cores during the run; timings "
              f"marked '!' are unreliable (OpenMP barriers stall when cores are shared): rerun on an idle machine")
    if csv_path:
        _common.append_csv(csv_path, sweeper.recorder.rows)
        print(f"wrote {len(sweeper.recorder.rows)} rows to {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
