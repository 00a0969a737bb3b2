"""LoRA training with trl: SFT (`SFTTrainer`) and DPO (`DPOTrainer`) on the
TALE-PT data of `training.data`, and SelfBudgeter's budget-guided GRPO
(`GRPOTrainer` with `rewards.selfbudgeter_reward`, on top of a cold-start
SFT adapter).

`train_run` is how notebooks train: a `runs.Run` under ``results/<step>/<key>/`` whose key holds every input
that decides the adapter (the training config with its reward, the base model's identity and revision, a
hash of the training items, the starting adapter's hash), so changing any of them trains anew and changing
none reuses the finished adapter (or resumes from the last checkpoint).

The base model is loaded from safetensors (the embedded model's converted
copy, a local directory or a hub id); GGUF-loaded models are not trainable.
Prompts and answers are chat messages, so trl applies the model's chat
template exactly as `HFBackend` does at inference. Checkpoints are written
every `save_steps`; rerunning the same call resumes from the last one. On
CPU, bf16 and gradient checkpointing are off (see ENVIRONMENT notes)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from ..backends.hf import adapter_digest
from ..models import resolve_weights
from ..runs import Run, start_run
from .config import TrainConfig, resolved_rollouts
from .data import DPOPair, GRPOPrompt, SFTExample, items_hash

__all__ = ["TrainResult", "train", "train_run", "training_key", "items_hash", "adapter_digest",
           "base_model_source", "last_checkpoint"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    adapter_dir: Path
    log_history: list[dict]
    global_step: int
    resumed_from: str | None
    run: Run | None = field(default=None, repr=False)


def base_model_source(model: str | None) -> str:
    """Where to load trainable weights from (`models.resolve_weights`): an embedded model's safetensors
    copy (None: the default 135M; "qwen2.5-coder-0.5b": the 0.5B dequantized from its GGUF), a local
    directory or a hub id."""
    return str(resolve_weights(model)[0])


def last_checkpoint(output_dir: Path) -> str | None:
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(checkpoints[-1]) if checkpoints else None


def _messages(items: Sequence[SFTExample | DPOPair | GRPOPrompt], kind: str):
    import datasets

    rows = []
    for x in items:
        prompt = [{"role": "user", "content": x.prompt}]
        if kind == "grpo":
            if not isinstance(x, GRPOPrompt):
                raise TypeError(f"GRPO needs GRPOPrompt items, got {type(x).__name__}")
            rows.append({"prompt": prompt, "answer": x.answer, "upper_budget": x.upper_budget})
        elif kind == "sft":
            if not isinstance(x, SFTExample):
                raise TypeError(f"SFT needs SFTExample items, got {type(x).__name__}")
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": x.completion}]})
        else:
            if not isinstance(x, DPOPair):
                raise TypeError(f"DPO needs DPOPair items, got {type(x).__name__}")
            rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": x.chosen}],
                         "rejected": [{"role": "assistant", "content": x.rejected}]})
    return datasets.Dataset.from_list(rows)


def train(config: TrainConfig, items: Sequence[SFTExample | DPOPair | GRPOPrompt], output_dir: str | Path, *,
          model: str | None = None, init_adapter: str | Path | None = None, resume: bool = True) -> TrainResult:
    """Train a LoRA adapter on `items` and save it to ``<output_dir>/adapter``.
    `init_adapter` (e.g. SelfBudgeter's cold-start SFT) is merged into the
    base first, so the new adapter trains on top of it; at inference load
    both (`HFBackend(adapter=[init_adapter, adapter])`)."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not items:
        raise ValueError("no training items")
    output_dir = Path(output_dir)
    if (output_dir / "adapter" / "adapter_config.json").exists():
        raise FileExistsError(f"{output_dir}/adapter exists: a finished run is never overwritten; "
                              "use another output_dir")
    source = base_model_source(model)
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16 if cuda else torch.float32,
                                                use_safetensors=True)
    if init_adapter is not None:
        from peft import PeftModel

        base = PeftModel.from_pretrained(base, str(init_adapter)).merge_and_unload()
    targets = config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    common = dict(output_dir=str(output_dir), num_train_epochs=config.epochs, max_steps=config.max_steps,
                  per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
                  weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
                  logging_steps=config.logging_steps, save_strategy="steps", save_steps=config.save_steps,
                  gradient_accumulation_steps=config.gradient_accumulation_steps,
                  report_to="none", seed=config.seed, use_cpu=not cuda, bf16=cuda,
                  activation_checkpointing=config.gradient_checkpointing, disable_tqdm=True)
    if config.kind != "grpo":
        common["max_length"] = config.max_length
    dataset = _messages(items, config.kind)
    if config.kind == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(completion_only_loss=config.completion_only_loss, **common)
        trainer = SFTTrainer(model=base, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora)
    elif config.kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(beta=config.beta, **common)
        trainer = DPOTrainer(model=base, ref_model=None, args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=lora)
    else:
        from trl import GRPOConfig, GRPOTrainer

        from .rewards import reward_function

        rollouts = resolved_rollouts(config)
        vllm = {}
        if rollouts == "vllm":  # trl's vLLM generation on the training GPU; weights synced every step
            vllm = dict(vllm_mode="colocate", vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization)
        log.info("GRPO rollouts: %s", rollouts)
        args = GRPOConfig(num_generations=config.num_generations, temperature=config.temperature,
                          max_completion_length=config.max_completion_length, beta=0.0,
                          use_vllm=rollouts == "vllm", log_completions=False, **vllm, **common)
        trainer = GRPOTrainer(model=base, reward_funcs=[reward_function(config.reward)], args=args, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=lora)
    checkpoint = last_checkpoint(output_dir) if resume else None
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    if config.fused_logprobs and config.kind in ("dpo", "grpo"):
        from .fused_logprobs import use_budgetlib_logprobs

        with use_budgetlib_logprobs():
            trainer.train(resume_from_checkpoint=checkpoint)
    else:
        trainer.train(resume_from_checkpoint=checkpoint)
    adapter_dir = output_dir / "adapter"
    history = list(trainer.state.log_history)
    if trainer.is_world_process_zero():  # one writer under `accelerate launch` (several processes)
        (output_dir / "train_config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
        (output_dir / "log_history.json").write_text(json.dumps(history, indent=2, default=str))
    trainer.save_model(str(adapter_dir))  # last: the adapter's presence means the run finished (main process)
    return TrainResult(adapter_dir, history, trainer.state.global_step, checkpoint)


def training_key(config: TrainConfig, items: Sequence[SFTExample | DPOPair | GRPOPrompt], *,
                 model: str | None = None, init: TrainResult | None = None) -> dict:
    """Every input that decides a trained adapter: the config's identity (with its reward for GRPO), the
    base model's id and revision, the items' hash and count, and the starting adapter's hash."""
    _, model_id, revision = resolve_weights(model, materialize=False)
    return {"training": config.identity(), "base_model": {"model": model_id, "revision": revision},
            "items_sha256": items_hash(items), "n_items": len(items),
            "init_adapter": None if init is None else adapter_digest(init.adapter_dir)}


def _finished(run: Run) -> TrainResult:
    history = json.loads(run.artifact("log_history.json").read_text())
    return TrainResult(run.artifact("adapter"), history, run.summary()["global_step"], None, run)


def train_run(step: str, config: TrainConfig, items: Sequence[SFTExample | DPOPair | GRPOPrompt], *, label: str,
              dataset: str, profile: str, model: str | None = None, init: TrainResult | None = None,
              root=None) -> TrainResult:
    """`train` inside a run keyed by `training_key`: a finished run with the same key is reused as it is,
    an unfinished one resumes from its last checkpoint, and any changed input starts a new run. `init`
    (SelfBudgeter's cold start) is the run whose adapter is merged into the base first. `label` (e.g.
    "TALE-PT SFT") and `dataset` (the training data) are recorded in the run."""
    if not items:
        raise ValueError(f"{step}: no training items for {label!r}")
    key = training_key(config, items, model=model, init=init)
    run = start_run(step, key, root=root, label=label, kind=f"training ({config.kind})", dataset=dataset,
                    metadata={"model": key["base_model"]["model"], "n": len(items), "profile": profile,
                              "init_run": None if init is None or init.run is None else str(init.run.dir)})
    if run.finished:
        log.info("%s: reusing the finished training run", run.dir)
        return _finished(run)
    with run.writing():  # one writer per run: a second process gets a clear error
        adapter = run.artifact("adapter")
        if (adapter / "adapter_config.json").exists():  # saved, but killed before the summary was written
            history = json.loads(run.artifact("log_history.json").read_text())
            steps = max((h.get("step", 0) for h in history), default=0)
            result = TrainResult(adapter, history, steps, None, run)
        else:
            result = train(config, items, run.dir, model=model,
                           init_adapter=None if init is None else init.adapter_dir)
            result.run = run
        run.finish({"global_step": result.global_step, "adapter_sha256": adapter_digest(adapter),
                    "resumed_from": result.resumed_from})
    return result
