"""Property tests of the C++ op (hypothesis; inputs from tests/support/strategies.py).

- On exact features the op returns exactly the reference's indices, for any B, N (1..700),
  D (1..512), K (1..N), dtype, ragged lengths with any padding content, layout (transposed,
  sliced, broadcast with stride 0), duplicate and zero tokens, tied or zero scores, magnitudes
  2**-100..2**100, and every method with its parameters drawn too.
- On every input, Gaussian ones at 1e-30 and 1e30 included, the invariants hold
  (`check_invariants`), the methods' limiting cases equal the simpler methods, and a row's result
  depends neither on the batch it is in nor on what its padding holds.

The checks (tests/support/properties.py) are shared with tests/test_triton_properties.py.
"""

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from ada_vtp_kernels import spec

from support.data import exact_features
from support.properties import assert_same, check_batch_independence, check_equivalences, check_invariants
from support.strategies import examples, prune_cases

pytestmark = pytest.mark.requires_ext


@examples(1.0)
@given(case=prune_cases(kinds=("exact",), erank_methods=("exact",)))
def test_cpu_equals_reference_on_exact_features(case):
    """The selections that read the erank (agile, mix_adaptive) take the exact erank here: the
    "fast" estimator runs its products in fp32 on the CPU and in fp64 in the reference
    (`test_fast_erank_close_to_reference` bounds the difference)."""
    got, want = case.run("cpu"), case.run("reference")
    check_invariants(case, want)
    check_invariants(case, got)
    assert_same(got, want, case.label, erank_rtol=1e-5)


FAST_ERANK_RTOL = 2e-3


@examples(0.5)
@given(case=prune_cases(methods=("attention",), row_spreads=(0,), erank_methods=("fast",), max_batch=2))
def test_fast_erank_close_to_reference(case):
    """The fast erank of the C++ op (fp32 products, fp64 sums) within FAST_ERANK_RTOL of the
    reference's (the same steps in fp64), on exact and Gaussian features whose rows have
    comparable norms (test_fast_erank_row_norm_spread has the known exception)."""
    got = case.run("cpu", compute_erank=True, erank_method="fast")
    want = case.run("reference", compute_erank=True, erank_method="fast")
    torch.testing.assert_close(got.erank, want.erank, rtol=FAST_ERANK_RTOL, atol=1e-6, msg=case.label)


@pytest.mark.xfail(strict=True, reason="known limit: fp32 fast erank loses accuracy when row norms span 2**12 "
                                       "(65 x 102 low-rank exact features: 9.8 % from the fp64 reference)")
def test_fast_erank_row_norm_spread():
    g = torch.Generator().manual_seed(5)
    x = exact_features(1, 65, 102, zero_rows=0.0, duplicate_rows=0.0, generator=g)
    x = x * torch.pow(2.0, torch.randint(-6, 7, (1, 65, 1), generator=g))
    got = torch.ops.ada_vtp.erank(x, None, "fast")
    want = torch.ops.ada_vtp.erank(x, None, "exact")
    torch.testing.assert_close(got, want, rtol=FAST_ERANK_RTOL, atol=0)


@examples(1.0)
@given(case=prune_cases(kinds=("gaussian",)))
def test_cpu_invariants_on_gaussian_features(case):
    check_invariants(case, case.run("cpu"))


@examples(0.5)
@given(case=prune_cases(max_n=300, max_dim=256))
def test_method_equivalences(case):
    check_equivalences(case, "cpu")


@examples(0.5)
@given(case=prune_cases(max_n=300, max_dim=256))
def test_batch_and_padding_independence(case):
    check_batch_independence(case, "cpu")


def scale_regime(x: torch.Tensor) -> str:
    """How `reference.rescale` and the 1e-6 norm clamp treat one image's rows: rescaled (largest
    magnitude outside [2**-56, 2**56]), or as given with every non-zero row above the clamp, or as
    given with some row below it (such a row counts as a zero row, and scaling can move it across)."""
    x = x.float()
    amax = float(x.abs().max())
    if amax == 0 or not spec.SAFE_MIN <= amax <= spec.SAFE_MAX:
        return "rescaled"
    norms = torch.linalg.vector_norm(x, dim=-1)
    return "clamped" if bool(((norms > 0) & (norms < spec.NORM_EPS)).any()) else "as given"


@examples(0.5)
@given(case=prune_cases(kinds=("exact",), max_n=300, max_dim=256),
       feature_exp=st.integers(-8, 8), score_exp=st.integers(0, 3))
def test_power_of_two_scale_invariance(case, feature_exp, score_exp):
    """Scaling an image's features by 2**k or its scores by 2**j (exact in floating point) changes
    no index; the entropy keeps its bits.  Not across the rescale threshold or the norm clamp: an
    image whose largest magnitude is in [2**-56, 2**-20] has every row below the 1e-6 clamp (all
    count as zero rows), and 2**-3 times it is rescaled to [0.5, 1) first (docs/DESIGN.md: the
    clamp applies to the features as given)."""
    features, scores = case.features * 2.0**feature_exp, case.scores * 2.0**score_exp
    # fp16 stops at 65504 (the padding may hold anything)
    assume(all(bool(torch.isfinite(t[b, :length]).all()) for t in (features, scores)
               for b, length in enumerate(case.valid_lengths())))
    assume(all(scale_regime(case.features[b, :length]) == scale_regime(features[b, :length])
               for b, length in enumerate(case.valid_lengths())))
    res = case.run("cpu")
    scaled = case.run("cpu", features=features, scores=scores)
    assert torch.equal(scaled.indices, res.indices), case.label
    assert torch.equal(scaled.entropy, res.entropy), case.label
    if res.erank is not None and not any(subnormal_squares(t[b, :length]) for t in (case.features, features)
                                         for b, length in enumerate(case.valid_lengths())):
        torch.testing.assert_close(scaled.erank, res.erank, rtol=1e-5, atol=0, msg=case.label)


def subnormal_squares(x: torch.Tensor) -> bool:
    """Whether a non-zero entry's fp32 square falls below fp32's normal range in an image that is
    not rescaled (largest magnitude in [2**-56, 2**56], smallest entries below about 2**-63): the
    fast erank's products then lose bits, and scaling by 2**k changes its value beyond 1e-5 (found
    by the thorough profile at 2**-66 .. 2**-54; a known limit, see the closing note of issue 7)."""
    x = x.float().abs()
    if scale_regime(x) == "rescaled":
        return False
    smallest = float(x[x > 0].min()) if bool((x > 0).any()) else 1.0
    return smallest * smallest < torch.finfo(torch.float32).tiny
