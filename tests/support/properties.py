"""The invariant checks that the property tests apply to every backend (tests/test_properties.py
for the C++ op, tests/test_triton_properties.py for the Triton kernels).

`check_invariants` is written from docs/DESIGN.md and `ada_vtp_kernels.spec`, not from the
reference, so it checks the reference too.  A case is a `support.strategies.PruneCase`.
"""

import math

import torch

from ada_vtp_kernels import spec


def check_invariants(case, res) -> None:
    """What every result must satisfy: K distinct valid indices in ascending order per row, the
    entropy in [0, ln n], the erank where (and only where) it is computed, in {0} or [1, min(n, D)];
    `attention` keeps a top-K set of the scores and `random` one of the seed's keys, ties to the
    lowest index."""
    batch, n, dim = case.features.shape
    idx = res.indices
    assert idx.dtype == torch.int64 and idx.shape == (batch, case.keep), case.label
    p = spec.PruneParams.of(case.method, **case.params)
    assert (res.erank is not None) == p.needs_erank(), case.label
    keys = spec.random_keys(p.seed, n) if p.spec.order == "random" else None
    for b, length in enumerate(case.valid_lengths()):
        row = idx[b]
        assert 0 <= int(row.min()) and int(row.max()) < length, f"row {b} leaves [0, {length}): {case.label}"
        assert bool((row[1:] > row[:-1]).all()), f"row {b} not strictly ascending: {case.label}"
        entropy = float(res.entropy[b])
        assert -1e-6 <= entropy <= math.log(length) * (1 + 1e-6) + 1e-6, f"entropy {entropy}: {case.label}"
        if res.erank is not None:
            erank = float(res.erank[b])
            assert erank == 0 or 1 - 1e-5 <= erank <= min(length, dim) * (1 + 1e-5), f"erank {erank}: {case.label}"
        if case.method == "attention":
            check_top_k(case.scores[b, :length], row.tolist(), case.label)
        elif keys is not None:
            check_top_k(keys[:length], row.tolist(), case.label)


def check_top_k(scores: torch.Tensor, kept: list[int], label: str) -> None:
    """`kept` is the top-K of `scores` ordered as fp32, ties going to the lowest index."""
    s = scores.to(torch.float32).tolist()
    threshold = min(s[i] for i in kept)
    kept_set = set(kept)
    assert all(s[j] <= threshold for j in range(len(s)) if j not in kept_set), label
    tied = [j for j in range(len(s)) if s[j] == threshold]
    kept_tied = [j for j in tied if j in kept_set]
    assert kept_tied == tied[: len(kept_tied)], f"a tie at the threshold went to a higher index: {label}"


def assert_same(got, want, label: str, erank_rtol: float = 1e-4) -> None:
    """The same indices row by row, the erank (where computed) within `erank_rtol`, the entropy
    within fp32 rounding."""
    rows = [b for b in range(want.indices.shape[0]) if not torch.equal(got.indices[b], want.indices[b])]
    assert not rows, f"indices differ in rows {rows}: {label}"
    assert (got.erank is None) == (want.erank is None), label
    if want.erank is not None:
        torch.testing.assert_close(got.erank, want.erank, rtol=erank_rtol, atol=1e-6, msg=label)
    torch.testing.assert_close(got.entropy, want.entropy, rtol=1e-5, atol=1e-6, msg=label)


# (method, parameters) pairs that must select exactly what another method selects
EQUIVALENT_TO = [
    (("mix", {"attention_ratio": 0.0}), "divprune"),
    (("mix", {"attention_ratio": 1.0}), "attention"),
    (("vispruner", {"important_ratio": 1.0}), "attention"),
    (("agile", {"tau_max": 0.0}), "attention"),
    (("agile", {"tau_scale": 0.0, "tau_max": 1.0}), "attention"),
]


def check_equivalences(case, backend: str) -> None:
    """The methods' limiting cases select what the simpler methods select (EQUIVALENT_TO), and
    mix_adaptive with gain 0 is mix at its attention_ratio."""
    for (method, params), simpler in EQUIVALENT_TO:
        got = case.run(backend, method=method, **params).indices
        want = case.run(backend, method=simpler).indices
        assert torch.equal(got, want), f"{method} {params} != {simpler}: {case.label}"
    ratio = case.params.get("attention_ratio", spec.DEFAULTS.attention_ratio)
    adaptive = case.run(backend, method="mix_adaptive", attention_ratio=ratio, gain=0.0).indices
    assert torch.equal(adaptive, case.run(backend, method="mix", attention_ratio=ratio).indices), \
        f"mix_adaptive with gain 0 != mix at ratio {ratio}: {case.label}"


def padded_eigensolver(backend: str) -> bool:
    """The Triton kernels solve the erank's eigenproblems for the whole batch at once, each image's
    matrix zero-padded to the batch's size (a 2 x 2 problem alone, a padded 4 x 4 one in the batch:
    1.8211 either way, one fp32 ulp apart), so an image's erank bits depend on the batch's N; the
    C++ kernels solve each image at its own size and keep its bits."""
    return backend == "triton"


def check_batch_independence(case, backend: str) -> None:
    """Each row alone (cut to its length) gives the bits it gives in the batch; the batch reversed
    gives the rows reversed; NaN in every padding position changes nothing."""
    res = case.run(backend)
    for b, length in enumerate(case.valid_lengths()):
        rel = None if case.relevance is None else case.relevance[b:b + 1, :length]
        alone = case.run(backend, features=case.features[b:b + 1, :length], scores=case.scores[b:b + 1, :length],
                         lengths=None, relevance=rel)
        assert torch.equal(alone.indices[0], res.indices[b]), f"row {b} alone differs: {case.label}"
        assert torch.equal(alone.entropy[0], res.entropy[b]), case.label
        if res.erank is not None and padded_eigensolver(backend):
            torch.testing.assert_close(alone.erank[0], res.erank[b], rtol=1e-6, atol=0, msg=case.label)
        elif res.erank is not None:
            assert torch.equal(alone.erank[0], res.erank[b]), f"row {b}'s erank alone differs: {case.label}"
    flipped = case.run(backend, features=case.features.flip(0), scores=case.scores.flip(0),
                       lengths=None if case.lengths is None else case.lengths.flip(0),
                       relevance=None if case.relevance is None else case.relevance.flip(0))
    assert torch.equal(flipped.indices, res.indices.flip(0)), f"reversed batch: {case.label}"
    if case.lengths is not None:
        nan_padded = [None if t is None else t.clone() for t in (case.features, case.scores, case.relevance)]
        for b, length in enumerate(case.valid_lengths()):
            for t in nan_padded:
                if t is not None:
                    t[b, length:] = math.nan
        padded = case.run(backend, features=nan_padded[0], scores=nan_padded[1], relevance=nan_padded[2])
        assert torch.equal(padded.indices, res.indices), f"padding content changed the result: {case.label}"
