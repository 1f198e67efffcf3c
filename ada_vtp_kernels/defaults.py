"""Default parameters of the selection methods, shared by every backend.

The C++ schema (csrc/torch_bindings.cpp) repeats these literals as its argument defaults;
tests/test_ops.py checks that the two agree.

Calibration: AgilePruner does not publish `erank_ref` or `tau_max`.  The values below were
measured on real encoder features, the eight DINOv2 ViT-S/14 photos of tests/data/golden
(layer -2, 576 tokens at 336 px, 384 channels):

- ``ERANK_REF = 90.0``: their exact erank spans 68.8 (moon) to 111.7 (cat; chelsea is the
  same photo), mean 89.8.  erank_ref is "the complexity of a typical image", so the round
  number at the mean makes ``c = erank / erank_ref`` about 1 for an average photo, below 1 for
  simple ones, above 1 for cluttered ones.
- ``ENTROPY_REF = 5.75``: the [CLS] attention entropy of the same photos, 5.11 to 6.19 nats,
  mean 5.75 (ln 576 = 6.36 would be uniform attention).
- ``TAU_MAX = 0.2``: the suppression radius grows as ``r * c * 0.01`` along the score order,
  reaching the cap around rank 20 for an average image.  With K=64 and tau_max 0.2 the score
  order supplies all 64 tokens on 3 of the 8 photos and runs out after 18 to 61 selections on
  the others, so suppression and the max-min fill both shape the result; at 0.1 the order runs
  out on 2 photos only (the selection stays close to attention), at 0.4 and above on all of
  them after 13 to 32 selections (the fill dominates).  Reproduce with
  ``benchmarks/calibrate_defaults.py``.
- ``MIX_ATTENTION_RATIO = 0.5``, ``MIX_GAIN = 0.5``: at ``erank == erank_ref`` mix_adaptive
  keeps half attention and half diverse tokens (the paper's balanced mix); an image at half the
  reference erank gets 75 % attention tokens, one at 1.5x gets 25 %, one at 3x or more gets
  pure diversity (the clamp).

`ada-vtp calibrate` recomputes ERANK_REF and ENTROPY_REF for another encoder; pass its values as
``erank_ref=`` / ``entropy_ref=``.  On all 20 scikit-image photos (``ada-vtp calibrate
--sample-photos``, same encoder and layer) it gives mean erank 87.25 (55.1 to 126.1) and mean
entropy 5.770 (5.11 to 6.23): within 3 % and 0.3 % of the values above, far inside the spread
between photos, so the defaults (and the TAU_MAX measurements made with them) are kept.
"""

IMPORTANT_RATIO = 0.5
MIX_ATTENTION_RATIO = 0.5
MIX_GAIN = 0.5
ERANK_REF = 90.0
ENTROPY_REF = 5.75
TAU_MAX = 0.2
TAU_SCALE = 0.01
COMPLEXITY = "erank"
ERANK_METHOD = "fast"

# the SVD-free erank estimator (reference.erank_fast_one documents the method and its error)
FAST_ERANK_BLOCK = 64  # deflated top eigen-space; images with min(n, D) <= 64 are solved exactly
# larger spectra leave too much mass below a 64-column block for 8 quadrature nodes (measured at
# 2880 x 1024: 4.3 % max error with 64 columns, 0.9 % with 128)
FAST_ERANK_LARGE_BLOCK = 128
FAST_ERANK_LARGE_ABOVE = 768  # min(n, D) above which the large block is used
FAST_ERANK_POWER_STEPS = 2  # block power steps before the Rayleigh-Ritz step
FAST_ERANK_PROBES = 8  # Rademacher probes of the deflated remainder
FAST_ERANK_LANCZOS_STEPS = 8  # Lanczos steps per probe: a 7-node Gauss and an 8-node anti-Gauss rule

METHODS = ("attention", "divprune", "dpp", "vispruner", "mix", "mix_adaptive", "agile")
COMPLEXITIES = ("erank", "entropy")
ERANK_METHODS = ("exact", "fast")

# numerical constants of DESIGN.md
NORM_EPS = 1e-6
DISTANCE_SNAP = 1e-6
DPP_STOP = 1e-6
VISPRUNER_ROUND = 8
# features whose largest magnitude lies outside [SAFE_MIN, SAFE_MAX] are rescaled by a power of
# two first: a sum of up to 2**15 squares of 2**56 stays below fp32's 2**128, and (2**-56)**2
# is still a normal fp32 number
SAFE_MIN = 2.0**-56
SAFE_MAX = 2.0**56
