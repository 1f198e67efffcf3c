"""vLLM's OpenAI-compatible server with the ada_vtp plugin, on the tiny LLaVA-1.5 checkpoint, with
tensor parallelism over two CPU ranks where the machine has two cores: an image chat request gets
the prompt length and the greedy reply that HF transformers with `apply_ada_vtp` gives.

Two ranks split the CLIP tower's heads, so the [CLS] head average is the all-reduced sum of
each rank's heads (`ada_vtp_kernels.integrations.vllm.llava.cls_attention`): a rank averaging only
its own heads would score, and so keep, other tokens than HF does.  The server runs in its own
process group and is stopped whatever happens.
"""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("vllm")

from transformers import LlavaForConditionalGeneration  # noqa: E402

from ada_vtp_kernels.integrations import apply_ada_vtp  # noqa: E402

from support import tiny_checkpoints  # noqa: E402
from support.vllm_runs import HF, NEW_TOKENS, images  # noqa: E402

pytestmark = pytest.mark.requires_ext

SETTINGS = {"keep": 16, "method": "agile"}
QUESTION = "What is in this picture?"
START_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks() -> tuple[int, dict]:
    """(tensor-parallel size, environment): two ranks, each bound to one core, where there are two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return 1, {}
    return 2, {"VLLM_CPU_OMP_THREADS_BIND": f"{cpus[0]}|{cpus[1]}"}


def _get(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def _post(url: str, body: dict, timeout: float = 120) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = tiny_checkpoints.save_llava(tmp_path_factory.mktemp("tiny-llava-server"))
    port = _free_port()
    ranks, env = _ranks()
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
               "--enforce-eager", "--gpu-memory-utilization", "0.5", "--tensor-parallel-size", str(ranks),
               "--hf-overrides", json.dumps({"ada_vtp": SETTINGS})]
    environment = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", **env}
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if _get(f"http://127.0.0.1:{port}/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield checkpoint, f"http://127.0.0.1:{port}", ranks
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_chat_request_gets_hf_prompt_length_and_reply(server):
    checkpoint, url, ranks = server
    image = images([(160, 120)], seed=3)[0]
    png = io.BytesIO()
    image.save(png, format="PNG")
    content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.getvalue())
                                                   .decode()}},
               {"type": "text", "text": QUESTION}]
    reply = _post(f"{url}/v1/chat/completions", {
        "model": str(checkpoint), "messages": [{"role": "user", "content": content}],
        "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True, "skip_special_tokens": False})

    hf = HF(checkpoint, LlavaForConditionalGeneration)
    prompt = hf.processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                            {"type": "text", "text": QUESTION}]}],
                                              add_generation_prompt=True, tokenize=False)
    apply_ada_vtp(hf.model, **SETTINGS)
    want = hf.generate([prompt], [[image]])[0]
    assert reply["usage"]["prompt_tokens"] == want.prompt_tokens
    assert reply["usage"]["completion_tokens"] == NEW_TOKENS
    assert reply["choices"][0]["message"]["content"] == hf.processor.tokenizer.decode(want.tokens), \
        f"tensor-parallel size {ranks}"
