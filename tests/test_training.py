"""Tiny LoRA training runs on the embedded model (CPU, about a minute)."""

import dataclasses
import json
import shutil

import pytest
import torch

from budgetlib.prompts import VANILLA_COT
from budgetlib.training.config import RecipeError, load_recipe
from budgetlib.training.data import DPOPair, SFTExample

pytestmark = pytest.mark.integration

ITEMS = [SFTExample(f"p{i}", VANILLA_COT.render(f"Ava has {i} apples. Ava gets 2 more. How many apples now?"),
                    f"{i} + 2 = {i + 2}. Answer: [[{i + 2}]]", 10, 12, "search") for i in range(8)]


def losses(result):
    return [h["loss"] for h in result.log_history if "loss" in h]


def test_sft_learns_saves_reloads_and_resumes(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from budgetlib.backends.hf import HFBackend, embedded_model_dir
    from budgetlib.training.train import train

    config = load_recipe("tale_pt_sft", max_steps=2, save_steps=1, learning_rate=1e-3)
    first = train(config, ITEMS, tmp_path / "sft")
    assert first.global_step == 2 and first.resumed_from is None
    # killed before the adapter was saved: the rerun resumes from the last checkpoint
    shutil.rmtree(tmp_path / "sft" / "adapter")
    result = train(load_recipe("tale_pt_sft", max_steps=4, save_steps=1, learning_rate=1e-3), ITEMS, tmp_path / "sft")
    assert result.resumed_from.endswith("checkpoint-2") and result.global_step == 4
    values = losses(result)
    assert all(torch.isfinite(torch.tensor(v)) for v in values) and values[-1] < values[0]

    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, str(result.adapter_dir))
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: training changed it

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    ids = tok(tuned_text := "Ava has 3 apples.", return_tensors="pt").input_ids
    with torch.inference_mode():
        reference = tuned(ids).logits
        merged = HFBackend(adapter=result.adapter_dir, progress=False)
        assert merged.identity()["adapter"]["path"] == str(result.adapter_dir)
        assert torch.allclose(merged.model(ids).logits, reference, atol=1e-4), tuned_text
    with pytest.raises(FileExistsError, match="never overwritten"):
        train(config, ITEMS, tmp_path / "sft")


def test_dpo_first_loss_is_log2_and_falls(tmp_path):
    from budgetlib.training.train import train

    pairs = [DPOPair(x.id, x.prompt, x.completion, "Let me think step by step. " * 8 + x.completion, 12, 60)
             for x in ITEMS]
    result = train(load_recipe("tale_pt_dpo", max_steps=2, learning_rate=1e-4), pairs, tmp_path / "dpo")
    values = losses(result)
    assert values[0] == pytest.approx(0.6931, abs=1e-3) and values[-1] < values[0]


def test_cli_train_from_jsonl(tmp_path, capsys):
    from budgetlib.cli import main

    path = tmp_path / "sft.jsonl"  # one SFT row per line, as a data run's items.jsonl holds them
    path.write_text("".join(json.dumps(dataclasses.asdict(x)) + "\n" for x in ITEMS[:4]))
    assert main(["train", "sft", "--recipe", "tale_pt_sft", "--data", str(path), "--out", str(tmp_path / "run"),
                 "--max-steps", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # trl prints its own dicts first
    assert out["global_step"] == 1 and (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    assert main(["train", "dpo", "--recipe", "tale_pt_sft", "--data", str(path), "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "grpo", "--recipe", "tale_pt_sft", "--data", str(path), "--out", str(tmp_path / "x"),
                 "--init-adapter", str(tmp_path / "run" / "adapter")]) == 2  # the recipe is for sft


def test_recipe_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("smoke:\n  kind: sft\n  learning_rat: 0.1\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml \[smoke\]: unknown key\(s\) \['learning_rat'\]"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="no profile 'huge'"):
        load_recipe("tale_pt_sft", "huge")
    with pytest.raises(RecipeError, match="shipped recipes"):
        load_recipe("nope")
    full = load_recipe("tale_pt_sft", "full")
    assert (full.lora_r, full.lora_alpha, full.epochs, full.learning_rate) == (8, 32, 3, 1e-4)
    for name in ("tale_pt_sft", "tale_pt_dpo", "selfbudgeter_sft", "selfbudgeter_grpo"):
        full = load_recipe(name, "full")  # in micro-batches: 16 per optimizer step; DPO: TALE's accumulation 16
        per_step = 32 if name == "tale_pt_dpo" else 16
        assert full.batch_size * full.gradient_accumulation_steps == per_step and full.gradient_checkpointing
    with pytest.raises(RecipeError, match="gradient_accumulation_steps must be >= 1"):
        load_recipe("tale_pt_sft", gradient_accumulation_steps=0)
    smoke = load_recipe("tale_pt_sft")  # a run's identity: what it computes, not how it executes
    assert load_recipe("tale_pt_sft", gradient_checkpointing=True, fused_logprobs=True).identity() == smoke.identity()
    assert load_recipe("tale_pt_sft", gradient_accumulation_steps=2).identity() != smoke.identity()


@pytest.mark.parametrize("text, message", [
    ("smoke:\n  kind: sft\n  learning_rate: 1e-4\n",
     r"bad\.yaml \[smoke\]: learning_rate must be a number, got '1e-4' \(str\) \(YAML reads 1e-4 as text"),
    ("smoke:\n  kind: sft\n  batch_size: 2.5\n", r"\[smoke\]: batch_size must be a whole number, got 2\.5"),
    ("smoke:\n  kind: sft\n  completion_only_loss: 'yes'\n", r"completion_only_loss must be true or false"),
    ("smoke:\n  kind: sft\n  target_modules: 3\n", r"target_modules must be a string or a list of strings"),
    ("smoke:\n  epochs: 2\n", r"bad\.yaml \[smoke\]: missing key\(s\) \['kind'\]"),
    ("smoke:\n  kind: grpo\n  reward: {s_c_min: high}\n", r"reward: s_c_min must be a number, got 'high'"),
    ("smoke:\n  kind: sft\n  lora_r: 0\n", r"bad\.yaml \[smoke\]: lora_r must be >= 1, got 0"),
    ("smoke: [1, 2]\n", r"bad\.yaml: expected profiles"),
    ("smoke:\n  kind: sft\n   bad indent: 1\n", r"bad\.yaml: not valid YAML"),
])
def test_a_bad_recipe_names_file_profile_key_and_value(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(bad)


def test_beta_is_dpo_only_and_tale_s_value_by_default():
    from budgetlib.training.config import DPO_BETA, TrainConfig

    assert DPO_BETA == 0.5  # the official TALE-PT code's DPO beta (trl's default is 0.1)
    assert TrainConfig(kind="dpo").beta == 0.5
    assert load_recipe("tale_pt_dpo").beta == load_recipe("tale_pt_dpo", "full").beta == 0.5
    assert load_recipe("tale_pt_dpo", beta=0.1).beta == 0.1
    # GRPO runs with KL weight 0 (train.py) and SFT has no beta: the field stays unset, and setting it is refused
    assert load_recipe("selfbudgeter_grpo").beta is None and load_recipe("tale_pt_sft").beta is None
    with pytest.raises(RecipeError, match="beta is DPO's"):
        load_recipe("selfbudgeter_grpo", beta=0.04)
    with pytest.raises(RecipeError, match="beta must be > 0"):
        load_recipe("tale_pt_dpo", beta=0.0)


def test_gradient_accumulation_and_checkpointing_reach_the_trainer(tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    from budgetlib.training.train import train

    enabled = []
    original = PreTrainedModel.activation_checkpointing_enable  # transformers 5's name for gradient checkpointing
    monkeypatch.setattr(PreTrainedModel, "activation_checkpointing_enable",
                        lambda self, *a, **kw: (enabled.append(kw), original(self, *a, **kw))[1])
    config = load_recipe("tale_pt_sft", epochs=1, batch_size=1, gradient_accumulation_steps=2,
                         gradient_checkpointing=True, learning_rate=1e-3)
    result = train(config, ITEMS[:4], tmp_path / "acc")
    assert result.global_step == 2  # 4 examples, 1 per micro-batch, 2 micro-batches per optimizer step
    assert enabled and all(torch.isfinite(torch.tensor(v)) for v in losses(result))


def test_train_run_trains_once_and_reuses_the_adapter(tmp_path):
    from budgetlib.training.train import train_run

    config = load_recipe("tale_pt_sft", max_steps=1)
    kw = dict(label="TALE-PT SFT", dataset="synthetic/train", profile="smoke", root=tmp_path)
    first = train_run("05_tale_pt_sft", config, ITEMS[:4], **kw)
    again = train_run("05_tale_pt_sft", config, ITEMS[:4], **kw)
    assert again.adapter_dir == first.adapter_dir and again.log_history == first.log_history
    assert again.global_step == first.global_step == 1 and first.run.label == "TALE-PT SFT"
    from budgetlib.training.train import adapter_digest

    assert first.run.config["init_adapter"] is None
    assert first.run.summary()["adapter_sha256"] == adapter_digest(first.adapter_dir)


def test_grpo_after_cold_start_changes_lora_and_logs_finite_rewards(tmp_path):
    """SelfBudgeter on the embedded model: a cold-start SFT teaches the
    format, then 2 GRPO steps (2 prompts x 4 samples) on top of it."""
    from safetensors.torch import load_file

    from budgetlib.prompts import SELFBUDGETER
    from budgetlib.training.data import GRPOPrompt
    from budgetlib.training.selfbudgeter import format_answer
    from budgetlib.training.train import train

    questions = [f"Ava has {i} apples. Ava gets 2 more. How many apples now?" for i in range(8)]
    cold = [SFTExample(f"p{i}", SELFBUDGETER.render(q), format_answer(12, f"{i} + 2 = {i + 2}. [[{i + 2}]]"),
                       12, 12, "cold_start") for i, q in enumerate(questions)]
    sft = train(load_recipe("selfbudgeter_sft", max_steps=6, learning_rate=1e-3), cold, tmp_path / "cold")
    prompts = [GRPOPrompt(f"p{i}", SELFBUDGETER.render(q), str(i + 2), 12) for i, q in enumerate(questions)]
    config = load_recipe("selfbudgeter_grpo", max_steps=2, batch_size=8, num_generations=4,
                         max_completion_length=24, temperature=1.0, save_steps=10)
    result = train(config, prompts[:4], tmp_path / "grpo", init_adapter=sft.adapter_dir)
    assert result.global_step == 2
    logged = [h for h in result.log_history if "reward" in h]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(h["reward"])) for h in logged)
    # alpha anneals linearly 0.5 -> 0.1 over max_steps = 2: 0.5 at step 0, 0.3 at step 1
    assert [h["selfbudgeter/alpha"] for h in logged] == pytest.approx([0.5, 0.3])
    assert any(h["selfbudgeter/well_formed"] > 0 for h in logged)  # the cold start taught the format
    weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: GRPO changed it


def test_the_full_dpo_recipe_is_tale_s_dpo_config():
    """TALE-PT.py's DPOConfig and LoraConfig (GeniusHTX/TALE), except the micro-batch (ours, labelled)."""
    c = load_recipe("tale_pt_dpo", "full")
    assert (c.gradient_accumulation_steps, c.weight_decay, c.max_grad_norm, c.beta) == (16, 0.001, 5.0, 0.5)
    assert (c.epochs, c.learning_rate, c.lora_r, c.lora_alpha) == (2, 3e-5, 8, 32)
    assert tuple(c.target_modules) == ("q_proj", "v_proj")
