"""Selections of the peers' official code on real DINOv2 features (shared/golden/README.md).

attention, divprune and dpp (with the file's relevance) must equal the peers' selections exactly;
VisPruner re-sorts by similarities that agree to ~6 digits, so only its overlap is asserted (the
number of identical selections is printed: run with -s to see it).
"""

from pathlib import Path

import pytest
import torch

import ada_vtp_kernels as vtp

GOLDEN = Path(__file__).resolve().parents[1] / ".." / "shared" / "golden" / "peers_real.pt"
KEEPS = [32, 64, 128]


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.exists():
        pytest.skip(f"golden file {GOLDEN} is missing (it lives in the shared/ folder next to the repository)")
    data = torch.load(GOLDEN, weights_only=True)
    assert data["features"].shape == (8, 576, 384) and data["features"].dtype == torch.float16
    return data


def backends():
    return ["reference", pytest.param("cpu", marks=pytest.mark.requires_ext)]


EXACT = [("attention", "attention", {}), ("divprune", "divprune", {}), ("dpp", "dpp_relevance", {"relevance": True})]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("keep", KEEPS, ids=lambda k: f"k{k}")
@pytest.mark.parametrize("method, key, extra", EXACT, ids=[m for m, _, _ in EXACT])
def test_matches_peer_code_exactly(golden, method, key, extra, keep, backend):
    kw = {"relevance": golden["relevance"]} if extra.get("relevance") else {}
    got = vtp.prune(golden["features"], golden["scores"], keep, method, backend=backend, **kw).indices
    want = golden["golden"][keep][key]
    same = [torch.equal(got[b], want[b]) for b in range(8)]
    assert all(same), f"{method} K={keep}: photos {[golden['names'][b] for b in range(8) if not same[b]]} differ"


@pytest.mark.parametrize("backend", backends())
def test_vispruner_identical_count(golden, backend):
    """All 48 selections (8 photos x 3 K x 2 ratios) at once: print how many are identical."""
    identical, overlaps = 0, []
    for keep in KEEPS:
        for ratio in (0.5, 0.75):
            got = vtp.prune(golden["features"], golden["scores"], keep, "vispruner", important_ratio=ratio,
                            backend=backend).indices
            want = golden["golden"][keep][f"vispruner_{ratio}"]
            same = sum(torch.equal(got[b], want[b]) for b in range(8))
            share = [len(set(got[b].tolist()) & set(want[b].tolist())) / keep for b in range(8)]
            print(f"\nvispruner {backend} ratio={ratio} K={keep}: {same}/8 identical, "
                  f"overlap per photo {[round(v, 3) for v in share]}")
            identical += same
            overlaps += share
    mean = sum(overlaps) / len(overlaps)
    print(f"\nvispruner {backend}: {identical}/48 identical to VisPruner's code, mean overlap {mean:.4f}")
    # the reference reproduced 41 of 48 when this was written (its fp32 GEMM rounds like the
    # peers' CPU code); the count depends on the BLAS kernel, so it is printed, not asserted
    assert mean >= 0.9


@pytest.mark.requires_ext
@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_vispruner_cpu_equals_reference_on_real_features(golden, ratio):
    """DESIGN.md allows backends with another fp32 accumulation order to part ways on these
    near-ties; the C++ op computes the similarities with the same CPU GEMM as the reference and
    matched it on all 24 selections per ratio when this was written.  Relax this test (to an
    overlap) only if the op's similarity computation changes on purpose."""
    differ = []
    for keep in KEEPS:
        a = vtp.prune(golden["features"], golden["scores"], keep, "vispruner", important_ratio=ratio, backend="cpu")
        b = vtp.prune(golden["features"], golden["scores"], keep, "vispruner", important_ratio=ratio,
                      backend="reference")
        differ += [(keep, golden["names"][i]) for i in range(8) if not torch.equal(a.indices[i], b.indices[i])]
    assert not differ, f"vispruner ratio={ratio}: cpu and reference differ on (K, photo) {differ}"


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("method", ["agile", "mix_adaptive"])
def test_real_features_statistics(golden, method, backend):
    """Sanity of the calibrated defaults on the calibration photos (defaults.py docstring)."""
    res = vtp.prune(golden["features"], golden["scores"], 64, method, backend=backend)
    assert ((res.erank > 60) & (res.erank < 120)).all(), res.erank
    assert ((res.entropy > 5.0) & (res.entropy < 6.3)).all(), res.entropy
    assert (res.indices.diff(dim=1) > 0).all()


@pytest.mark.requires_ext
@pytest.mark.parametrize("method, extra", [("agile", {}), ("agile", {"complexity": "entropy"}), ("mix", {}),
                                           ("mix_adaptive", {}), ("dpp", {}), ("divprune", {})],
                         ids=["agile", "agile-entropy", "mix", "mix_adaptive", "dpp", "divprune"])
def test_other_methods_cpu_equals_reference_on_real_features(golden, method, extra):
    a = vtp.prune(golden["features"], golden["scores"], 64, method, compute_erank=True, backend="cpu", **extra)
    b = vtp.prune(golden["features"], golden["scores"], 64, method, compute_erank=True, backend="reference", **extra)
    differ = [golden["names"][i] for i in range(8) if not torch.equal(a.indices[i], b.indices[i])]
    assert not differ, f"{method}: cpu and reference differ on {differ}"
    # the default "fast" erank: fp32 products against the fp64 reference
    torch.testing.assert_close(a.erank, b.erank, rtol=1e-4, atol=0)
    torch.testing.assert_close(a.entropy, b.entropy, rtol=1e-5, atol=0)
