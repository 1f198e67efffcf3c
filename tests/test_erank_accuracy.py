"""The erank AgilePruner reads by default ("exact") against the reference's exact fp64 erank, on
the spectrum families of ada_vtp_kernels.apps.spectra with parameters drawn by hypothesis, and the
measured limit of the "fast" estimator.

Issue 16's target is a relative error <= 1 % (median <= 0.2 %) on every family, N in {64, 576,
1024, 2880}, D in {384, 1024, 4096}, fp32/fp16/bf16.  "exact" computes the same eigenvalues as
the reference from a Gram with fp64 sums, so the tests hold it to 1e-4: only the order of the
fp64 sums differs.  benchmarks/bench_erank.py prints the error table of both methods per family.
"""

import importlib.util
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ada_vtp_kernels as vtp
from ada_vtp_kernels import reference
from ada_vtp_kernels.apps.spectra import FAMILIES, draw_params, family_features

from support.strategies import examples

GOLDEN = Path(__file__).resolve().parent / "data" / "golden" / "peers_real.pt"
BACKENDS = [pytest.param("cpu", marks=pytest.mark.requires_ext),
            pytest.param("triton", marks=pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                                            reason="needs triton"))]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# the op is the reference's arithmetic up to the order of fp64 sums
EXACT_RTOL = 1e-4


def exact(x: torch.Tensor) -> float:
    return reference.erank_one(reference.rescale(x))


@st.composite
def spectra(draw, sizes=(64, 200, 576, 1024), dims=(384, 1024)):
    family = draw(st.sampled_from(FAMILIES))
    params = draw_params(family, draw(st.randoms(use_true_random=False)))
    n, dim = draw(st.sampled_from(sizes)), draw(st.sampled_from(dims))
    dtype = draw(st.sampled_from(DTYPES))
    return family, params, family_features(n, dim, family, params, seed=draw(st.integers(0, 2**16)), dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@examples(0.6)
@given(case=spectra())
def test_default_erank_on_drawn_spectra(backend, case):
    family, params, x = case
    got = float(vtp.erank(x[None], backend=backend))
    want = exact(x)
    assert got == pytest.approx(want, rel=EXACT_RTOL), (family, params, tuple(x.shape), x.dtype)


@pytest.mark.slow
@pytest.mark.requires_ext
@pytest.mark.parametrize("n,dim,family", [(2880, 1024, "exp"), (2880, 4096, "knee"), (1024, 4096, "lowrank"),
                                          (2880, 384, "pow"), (64, 4096, "step")])
def test_default_erank_at_llava_next_sizes(n, dim, family):
    params = draw_params(family, random.Random(n + dim))
    x = family_features(n, dim, family, params, seed=n, dtype=torch.bfloat16)
    assert float(vtp.erank(x[None])) == pytest.approx(exact(x), rel=EXACT_RTOL), params


@pytest.mark.requires_ext
def test_default_erank_on_real_features():
    """DINOv2 ViT-S/14 features (layer -2) of the 20 sample photos."""
    features = torch.load(GOLDEN, weights_only=True)["features"]
    for dtype in DTYPES:
        x = features.to(dtype)
        got = vtp.erank(x)
        want = torch.tensor([exact(x[b]) for b in range(x.shape[0])], dtype=torch.float64)
        torch.testing.assert_close(got.double(), want, rtol=EXACT_RTOL, atol=0)


@pytest.mark.requires_ext
@pytest.mark.xfail(strict=True, reason="known limit of the fast estimator: a deflated block that is not an "
                   "invariant subspace biases it upwards on steep spectra (12 % here; docs/DESIGN.md, Statistics)")
def test_fast_erank_within_one_percent_on_an_exponential_spectrum():
    x = family_features(576, 1024, "exp", {"s": 30.0}, seed=0)
    assert float(vtp.erank(x[None], method="fast")) == pytest.approx(exact(x), rel=0.01)
