"""Shared fixtures and input generators of the test suite.

- Every test starts from the same RNG state (`_seed`, autouse).
- ``@pytest.mark.requires_ext`` skips a test when the compiled op ``torch.ops.ada_vtp.*`` is not
  loaded (``ada_vtp_kernels.ops.extension_loaded()`` is False).
- The input generators live in tests/support/data.py (fixtures here: make_exact_features,
  make_scores, make_lengths).  `exact_features` builds features whose cosines are exact in fp32
  on every backend (rows in {-1, 0, +1} with 4**m non-zeros, so every norm is 2**m and every
  product a short sum of powers of two); with exact cosines every backend must return
  bit-identical indices.
- `distinct_scores` gives distinct positive scores, `ragged_lengths` ragged valid lengths.
- `support.data.lapack_eigh` stands in for the Triton Jacobi eigensolver under the interpreter, where the
  interpreted kernel costs seconds per matrix (tests/test_triton_eigh.py checks the kernel itself).
- ``--interpreter-full`` runs the tests marked ``interpreter_full`` (the whole LLaVA-sized
  matrix under the Triton interpreter, about 10 minutes); without it CI runs their subset.
- Uninitialised memory is poisoned in every test (`_poison_uninitialised_memory`, autouse):
  ``torch.empty`` / ``empty_like`` / ``new_empty`` in Python and ``at::empty`` in the C++ kernels
  return NaN for floats and the largest value for integers, so an output element that a kernel
  forgets to write fails the test instead of passing with whatever the allocator held.
- Hypothesis profiles (tests/support/strategies.py draws the inputs): ``ci`` (the default:
  derandomized, so CI runs the same examples every time, sized for CI's time budget), ``dev``
  (a quick local pass) and ``thorough`` (random, 20x the examples: a bug hunt).  Pick one with
  ``pytest --hypothesis-profile=thorough``.
"""

import os
import random

import pytest
import torch
from hypothesis import HealthCheck, settings

# Without a GPU the Triton kernels run under the interpreter.  triton reads TRITON_INTERPRET when it
# is first imported (its own @jit helpers, tl.max and the like, are built for the interpreter or
# not), so it is set here, before any test module can import triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from ada_vtp_kernels import ops  # noqa: E402

from support.data import distinct_scores, exact_features, ragged_lengths  # noqa: E402

# Every property test states its examples as a share of the profile's max_examples
# (prune_strategies.examples), so one profile sizes the whole tier.
_PROFILE = dict(deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=40, derandomize=True, **_PROFILE)
settings.register_profile("dev", max_examples=10, **_PROFILE)
settings.register_profile("thorough", max_examples=800, **_PROFILE)
settings.load_profile("ci")

EXT_SKIP_REASON = (
    "the ada_vtp C++ extension is not loaded (ada_vtp_kernels.ops.extension_loaded() is False); "
    "build it with `pip install -e . --no-build-isolation`"
)


def pytest_addoption(parser):
    parser.addoption("--interpreter-full", action="store_true",
                     help="also run the interpreter_full tests (every LLaVA-sized Triton case; "
                          "on a GPU they always run)")


def pytest_configure(config):
    config.addinivalue_line("markers", "requires_ext: needs the compiled torch.ops.ada_vtp ops")
    config.addinivalue_line("markers", "interpreter_full: LLaVA-sized Triton cases beyond CI's subset; "
                                       "under the interpreter they run with --interpreter-full")


def pytest_collection_modifyitems(config, items):
    skip_full = not torch.cuda.is_available() and not config.getoption("--interpreter-full")
    for item in items:
        if "requires_ext" in item.keywords and not ops.extension_loaded():
            item.add_marker(pytest.mark.skip(reason=EXT_SKIP_REASON))
        if "interpreter_full" in item.keywords and skip_full:
            item.add_marker(pytest.mark.skip(reason="LLaVA-sized interpreter case: pass --interpreter-full"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)


@pytest.fixture(autouse=True)
def _poison_uninitialised_memory():
    """NaN (floats) / the largest value (integers) in every uninitialised allocation, Python's and
    the C++ kernels' alike (torch's deterministic mode with fill_uninitialized_memory; warn_only
    keeps ops without a deterministic kernel usable)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.utils.deterministic.fill_uninitialized_memory = fill


@pytest.fixture
def requires_ext():
    """Fixture form of the marker, for tests that only need the op on some parameters."""
    if not ops.extension_loaded():
        pytest.skip(EXT_SKIP_REASON)


# the generators of support.data as fixtures


@pytest.fixture
def make_exact_features():
    return exact_features


@pytest.fixture
def make_scores():
    return distinct_scores


@pytest.fixture
def make_lengths():
    return ragged_lengths
