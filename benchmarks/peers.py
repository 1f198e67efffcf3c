"""PyTorch ports of the peer methods' official selection loops: the baselines of the CPU benchmarks
and the live half of the golden tests (tests/test_golden.py).

Each port redoes, operation for operation and call for call (the same norm, product, dtype casts,
``topk`` / ``argsort`` / ``argmax`` arguments and update order, so the same rounding and the same
tie-breaking on the same machine), the selection loop that the peer's repository runs at
inference, at the commit whose selections tests/data/golden/peers_real.pt stores (written here from
the published loops, not copied):

- `fastervlm_official`: Theia-4869/FasterVLM @ f5d5f12, ``llava/model/llava_arch.py``,
  ``LlavaMetaForCausalLM.encode_images``: ``topk`` of the scores.
- `divprune_official`: vbdi/divprune @ 799e2d9, ``LLaVA/llava/model/llava_arch.py``, ``DivPrune``
  and ``pairwise_cosine_similarity``: the full cosine-distance matrix ``1 - normalised Gram``;
  step 0 scores every column by its second-smallest entry (``topk(2, largest=False)``), every
  later step gathers the rows of *all* tokens selected so far and takes their column minimum
  again (no running minimum); ``argmax`` each step.
- `cdpruner_official`: Theia-4869/CDPruner @ 9541616, ``llava/model/llava_arch.py``,
  ``encode_images``, the fast greedy MAP loop: kernel ``relevance_i * sim_ij * relevance_j``;
  per step ``j = argmax(di2s)``, ``eis = (kernel[j] - einsum(cis[:i, j], cis[:i])) /
  sqrt(di2s[j])``, ``di2s -= eis**2``, ``di2s[j] = -inf`` (fp32).
- `vispruner_official`: Theia-4869/VisPruner @ aefa01a, ``llava/model/llava_arch.py``,
  ``encode_images``: ``int(K * ratio)`` tokens by ``argsort`` of the scores, then, while diverse
  tokens are wanted, rounds that re-gather the normalised residual tokens, multiply the even ones
  by the odd ones, and drop the ``min(8, R - K_div)`` even tokens with the largest best match,
  until ``K_div`` remain.

What the ports leave to their callers, as the official code computes it elsewhere: the scores
(FasterVLM, VisPruner: the head mean of the [CLS] attention), CDPruner's relevance (the negated
CLIP text-image cosine, min-max normalised over the batch), DivPrune's K
(``round(ratio * N)``), and which features are compared (DivPrune and CDPruner: the projector's
output; VisPruner: the vision features); the official code runs them in the model's dtype
(fp16), the golden data in fp32.

Every port takes features [B, N, D] fp32 and [B, N] scores / relevance and returns [B, K] int64
in ascending order (the peers turn their picks into a boolean mask over the N tokens, i.e. into
spatial order). Batching follows the official code: ``DivPrune`` takes one image, so its port
loops over the batch (the official code prunes item 0 of a batch only and applies its indices to
all; as the peers run in LLaVA, batch size 1); FasterVLM's, CDPruner's and VisPruner's
``encode_images`` are written for a batch, and so are their ports (at B=1 this is the same loop).

``python benchmarks/peers.py [--golden PATH]`` checks the ports against the selections that the
official code made on real DINOv2 features (tests/data/golden/peers_real.pt).
"""

import argparse
import sys
from pathlib import Path

import torch


def fastervlm_official(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """FasterVLM: the ``keep`` highest scores [B, N] -> [B, K] ascending."""
    picked = torch.topk(scores, k=keep, dim=1)[1]
    return torch.sort(picked, dim=1).values


def _divprune_one(features: torch.Tensor, keep: int) -> torch.Tensor:
    """DivPrune on one image [N, D] -> [K] in selection order."""
    normalised = features / features.norm(dim=1, keepdim=True)
    distance = 1.0 - torch.mm(normalised, normalised.t())
    picked = torch.empty(keep, dtype=torch.long, device=features.device)
    for step in range(keep):
        if step == 0:
            # each token's distance to its nearest other token (the smallest entry is its own 0)
            score = torch.topk(distance, 2, dim=0, largest=False).values[1, :]
        else:
            so_far = torch.index_select(picked, 0, torch.arange(0, step, device=features.device))
            score = torch.min(torch.index_select(distance, 0, so_far), dim=0).values
        picked[step] = torch.argmax(score)
    return picked


def divprune_official(features: torch.Tensor, keep: int) -> torch.Tensor:
    """DivPrune max-min diversity, one image at a time: [B, N, D] -> [B, K] ascending."""
    return torch.stack([torch.sort(_divprune_one(image, keep)).values for image in features])


def cdpruner_official(features: torch.Tensor, relevance: torch.Tensor, keep: int) -> torch.Tensor:
    """CDPruner's fast greedy MAP of the DPP with kernel diag(r) S diag(r): [B, N, D] -> [B, K] ascending."""
    batch, n, _ = features.shape
    device = features.device
    rows = torch.arange(batch, device=device)
    normalised = (features / features.norm(dim=-1, keepdim=True)).float()
    similarity = torch.matmul(normalised, normalised.transpose(1, 2))
    kernel = relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)

    cis = torch.zeros((keep, batch, n), device=device)
    di2s = torch.diagonal(kernel, dim1=1, dim2=2).clone()
    picked = torch.empty((keep, batch), dtype=torch.long, device=device)
    for step in range(keep):
        j = torch.argmax(di2s, dim=-1)
        picked[step] = j
        eis = (kernel[rows, j] - torch.einsum("tb,tbn->bn", cis[:step, rows, j], cis[:step])) \
            / torch.sqrt(di2s[rows, j]).unsqueeze(-1)
        cis[step, :, :] = eis
        di2s -= torch.square(eis)
        di2s[rows, j] = -float("inf")
    return torch.sort(picked.t()).values


def vispruner_official(features: torch.Tensor, scores: torch.Tensor, keep: int,
                       important_ratio: float = 0.5) -> torch.Tensor:
    """VisPruner: important tokens by score, the rest deduplicated in rounds: [B, N, D] -> [B, K] ascending."""
    batch = features.shape[0]
    rows = torch.arange(batch, device=features.device).unsqueeze(-1)
    n_important = int(keep * important_ratio)
    n_diverse = keep - n_important

    order = scores.argsort(dim=-1, descending=True)
    important, residual = order[:, :n_important], order[:, n_important:]

    normalised = features / features.norm(dim=-1, keepdim=True)
    while n_diverse > 0:
        n_residual = residual.shape[1]
        n_drop = min(8, n_residual - n_diverse)
        if n_drop <= 0:
            break
        tokens = normalised[rows.expand(-1, n_residual), residual]
        even, odd = tokens[..., ::2, :], tokens[..., 1::2, :]
        best_match = (even @ odd.transpose(-1, -2)).max(dim=-1).values
        distinct = best_match.argsort(dim=-1, descending=True)[:, n_drop:]
        # R // 2 - r columns, as the official code expands them: with R odd (int(K * ratio) odd at
        # N = 576), or r > R // 2, it fails there and here alike
        residual = torch.cat([
            residual[..., ::2][rows.expand(-1, n_residual // 2 - n_drop), distinct],
            residual[..., 1::2],
        ], dim=-1)

    selected = torch.cat([important, residual], dim=-1) if n_diverse > 0 else important
    return torch.sort(selected, dim=1).values


# method of ada_vtp_kernels -> (peer name, call with (features, scores, relevance, keep))
PEER_OF_METHOD = {
    "attention": ("FasterVLM", lambda f, s, r, k: fastervlm_official(s, k)),
    "divprune": ("DivPrune", lambda f, s, r, k: divprune_official(f, k)),
    "dpp": ("CDPruner", lambda f, s, r, k: cdpruner_official(f, r, k)),
    "vispruner": ("VisPruner", lambda f, s, r, k: vispruner_official(f, s, k)),
}


def check_against_golden(path: str) -> bool:
    """Compares each port with the official selections stored in `path`; prints the matches."""
    data = torch.load(path)
    features, scores, relevance = data["features"].float(), data["scores"].float(), data["relevance"].float()
    ports = {
        "attention": lambda k: fastervlm_official(scores, k),
        "divprune": lambda k: divprune_official(features, k),
        "dpp_relevance": lambda k: cdpruner_official(features, relevance, k),
        "vispruner_0.5": lambda k: vispruner_official(features, scores, k, 0.5),
        "vispruner_0.75": lambda k: vispruner_official(features, scores, k, 0.75),
    }
    all_equal = True
    for keep, by_method in sorted(data["golden"].items()):
        for name, port in ports.items():
            expected = by_method[name]
            same = (port(keep) == expected).all(dim=1)
            all_equal &= bool(same.all())
            print(f"K={keep:4d} {name:16s} identical on {int(same.sum())}/{len(same)} photos")
    return all_equal


GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden" / "peers_real.pt"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", default=str(GOLDEN.resolve()),
                        help="golden selections of the official code (default: %(default)s)")
    sys.exit(0 if check_against_golden(parser.parse_args().golden) else 1)
