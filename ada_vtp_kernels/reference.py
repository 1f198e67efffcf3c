"""Every op's pure-PyTorch reference, gathered: ``from ada_vtp_kernels import reference``.

The definitions live beside their kernels (kernels/<op>/reference.py); this module only names
them in one place for tests, benchmarks and the applications.  The library itself never imports
it: the references are the specification the kernels are checked against, not a runtime path.
"""

from .kernels.entropy.reference import attention_entropy_one, attention_entropy_ref
from .kernels.erank.reference import (
    ERANK_ESTIMATORS,
    erank_fast_one,
    erank_one,
    erank_ref,
    probe_signs,
    rescale,
)
from .kernels.prune.reference import (
    agile_threshold,
    agile_walk,
    cosine_distance,
    prune_one,
    prune_ref,
    score_order,
    select_agile,
    select_dpp,
    select_maxmin,
    select_topk,
    select_vispruner,
)

__all__ = [
    "ERANK_ESTIMATORS", "agile_threshold", "agile_walk", "attention_entropy_one",
    "attention_entropy_ref", "cosine_distance", "erank_fast_one", "erank_one", "erank_ref",
    "probe_signs", "prune_one", "prune_ref", "rescale", "score_order",
    "select_agile", "select_dpp", "select_maxmin", "select_topk", "select_vispruner",
]
