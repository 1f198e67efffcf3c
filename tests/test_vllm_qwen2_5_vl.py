"""The vLLM plugin on Qwen2.5-VL (tiny random-weight checkpoint, CPU: 28 px merged tokens, 4 to 64
per image, a windowed and a full-attention vision block): vLLM with ``hf_overrides={"ada_vtp":
...}`` and HF transformers with `apply_ada_vtp` give the same prompt length (K per image), kept
indices, M-RoPE positions (prefill and first decode step) and greedy tokens for every method and
K at the edges, on a batch of images of different sizes and aspect ratios (a portrait image, text
before the first of two images); the placeholders the processor emits are the rows the encoder
returns; videos pass through unpruned; without the override vLLM is unchanged; a K above an
image's token count fails its request, bad settings fail at engine start, with the plugin's own
errors.  The position recomputation is also checked on its own: chunked prefill gives what one
step gives, and unpruned media get vLLM's own numbering.

Image sizes are (width, height), as PIL gives them; token counts are computed with HF's resize
formula, independently of the plugin.  The module's engine starts with ``ada_vtp`` (the runner's
position path is fixed at start) and switches K and the method per test (`Engine.configure`).
Runs in the vLLM venv (tools/vllm_env.sh); elsewhere it is skipped.
"""

import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize  # noqa: E402
from transformers.video_utils import VideoMetadata  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.model_executor.models import qwen2_5_vl as vllm_qwen  # noqa: E402

from ada_vtp_kernels import spec  # noqa: E402
from ada_vtp_kernels.integrations import apply_ada_vtp, remove_ada_vtp  # noqa: E402
from ada_vtp_kernels.integrations.vllm import qwen2_5_vl as plugin  # noqa: E402

from support import tiny_qwen2_5_vl  # noqa: E402
from support.tiny_qwen2_5_vl import MAX_TOKENS, MIN_TOKENS, UNIT  # noqa: E402
from support.vllm_runs import HF, NEW_TOKENS, Engine, images, record_selections  # noqa: E402

pytestmark = pytest.mark.requires_ext

IMAGE, VIDEO = "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"


def chat(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


PROMPTS = [chat(f"{IMAGE}What is this?"), chat(f"Describe {IMAGE} in detail."),
           chat(f"Compare {IMAGE} and {IMAGE}. Which one is brighter?")]
# per prompt, its images' (width, height): 4×4 merged tokens, 5×7, then a portrait 6×3 and 5×5
SIZES = [[(112, 112)], [(200, 150)], [(90, 160), (150, 150)]]


def tokens(size: tuple[int, int]) -> int:
    """N_i of a (width, height) image: its merged tokens after HF's resize (multiples of 28 px)."""
    width, height = size
    height, width = smart_resize(height, width, factor=UNIT, min_pixels=MIN_TOKENS * UNIT**2,
                                 max_pixels=MAX_TOKENS * UNIT**2)
    return height * width // UNIT**2


SMALLEST = min(tokens(size) for prompt in SIZES for size in prompt)  # 16: the 112 × 112 image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_qwen2_5_vl.save_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen2_5_vl"))


@pytest.fixture(scope="module")
def engine(checkpoint):
    engine = Engine(checkpoint, {"ada_vtp": {"keep": 1}})
    yield engine
    engine.close()


class QwenHF(HF):
    """`HF` that also records the position_ids of each language-model call ([4, 1, L]: the text
    row, then t, h, w)."""

    def __init__(self, path):
        super().__init__(path, Qwen2_5_VLForConditionalGeneration)
        self.positions = []
        self.model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: self.positions.append(kwargs["position_ids"]), with_kwargs=True)


@pytest.fixture(scope="module")
def hf(checkpoint):
    return QwenHF(checkpoint)


@pytest.fixture(scope="module")
def image_lists():
    pictures = iter(images([size for prompt in SIZES for size in prompt]))
    return [[next(pictures) for _ in prompt] for prompt in SIZES]


@pytest.fixture
def vllm_positions(monkeypatch):
    """The M-RoPE positions [3, T] of each vLLM forward (all scheduled tokens of a step)."""
    seen = []
    forward = plugin.Qwen2_5_VLForConditionalGeneration.forward

    def recording(self, input_ids, positions, *args, **kwargs):
        seen.append(positions.clone())
        return forward(self, input_ids, positions, *args, **kwargs)

    monkeypatch.setattr(plugin.Qwen2_5_VLForConditionalGeneration, "forward", recording)
    return seen


def text_tokens(hf, prompt: str) -> int:
    return len(hf.processor.tokenizer(prompt)["input_ids"]) - prompt.count(IMAGE)


def per_image(calls) -> tuple[list[torch.Tensor], list[list[int]]]:
    """(features [N_i, D], kept indices) of each image, in encoding order, from recorded prune
    calls (vLLM prunes once per encoder batch, the HF integration once per prompt)."""
    features, indices = [], []
    for call_features, _, lengths, result in calls:
        for i, length in enumerate(lengths.tolist()):
            features.append(call_features[i, :length])
            indices.append(result.indices[i].tolist())
    return features, indices


def hf_generate(hf, image_lists) -> tuple[list, list[torch.Tensor], list[torch.Tensor]]:
    """(runs, the (t, h, w) positions [3, L] of each prompt's prefill, [3] of its first decode step)."""
    hf.positions.clear()
    runs = hf.generate(PROMPTS, image_lists)
    prefills = [i for i, p in enumerate(hf.positions) if p.shape[-1] > 1]
    return (runs, [hf.positions[i][-3:, 0] for i in prefills], [hf.positions[i + 1][-3:, 0, 0] for i in prefills])


def assert_same_positions(seen: list[torch.Tensor], runs, prefills: list[torch.Tensor], decodes: list[torch.Tensor]):
    """vLLM's first forward is the batch's prefill (the prompts in order), its second the first
    decode step of each prompt."""
    assert seen[0].shape[1] == sum(run.prompt_tokens for run in runs)
    for got, want in zip(torch.split(seen[0], [run.prompt_tokens for run in runs], dim=1), prefills, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(seen[1], torch.stack(decodes, dim=1))


def test_without_override_vllm_is_vllms_class_and_equals_hf_unpatched(checkpoint, hf, image_lists):
    unpatched = Engine(checkpoint)
    try:
        assert unpatched.llm.apply_model(lambda model: model.prunes_images) == [False]
        got = unpatched.generate(PROMPTS, image_lists)
    finally:
        unpatched.close()
    want, _, _ = hf_generate(hf, image_lists)
    assert got == want
    for prompt, sizes, run in zip(PROMPTS, SIZES, got):
        assert run.prompt_tokens == text_tokens(hf, prompt) + sum(tokens(size) for size in sizes)


def test_chunked_prefill_equals_hf(checkpoint, hf, image_lists):
    """16 tokens per step: the steps cut the prompts inside images, before and after them."""
    chunked = Engine(checkpoint, {"ada_vtp": {"keep": 8, "method": "dpp"}}, max_num_batched_tokens=16, max_num_seqs=4)
    try:
        got = chunked.generate(PROMPTS, image_lists)
        chunked.configure(None)
        got_unpruned = chunked.generate(PROMPTS, image_lists)
    finally:
        chunked.close()
    apply_ada_vtp(hf.model, 8, "dpp")
    try:
        want, _, _ = hf_generate(hf, image_lists)
    finally:
        remove_ada_vtp(hf.model)
    assert got == want
    assert got_unpruned == hf_generate(hf, image_lists)[0]


def test_pruning_switched_off_after_start_equals_hf_unpatched(engine, hf, image_lists, vllm_positions):
    """All tokens through the plugin's position path (appended columns, recomputed positions)."""
    engine.configure(None)
    got = engine.generate(PROMPTS, image_lists)
    want, prefills, decodes = hf_generate(hf, image_lists)
    assert got == want
    assert_same_positions(vllm_positions, got, prefills, decodes)


@pytest.mark.parametrize("method", spec.METHODS)
@pytest.mark.parametrize("keep", [1, 8, SMALLEST])
def test_same_tokens_positions_and_indices_as_hf(engine, hf, image_lists, monkeypatch, vllm_positions, method, keep):
    selections = record_selections(monkeypatch)
    engine.configure({"keep": keep, "method": method})
    got = engine.generate(PROMPTS, image_lists)
    vllm_calls = list(selections.calls)
    selections.calls.clear()
    apply_ada_vtp(hf.model, keep, method)
    try:
        want, prefills, decodes = hf_generate(hf, image_lists)
    finally:
        remove_ada_vtp(hf.model)
    for prompt, sizes, run in zip(PROMPTS, SIZES, got):
        assert run.prompt_tokens == text_tokens(hf, prompt) + keep * len(sizes)
    assert [run.prompt_tokens for run in got] == [run.prompt_tokens for run in want]
    assert len(vllm_calls) == 1  # one step schedules the three prompts: one encoder batch, one ragged prune
    got_features, got_indices = per_image(vllm_calls)
    want_features, want_indices = per_image(selections.calls)
    assert [len(f) for f in got_features] == [tokens(size) for prompt in SIZES for size in prompt]
    for got_image, want_image in zip(got_features, want_features, strict=True):
        torch.testing.assert_close(got_image, want_image, rtol=1e-4, atol=1e-4)
    assert got_indices == want_indices
    assert all(row == sorted(set(row)) for row in got_indices)  # raster order, as the placeholders
    assert_same_positions(vllm_positions, got, prefills, decodes)
    assert [run.tokens for run in got] == [run.tokens for run in want]


@pytest.mark.parametrize("size", [(112, 112), (90, 160), (60, 60), (300, 300), (600, 40), (40, 600)])
def test_placeholders_are_the_rows_the_encoder_returns(engine, hf, monkeypatch, size):
    """K placeholders and K rows (plus the position columns), from the smallest image (K = all of
    its 4 tokens) to one-row and one-column images."""
    keep = MIN_TOKENS
    returned = []
    encode = plugin.Qwen2_5_VLForConditionalGeneration._image_embeddings

    def recording(self, image_input):
        embeddings = encode(self, image_input)
        returned.extend(embedding.shape for embedding in embeddings)
        return embeddings

    monkeypatch.setattr(plugin.Qwen2_5_VLForConditionalGeneration, "_image_embeddings", recording)
    engine.configure({"keep": keep, "method": "divprune"})
    [run] = engine.generate(PROMPTS[:1], [images([size])])
    placeholders = run.prompt_tokens - text_tokens(hf, PROMPTS[0])
    hidden = hf.model.config.text_config.hidden_size
    assert returned == [(placeholders, hidden + plugin.POSITION_COLUMNS)] == [(keep, hidden + plugin.POSITION_COLUMNS)]


def test_videos_pass_through_unpruned(engine, hf):
    """A 4-frame video at 2 fps (t positions 0, 2: one second per grid step × tokens_per_second 2)
    gives HF's unpatched prompt and tokens while the engine prunes images."""
    frames = np.stack([np.asarray(picture) for picture in images([(84, 56)] * 4, seed=1)])
    metadata = dict(fps=2.0, duration=2.0, total_num_frames=4, frames_indices=[0, 1, 2, 3], video_backend="opencv")
    prompt = chat(f"Watch {VIDEO} now.")
    engine.configure({"keep": 1})
    video = (frames, dict(metadata, do_sample_frames=False))  # the frames as given, as HF's call below
    [out] = engine.llm.generate([{"prompt": prompt, "multi_modal_data": {"video": video}}],
                                SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True), use_tqdm=False)
    inputs = hf.processor(videos=[frames], text=prompt, return_tensors="pt", do_sample_frames=False,
                          video_metadata=[VideoMetadata(**metadata)])
    with torch.no_grad():
        want = hf.model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert len(out.prompt_token_ids) == inputs["input_ids"].shape[1]
    assert list(out.outputs[0].token_ids) == want[0, -NEW_TOKENS:].tolist()


def test_keep_above_an_images_tokens_fails_its_request(engine, image_lists):
    engine.configure({"keep": SMALLEST + 1})
    with pytest.raises(ValueError, match=rf"keep = {SMALLEST + 1} exceeds the {SMALLEST} merged visual tokens of "
                                         rf"image 0 \(patch grid 1×8×8\); expected 1 <= keep <= {SMALLEST}"):
        engine.generate(PROMPTS, image_lists)
    engine.configure({"keep": SMALLEST})  # the engine serves the next requests
    assert len(engine.generate(PROMPTS, image_lists)) == len(PROMPTS)


@pytest.mark.parametrize("settings, error", [({"keep": 8, "method": "bogus"}, "unknown method 'bogus'"),
                                             ({"keep": MAX_TOKENS + 1}, f"keep = {MAX_TOKENS + 1} exceeds the "
                                                                        f"{MAX_TOKENS} merged visual tokens")])
def test_engine_start_rejects_bad_settings(checkpoint, settings, error):
    with pytest.raises(Exception, match=error):
        Engine(checkpoint, {"ada_vtp": settings})


def media_mask(texts: list[int], lengths: list[int]) -> torch.Tensor:
    """is_media [N] of a prompt alternating texts[i] text tokens and lengths[i] placeholders (one
    more text than media)."""
    flags = [torch.zeros(texts[0], dtype=torch.bool)]
    for length, text in zip(lengths, texts[1:]):
        flags += [torch.ones(length, dtype=torch.bool), torch.zeros(text, dtype=torch.bool)]
    return torch.cat(flags)


def rows(grid: np.ndarray, kept: slice | list[int] = slice(None)) -> torch.Tensor:
    """[n, 4] (t, h, w, extent) of an item's kept tokens, as `split_positions` returns them."""
    columns = np.concatenate([grid, np.full((1, grid.shape[1]), grid.max() + 1)])[:, kept]
    return torch.from_numpy(columns.T.copy())


def one_dimensional(length: int) -> torch.Tensor:
    """[3, length] 0, 1, 2, ... in every row: a provisional numbering (the text before the first
    media item is final in it, as in the runner's)."""
    return torch.arange(length).expand(3, -1).clone()


def test_unpruned_media_get_vllms_own_positions():
    """Two images (a portrait one: its extent is its height) and a 2-step video at 2 positions per
    step, text around them, nothing pruned: the plugin's provisional numbering and the positions
    recomputed from it are vLLM's own ``get_mrope_input_positions`` (and its delta)."""
    vision = SimpleNamespace(spatial_merge_size=2, tokens_per_second=2)
    model = SimpleNamespace(config=SimpleNamespace(vision_config=vision), prunes_images=True)
    model.iter_mm_grid_thw = types.MethodType(vllm_qwen.Qwen2_5_VLForConditionalGeneration.iter_mm_grid_thw, model)
    features, offset = [], 3
    for modality, grid, text_after in [("image", (1, 12, 6), 2), ("image", (1, 4, 8), 4), ("video", (2, 4, 6), 5)]:
        data = {f"{modality}_grid_thw": SimpleNamespace(data=torch.tensor(grid))}
        if modality == "video":
            data["second_per_grid_ts"] = SimpleNamespace(data=torch.tensor(1.0))
        length = grid[0] * grid[1] * grid[2] // 4
        features.append(SimpleNamespace(modality=modality, data=data,
                                        mm_position=SimpleNamespace(offset=offset, length=length)))
        offset += length + text_after
    prompt = [0] * offset
    want, want_delta = vllm_qwen.Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions(model, prompt, features)
    provisional, delta = plugin.Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions(model, prompt, features)
    assert torch.equal(provisional, want) and delta == want_delta
    grids = [plugin.grid_positions(1, 6, 3), plugin.grid_positions(1, 2, 4), plugin.grid_positions(2, 2, 3, 2.0)]
    is_media = media_mask([3, 2, 4, 5], [g.shape[1] for g in grids])
    positions, delta = plugin.recompute_positions(is_media, [rows(g) for g in grids], one_dimensional(offset), 0)
    assert torch.equal(positions, want) and delta == want_delta
    assert want[:, 21].tolist() == [3 + 6] * 3  # after the portrait image: its height, not its width


@pytest.mark.parametrize("chunks", [[19], [5, 14], [9, 10], [4, 8, 7], [1] * 19])
def test_chunked_prefill_gives_the_one_step_positions(chunks):
    """Two pruned images (5 tokens kept of each, raster order) prefilled in steps that cut the
    prompt inside the first image, between the images, inside the second, at every token: each
    step recomputes from the previous step's positions, and the last ends at the one-step result."""
    grids = [plugin.grid_positions(1, 6, 3), plugin.grid_positions(1, 4, 4)]
    media = [rows(grids[0], [1, 7, 8, 16, 17]), rows(grids[1], [0, 5, 6, 10, 15])]
    is_media = media_mask([3, 2, 4], [5, 5])
    runs = [(3, 8), (10, 15)]
    want, want_delta = plugin.recompute_positions(is_media, media, one_dimensional(19), 0)
    positions, computed = one_dimensional(19), 0
    for length in chunks:
        step = [m[max(begin, computed) - begin:min(end, computed + length) - begin]
                for m, (begin, end) in zip(media, runs) if begin < computed + length and end > computed]
        positions, delta = plugin.recompute_positions(is_media, step, positions, computed)
        computed += length
    assert torch.equal(positions, want)
    assert delta == want_delta
    # image 0 starts at 3: the kept tokens (h, w) = (0, 1), (2, 1), (2, 2), (5, 1), (5, 2) of its 6 × 3 grid
    assert want[:, 3:8].tolist() == [[3] * 5, [3, 5, 5, 8, 8], [4, 4, 5, 4, 5]]
    assert want[:, 8].tolist() == [9] * 3  # the text after the portrait image continues at 3 + its height
    assert want[:, 10:15].tolist() == [[11] * 5, [11, 12, 12, 13, 14], [11, 12, 13, 13, 14]]
    assert want_delta == 15 + 4 - 19  # the last text at 15 ... 18: next position 19, as many as tokens
