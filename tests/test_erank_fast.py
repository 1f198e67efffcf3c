"""The SVD-free erank estimator (erank method "fast", opt-in): the C++ kernel's bits, and the
estimator against the exact fp64 erank on the named synthetic spectra and real DINOv2 features
(every backend against the reference: tests/test_conformance.py).

Its bounds here, median <= 1 % and max <= 3 % per named spectrum, hold on these gentle spectra
only: on steep ones (exponential, knees) it is up to ~15 % high (tests/test_erank_accuracy.py,
benchmarks/bench_erank.py), which is why "exact" is the default.
"""

import statistics
from pathlib import Path

import pytest
import torch

import ada_vtp_kernels as vtp
from ada_vtp_kernels import reference
from ada_vtp_kernels.apps.spectra import synthetic_features

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden" / "peers_real.pt"
SPECTRA = ["pow0.5", "pow1", "pow2", "exp", "flat", "rank1", "rank10"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def exact(x: torch.Tensor) -> float:
    return reference.erank_one(reference.rescale(x))


def relative_errors(pairs):
    return [abs(est / ref - 1) for est, ref in pairs]


def assert_accuracy(errors, label):
    med, worst = statistics.median(errors), max(errors)
    assert med <= 0.01 and worst <= 0.03, f"{label}: median {med:.4f}, max {worst:.4f} over {len(errors)} cases"


# ------------------------------------------------------------------------------------------
# the C++ kernel (its results against the reference: tests/test_conformance.py, test_erank)


@pytest.mark.requires_ext
def test_deterministic_and_batch_independent():
    x = torch.randn(3, 200, 300)
    first = torch.ops.ada_vtp.erank(x, None, "fast")
    assert torch.equal(torch.ops.ada_vtp.erank(x, None, "fast"), first)
    assert torch.equal(torch.ops.ada_vtp.erank(x[1:2], None, "fast"), first[1:2])


def test_probe_signs_are_fixed():
    signs = reference.probe_signs(5, 3, 1)
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(signs, reference.probe_signs(5, 3, 1))
    assert not torch.equal(signs, reference.probe_signs(5, 3, 0))
    # balanced: about half of a long column is +1
    assert abs(float(reference.probe_signs(4096, 1, 0).mean())) < 0.05


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=pytest.mark.requires_ext)])
def test_edge_cases(backend):
    zero = torch.zeros(1, 100, 80)
    assert float(vtp.erank(zero, method="fast", backend=backend)) == 0.0
    flat = synthetic_features(100, 80, "flat")[None]
    assert float(vtp.erank(flat, method="fast", backend=backend)) == pytest.approx(80, rel=1e-4)
    one = synthetic_features(100, 80, "rank1")[None] * 1e-30
    assert float(vtp.erank(one, method="fast", backend=backend)) == pytest.approx(1, rel=1e-3)
    small = torch.randn(1, 10, 3)  # min(n, D) <= 64: solved exactly
    assert float(vtp.erank(small, method="fast", backend=backend)) == pytest.approx(exact(small[0]), rel=1e-5)


# ------------------------------------------------------------------------------------------
# accuracy against the exact fp64 erank


@pytest.mark.requires_ext
@pytest.mark.parametrize("spectrum", SPECTRA)
def test_accuracy_synthetic(spectrum):
    pairs = []
    for n, dim in [(64, 384), (576, 384), (576, 1024)]:
        base = synthetic_features(n, dim, spectrum, seed=n + dim)
        for dtype in DTYPES:
            x = base.to(dtype)
            pairs.append((float(torch.ops.ada_vtp.erank(x[None], None, "fast")), exact(x)))
    assert_accuracy(relative_errors(pairs), spectrum)


@pytest.mark.slow
@pytest.mark.requires_ext
# 768 x 1024 is the largest image on the 64-column block, 2880 x 1024 the smallest on 128 columns
@pytest.mark.parametrize("n,dim", [(2880, 1024), (2880, 4096), (576, 4096), (768, 1024), (64, 4096)])
def test_accuracy_synthetic_large(n, dim):
    pairs = []
    for spectrum in SPECTRA:
        x = synthetic_features(n, dim, spectrum, seed=n + dim)
        pairs.append((float(torch.ops.ada_vtp.erank(x[None], None, "fast")), exact(x)))
    assert_accuracy(relative_errors(pairs), f"{n}x{dim}")


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.mark.requires_ext
def test_accuracy_golden_features(golden):
    feats = golden["features"]
    fast = torch.ops.ada_vtp.erank(feats, None, "fast")
    pairs = [(float(fast[b]), exact(feats[b])) for b in range(feats.shape[0])]
    assert_accuracy(relative_errors(pairs), "golden DINOv2 layer -2")


@pytest.mark.requires_ext
def test_agile_selection_fast_vs_exact(golden):
    """AgilePruner's selections with the fast erank overlap those with the exact erank >= 0.95."""
    feats, scores = golden["features"], golden["scores"]
    overlaps = []
    for keep in (32, 64, 128):
        fast = vtp.prune(feats, scores, keep, method="agile", erank_method="fast").indices
        exact_ = vtp.prune(feats, scores, keep, method="agile", erank_method="exact").indices
        for a, b in zip(fast.tolist(), exact_.tolist()):
            overlaps.append(len(set(a) & set(b)) / keep)
    assert statistics.mean(overlaps) >= 0.95, overlaps


@pytest.fixture(scope="module")
def photo_features():
    pytest.importorskip("transformers", minversion="5")
    pytest.importorskip("onnx")
    pytest.importorskip("skimage")
    from ada_vtp_kernels.apps.encoders import dinov2, encode, sample_photos

    try:
        dinov2.onnx_path()
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(str(err))

    photos = sample_photos()
    out = encode([img for _, img in photos], layers=(-1, 6), size=336)
    return out


@pytest.mark.slow
@pytest.mark.requires_ext
@pytest.mark.parametrize("layer", [-1, 6])
def test_accuracy_real_photos(photo_features, layer):
    """Real DINOv2 ViT-S/14 features of scikit-image's photos, 576 tokens at 336 px."""
    feats = photo_features["features"][layer]
    pairs = []
    for dtype in DTYPES:
        x = feats.to(dtype)
        fast = torch.ops.ada_vtp.erank(x, None, "fast")
        pairs += [(float(fast[b]), exact(x[b])) for b in range(x.shape[0])]
    assert_accuracy(relative_errors(pairs), f"photos layer {layer}")
