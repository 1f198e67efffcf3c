"""Property tests of the Triton launchers (hypothesis; under TRITON_INTERPRET=1 without a GPU).

The interpreter costs about 0.1-1 s per call, so the shapes are small (B <= 3, N <= 48,
D <= 40); every other axis of tests/support/strategies.py is drawn as for the C++ op: methods and
parameters, dtypes, ragged lengths and padding content, layouts (transposed, sliced, stride 0),
duplicate and zero tokens, tied and zero scores, magnitudes 2**-100..2**100.  On exact features
the launcher returns exactly the reference's indices; the method equivalences and the batch and
padding independence hold on Gaussian features too.
"""

import dataclasses

import pytest
import torch
from hypothesis import given

pytest.importorskip("triton")

from ada_vtp_kernels.kernels.erank import triton_fast as ef  # noqa: E402

from support.data import lapack_eigh  # noqa: E402
from support.properties import (  # noqa: E402
    assert_same,
    check_batch_independence,
    check_equivalences,
    check_invariants,
)
from support.strategies import examples, prune_cases  # noqa: E402

SMALL = dict(max_batch=3, max_n=48, max_dim=40)


@pytest.fixture(autouse=True)
def _lapack_eigensolver(monkeypatch):
    """The fast erank's k x k eigenproblems through LAPACK (the interpreted Jacobi kernel costs
    seconds each; tests/test_triton_eigh.py checks it)."""
    if not torch.cuda.is_available():
        monkeypatch.setattr(ef, "jacobi_eigh", lapack_eigh)


def on_device(case):
    """The case's tensors on the GPU when there is one (a CPU run goes through the interpreter)."""
    if not torch.cuda.is_available():
        return case
    move = {k: getattr(case, k).cuda() for k in ("features", "scores", "lengths", "relevance")
            if getattr(case, k) is not None}
    return dataclasses.replace(case, **move)


def cpu(res):
    return type(res)(*(None if t is None else t.cpu() for t in res))


@examples(0.75)
@given(case=prune_cases(kinds=("exact",), **SMALL))
def test_triton_equals_reference_on_exact_features(case):
    got, want = cpu(on_device(case).run("triton")), case.run("reference")
    check_invariants(case, got)
    # min(N, D) <= 40: the fast erank solves these exactly, in fp64 on both sides
    assert_same(got, want, case.label, erank_rtol=1e-5)


@examples(0.25)
@given(case=prune_cases(**SMALL))
def test_triton_method_equivalences(case):
    check_equivalences(on_device(case), "triton")


@examples(0.25)
@given(case=prune_cases(**SMALL))
def test_triton_batch_and_padding_independence(case):
    check_batch_independence(on_device(case), "triton")
