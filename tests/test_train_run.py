"""train_run's key: every input that decides an adapter starts a new run when it changes, and nothing else
does. `train` is replaced by a stand-in that writes an adapter, so this runs in seconds."""

import json
import math
from pathlib import Path

import pytest

from budgetlib.training import train as train_module
from budgetlib.training.config import RecipeError, load_recipe
from budgetlib.training.data import GRPOPrompt, SFTExample
from budgetlib.training.rewards import RewardConfig
from budgetlib.training.train import TrainResult, train_run

SFT = [SFTExample(f"p{i}", f"q{i}", f"a{i} [[{i}]]", 10, 12, "search") for i in range(4)]
GRPO = [GRPOPrompt(f"p{i}", f"q{i}", str(i), 12) for i in range(4)]


@pytest.fixture
def trained(monkeypatch):
    """Each call of the stand-in `train`: (kind, output dir, init adapter)."""
    calls = []

    def fake_train(config, items, output_dir, *, model=None, init_adapter=None, resume=True):
        adapter = Path(output_dir) / "adapter"
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text("{}")
        (adapter / "adapter_model.safetensors").write_bytes(f"{len(calls)} {output_dir}".encode())
        history = [{"step": 1, "loss": 1.0}]
        (Path(output_dir) / "log_history.json").write_text(json.dumps(history))
        calls.append((config.kind, Path(output_dir), init_adapter))
        return TrainResult(adapter, history, 1, None)

    monkeypatch.setattr(train_module, "train", fake_train)
    return calls


def run(config, items, tmp_path, **kw):
    return train_run("07_selfbudgeter", config, items, label="x", dataset="synthetic/train", profile="smoke",
                     root=tmp_path, **kw)


def test_unchanged_inputs_reuse_and_execution_details_do_not_count(trained, tmp_path):
    config = load_recipe("tale_pt_sft", max_steps=1)
    first = run(config, SFT, tmp_path)
    assert run(config, SFT, tmp_path).adapter_dir == first.adapter_dir and len(trained) == 1
    same = load_recipe("tale_pt_sft", max_steps=1, gradient_checkpointing=True, fused_logprobs=True)
    assert run(same, SFT, tmp_path).adapter_dir == first.adapter_dir and len(trained) == 1


@pytest.mark.parametrize("change", ["items", "one item's text", "recipe", "base model"])
def test_each_changed_input_trains_anew(trained, tmp_path, change):
    config = load_recipe("tale_pt_sft", max_steps=1)
    first = run(config, SFT, tmp_path)
    items, kw = SFT, {}
    if change == "items":
        items = SFT[:3]
    elif change == "one item's text":
        items = [SFT[0].__class__(**{**SFT[0].__dict__, "completion": "other [[0]]"}), *SFT[1:]]
    elif change == "recipe":
        config = load_recipe("tale_pt_sft", max_steps=2)
    else:
        kw = {"model": "qwen2.5-coder-0.5b"}
    second = run(config, items, tmp_path, **kw)
    assert second.run.dir != first.run.dir and len(trained) == 2


def test_a_changed_reward_never_reuses_a_grpo_adapter(trained, tmp_path):
    """The defect this key fixes: the reward's constants lived in module globals, outside the key, so a
    GRPO adapter trained on an older reward was silently reused."""
    cold = run(load_recipe("selfbudgeter_sft", max_steps=1), SFT, tmp_path)
    grpo = load_recipe("selfbudgeter_grpo", max_steps=1)
    first = run(grpo, GRPO, tmp_path, init=cold)
    assert run(grpo, GRPO, tmp_path, init=cold).run.dir == first.run.dir and len(trained) == 2
    assert first.run.config["training"]["reward"]["alpha_start"] == 0.5
    changes = [load_recipe("selfbudgeter_grpo", max_steps=1, reward={"alpha_start": 0.4}),
               load_recipe("selfbudgeter_grpo", max_steps=1, reward={"budget_penalty": -0.6}),
               load_recipe("selfbudgeter_grpo", max_steps=1, reward={"equations": "another shape"})]
    dirs = {first.run.dir} | {run(c, GRPO, tmp_path, init=cold).run.dir for c in changes}
    assert len(dirs) == 4 and len(trained) == 5
    # other b_max values in the prompts (the b_max rule's output) and another starting adapter count too
    other_bmax = [GRPOPrompt(p.id, p.prompt, p.answer, math.inf) for p in GRPO]
    assert run(grpo, other_bmax, tmp_path, init=cold).run.dir not in dirs
    other_cold = run(load_recipe("selfbudgeter_sft", max_steps=2), SFT, tmp_path)
    assert run(grpo, GRPO, tmp_path, init=other_cold).run.dir not in dirs
    assert trained[-1][2] == other_cold.adapter_dir  # the starting adapter is passed on


def test_a_run_killed_after_saving_its_adapter_is_finished_not_retrained(trained, tmp_path):
    config = load_recipe("tale_pt_sft", max_steps=1)
    first = run(config, SFT, tmp_path)
    first.run.summary_path.unlink()  # killed between saving the adapter and writing the summary
    again = run(config, SFT, tmp_path)
    assert again.adapter_dir == first.adapter_dir and len(trained) == 1 and again.run.finished


def test_bad_reward_settings_are_refused_with_the_key():
    with pytest.raises(RecipeError, match=r"reward: unknown key\(s\) \['alpha'\]"):
        load_recipe("selfbudgeter_grpo", reward={"alpha": 0.3})
    with pytest.raises(RecipeError, match="s_c_min \\+ budget_penalty >= s_w_max"):
        load_recipe("selfbudgeter_grpo", reward={"budget_penalty": -2.0})
    with pytest.raises(RecipeError, match="reward is GRPO's"):
        load_recipe("tale_pt_sft", reward={"alpha_start": 0.4})
    assert load_recipe("selfbudgeter_grpo").reward == RewardConfig()


def test_no_items_is_an_error(trained, tmp_path):
    with pytest.raises(ValueError, match="no training items for 'x'"):
        run(load_recipe("tale_pt_sft"), [], tmp_path)
    assert not trained


def test_grpo_rollouts_on_vllm_are_colocated_and_keyed_by_the_engine_that_ran(monkeypatch, tmp_path):
    """The full GRPO recipe samples with trl's vLLM generation where vllm and CUDA are there ("auto"), hf
    elsewhere; "auto" never reaches a key, and hf runs keep the keys they had before rollouts existed."""
    import importlib.util

    import trl

    from budgetlib.training import config as config_module

    full = load_recipe("selfbudgeter_grpo", "full")
    assert (full.rollouts, full.vllm_gpu_memory_utilization) == ("auto", 0.3)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    assert config_module.resolved_rollouts(full) == "hf"  # here: no vllm, no GPU
    assert "rollouts" not in full.identity() and "vllm_gpu_memory_utilization" not in full.identity()
    on_vllm = load_recipe("selfbudgeter_grpo", "full", rollouts="vllm")
    assert on_vllm.identity()["rollouts"] == "vllm" and on_vllm.identity()["vllm_gpu_memory_utilization"] == 0.3
    with pytest.raises(RecipeError, match="rollouts is GRPO's"):
        load_recipe("tale_pt_sft", rollouts="vllm")
    with pytest.raises(RecipeError, match="rollouts must be 'hf', 'vllm' or 'auto'"):
        load_recipe("selfbudgeter_grpo", rollouts="sglang")

    seen = {}

    class Stop(Exception):
        pass

    def grpo_config(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(trl, "GRPOConfig", grpo_config)
    config = load_recipe("selfbudgeter_grpo", "smoke", rollouts="vllm", vllm_gpu_memory_utilization=0.4, max_steps=1)
    with pytest.raises(Stop):
        train_module.train(config, GRPO, tmp_path / "vllm")
    assert (seen["use_vllm"], seen["vllm_mode"], seen["vllm_gpu_memory_utilization"]) == (True, "colocate", 0.4)
    seen.clear()
    with pytest.raises(Stop):
        train_module.train(load_recipe("selfbudgeter_grpo", "smoke", max_steps=1), GRPO, tmp_path / "hf")
    assert seen["use_vllm"] is False and "vllm_mode" not in seen
