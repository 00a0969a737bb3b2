"""trl's DPO and GRPO with budgetlib's fused log-probs op behind trl's fused LM
head (`budgetlib.training.fused_logprobs`), on the embedded model.

trl 1.16's DPO and GRPO trainers always score tokens through ``add_fused_lm_head``
(trl's own ``ChunkedLogProbFunction``); that is the path we compare against, on
one fixed batch each (no sampling), with the LoRA B matrices perturbed so the
policy differs from the reference and every LoRA parameter gets a gradient:

- DPO: ``trainer.compute_loss`` (policy + reference forward) -> loss, every
  LoRA gradient, the logged metrics (log-probs, entropy, ``logits/*`` from
  mean_logits, ``mean_token_accuracy`` from is_top1); the per-token outputs are
  also checked against the model's own full logits.
- GRPO (T = 0.7, an entropy bonus so the entropy gradient counts too):
  ``_get_per_token_logps_and_entropies`` and ``compute_loss`` on fixed
  prompt + completion ids -> per-token log-probs, entropies, loss, gradients.

Tolerances (fp32 on CPU; both paths are about 1e-5 from float64 here):
loss atol 1e-5; per-token log-probs and entropies atol 1e-4; metrics rtol
1e-4; each LoRA gradient within 1e-4 of its own norm (relative L2) and of its
largest entry. Under bf16 autocast the two differ by design (trl rounds its
logits tiles to bf16); `test_bf16_autocast_...` checks that ours is the one
close to float64. About 40 s on a 2-core CPU.
"""

from __future__ import annotations

import warnings

import pytest
import torch

pytestmark = pytest.mark.integration

LORA_TARGETS = ["q_proj", "v_proj"]


def zero_reward(completions, **kwargs):
    return [0.0] * len(completions)


@pytest.fixture(scope="module")
def embedded():
    from transformers import AutoTokenizer

    from budgetlib.backends.hf import embedded_model_dir

    source = str(embedded_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return source, tokenizer


def _model(source):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=True)


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")


def _perturb_lora_b(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def _common(tmp):
    return dict(output_dir=str(tmp), report_to="none", use_cpu=True, bf16=False, disable_tqdm=True,
                gradient_checkpointing=False, per_device_train_batch_size=2)


@pytest.fixture(scope="module")
def dpo(embedded, tmp_path_factory):
    import datasets
    from trl import DPOConfig, DPOTrainer

    source, tokenizer = embedded
    rows = [{"prompt": [{"role": "user", "content": f"Ava has {i} apples and gets 2 more. How many?"}],
             "chosen": [{"role": "assistant", "content": f"{i} + 2 = {i + 2}. [[{i + 2}]]"}],
             "rejected": [{"role": "assistant", "content": f"Let me think step by step. {i} plus 2 is {i + 3}."}]}
            for i in range(2)]
    args = DPOConfig(beta=0.1, max_length=64, **_common(tmp_path_factory.mktemp("dpo")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(model=_model(source), ref_model=None, args=args,
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=_lora())
    _perturb_lora_b(trainer.model)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    return trainer, inputs


@pytest.fixture(scope="module")
def grpo(embedded, tmp_path_factory):
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    source, tokenizer = embedded
    args = GRPOConfig(num_generations=2, max_completion_length=8, temperature=0.7, beta=0.0, entropy_coef=0.05,
                      use_vllm=False, log_completions=False, **_common(tmp_path_factory.mktemp("grpo")))
    dataset = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "What is 1 + 2?"}]}] * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=_model(source), reward_funcs=[zero_reward], args=args, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=_lora())
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, read by the loss
    _perturb_lora_b(trainer.model, seed=1)
    # a fixed batch as _generate_and_score_completions would hand it over: left-padded prompts, completions
    # with padding after EOS, one advantage per sequence
    gen = torch.Generator().manual_seed(0)
    tokenizer.padding_side = "left"
    prompts = tokenizer(["What is 1 + 2?", "Compute 3 plus four, please."], return_tensors="pt", padding=True)
    completion_ids = torch.randint(0, len(tokenizer), (2, 8), generator=gen)
    completion_mask = torch.ones(2, 8, dtype=torch.long)
    completion_mask[1, 5:] = 0
    inputs = {"prompt_ids": prompts.input_ids, "prompt_mask": prompts.attention_mask,
              "completion_ids": completion_ids, "completion_mask": completion_mask,
              "advantages": torch.tensor([1.0, -0.5]), "num_items_in_batch": completion_mask.sum()}
    return trainer, inputs


def _lora_grads(model):
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not [n for n, p in trainable.items() if p.grad is None]  # backward reached every LoRA matrix
    return {n: p.grad.detach().clone() for n, p in trainable.items()}


def assert_grads_close(ours, theirs):
    assert ours.keys() == theirs.keys() and any("lora_A" in n for n in ours)
    for name, g in theirs.items():
        assert g.abs().max() > 0, name  # every LoRA matrix really gets a gradient
        diff = ours[name] - g
        assert diff.norm() <= 1e-4 * g.norm(), (name, (diff.norm() / g.norm()).item())
        assert diff.abs().max() <= 1e-4 * g.abs().max(), name


def _with_and_without_hook(fn):
    """(fn() through trl's own Function, fn() through ours, call counts of the latter)."""
    from budgetlib.training import fused_logprobs as fl

    assert not fl.installed()
    theirs = fn()
    fl.reset_call_counts()
    with fl.use_budgetlib_logprobs():
        assert fl.installed()
        ours = fn()
    assert not fl.installed()
    return theirs, ours, fl.call_counts()


def test_dpo_loss_grads_and_metrics_match_trl(dpo):
    trainer, inputs = dpo

    def loss_and_grads():
        trainer.model.zero_grad(set_to_none=True)
        trainer._metrics["train"].clear()
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
        return loss.detach(), _lora_grads(trainer.model), metrics

    (t_loss, t_grads, t_metrics), (loss, grads, metrics), calls = _with_and_without_hook(loss_and_grads)
    assert calls["budgetlib"] == 2 and "trl" not in calls  # policy and reference forward, nothing delegated
    assert abs(loss.item() - 0.6931) > 1e-3  # the perturbed policy differs from the reference
    torch.testing.assert_close(loss, t_loss, atol=1e-5, rtol=0)
    assert_grads_close(grads, t_grads)
    assert {"logits/chosen", "logits/rejected", "mean_token_accuracy", "entropy"} <= metrics.keys()
    assert metrics.keys() == t_metrics.keys()
    for key, value in t_metrics.items():
        assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_dpo_fused_outputs_match_full_logits(dpo):
    """Per-token outputs of the patched fused head against the model's own
    (unfused) forward: log_softmax of the full logits, their mean, argmax."""
    from budgetlib.training.fused_logprobs import call_counts, reset_call_counts, use_budgetlib_logprobs

    trainer, inputs = dpo
    kw = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    reset_call_counts()
    with torch.no_grad(), use_budgetlib_logprobs():
        fused = trainer.model(**kw, labels=labels, fused_lm_head=True)
        logits = trainer.model(**kw).logits[:, :-1].double()
    assert call_counts()["budgetlib"] == 1
    mask, targets = labels[:, 1:] != -100, labels[:, 1:].clamp(min=0)
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(fused.log_probs.double(), logp * mask, atol=1e-4, rtol=0)
    torch.testing.assert_close(fused.mean_logits.double(), logits.mean(-1) * mask, atol=1e-4, rtol=0)
    assert torch.equal(fused.is_top1, (logits.argmax(-1) == targets) & mask) and fused.is_top1[mask].any()
    assert fused.log_sum_sq_probs is None


def test_grpo_logps_entropies_loss_and_grads_match_trl(grpo):
    trainer, inputs = grpo
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)

    def run():
        trainer.model.zero_grad(set_to_none=True)
        with torch.no_grad():
            logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, input_ids, attention_mask, inputs["completion_ids"].size(1), compute_entropy=True)
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        return logps, entropies, loss.detach(), _lora_grads(trainer.model)

    (t_logps, t_ent, t_loss, t_grads), (logps, ent, loss, grads), calls = _with_and_without_hook(run)
    assert calls["budgetlib"] == 2 and "trl" not in calls  # the no-grad scoring and the loss
    mask = inputs["completion_mask"].bool()
    assert logps[mask].max() < 0 and (logps[~mask] == 0).all() and (ent[mask] > 0).all()
    torch.testing.assert_close(logps, t_logps, atol=1e-4, rtol=0)
    torch.testing.assert_close(ent, t_ent, atol=1e-4, rtol=0)
    torch.testing.assert_close(loss, t_loss, atol=1e-5, rtol=0)
    assert_grads_close(grads, t_grads)


def test_bf16_autocast_ours_stays_at_fp32_accuracy(grpo):
    """Under bf16 autocast (trl's default on a GPU) trl rounds each logits tile
    to bf16 before the softmax; ours accumulates in fp32. Against float64 on the
    same bf16-cast values ours stays at ~1e-5, trl's is off by ~1e-1."""
    from budgetlib.training.fused_logprobs import BudgetlibChunkedLogProb, _trl_function

    trainer, inputs = grpo
    with torch.no_grad():
        hidden = trainer.model.base_model.model.model(input_ids=inputs["prompt_ids"]).last_hidden_state[0]
        weight = trainer.model.base_model.model.lm_head.weight
        targets = inputs["prompt_ids"][0].roll(-1)
        args = (hidden, weight, None, targets, 0.7, 32768, None, 1.0, ("log_probs", "entropy"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours, theirs = BudgetlibChunkedLogProb.apply(*args), _trl_function().apply(*args)
    z = hidden.bfloat16().double() @ weight.bfloat16().double().T / 0.7
    truth = torch.log_softmax(z, -1).gather(-1, targets[:, None]).squeeze(-1)
    our_err, trl_err = ((x[0].double() - truth).abs().max().item() for x in (ours, theirs))
    assert our_err < 1e-4 and trl_err > 10 * our_err, (our_err, trl_err)


def test_adapter_delegates_what_it_does_not_support():
    """Same five-tuple as trl's Function; bias, softcap, logit scale and
    log_sum_sq_probs (DPO's WPO weighting) go to trl's own Function."""
    from budgetlib.training.fused_logprobs import BudgetlibChunkedLogProb, _trl_function, call_counts, \
        reset_call_counts

    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(9, 16, generator=gen), torch.randn(50, 16, generator=gen)
    targets, bias = torch.randint(0, 50, (9,), generator=gen), torch.randn(50, generator=gen)
    everything = ("log_probs", "entropy", "mean_logits", "is_top1")
    cases = [((None, None, 1.0, everything), "budgetlib"), ((None, None, 1.0, ("log_probs",)), "budgetlib"),
             ((bias, None, 1.0, everything), "trl:bias"), ((None, 30.0, 1.0, everything), "trl:softcap"),
             ((None, None, 0.5, everything), "trl:logit_scale"),
             ((None, None, 1.0, everything + ("log_sum_sq_probs",)), "trl:outputs=log_sum_sq_probs")]
    for (b, softcap, scale, outputs), route in cases:
        reset_call_counts()
        args = (hidden, weight, b, targets, 0.8, 32, softcap, scale, outputs)
        ours, theirs = BudgetlibChunkedLogProb.apply(*args), _trl_function().apply(*args)
        assert call_counts()[route] == 1, (route, call_counts())
        assert len(ours) == len(theirs) == 5
        for x, y in zip(ours, theirs):
            assert (x is None) == (y is None)
            if x is not None:
                assert x.dtype == y.dtype and x.shape == y.shape
                torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    # a bf16 head under fp32 hidden states (cast_lm_head_to_fp32 on a bf16 model): computed in fp32, like trl
    reset_call_counts()
    w16 = weight.bfloat16().requires_grad_()
    logp = BudgetlibChunkedLogProb.apply(hidden, w16, None, targets, 1.0, 32, None, 1.0, ("log_probs",))[0]
    logp.sum().backward()
    want = _trl_function().apply(hidden, w16.detach(), None, targets, 1.0, 32, None, 1.0, ("log_probs",))[0]
    assert call_counts()["budgetlib"] == 1 and w16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logp, want, atol=1e-5, rtol=0)


def test_install_is_idempotent_restores_trl_and_checks_the_version(monkeypatch):
    import trl
    import trl.trainer.utils as trl_utils

    from budgetlib.training import fused_logprobs as fl

    original = trl_utils._ChunkedLogProbFunction
    assert original is fl._trl_function() and not fl.installed()
    try:
        assert fl.install() is True and fl.install() is False
        assert trl_utils._ChunkedLogProbFunction is fl.BudgetlibChunkedLogProb
        with fl.use_budgetlib_logprobs():  # nested inside an install: leaves it in place
            assert fl.installed()
        assert fl.installed()
        assert fl.uninstall() is True and fl.uninstall() is False
        assert trl_utils._ChunkedLogProbFunction is original
        with fl.use_budgetlib_logprobs():
            assert fl.installed()
        assert trl_utils._ChunkedLogProbFunction is original
        with pytest.raises(RuntimeError, match="boom"), fl.use_budgetlib_logprobs():
            raise RuntimeError("boom")
        assert trl_utils._ChunkedLogProbFunction is original
    finally:
        fl.uninstall()
    monkeypatch.setattr(trl, "__version__", "1.17.0")
    with pytest.raises(fl.TRLVersionError, match=r"trl 1\.17\.0 is installed.*trl==1\.16\.0.*fused_logprobs=False"):
        fl.install()
    assert trl_utils._ChunkedLogProbFunction is original


def test_train_routes_dpo_through_our_op_and_can_be_turned_off(tmp_path):
    from budgetlib.prompts import VANILLA_COT
    from budgetlib.training import fused_logprobs as fl
    from budgetlib.training.config import load_recipe
    from budgetlib.training.data import DPOPair
    from budgetlib.training.train import train

    pairs = [DPOPair(f"p{i}", VANILLA_COT.render(f"Ava has {i} apples. Ava gets 2 more. How many apples now?"),
                     f"[[{i + 2}]]", f"Let me think step by step. {i} + 2 = {i + 2}. [[{i + 2}]]", 4, 20)
             for i in range(2)]
    for fused, expect in ((True, 2), (False, 0)):  # one step: a policy and a reference forward
        fl.reset_call_counts()
        config = load_recipe("tale_pt_dpo", max_steps=1, batch_size=2, max_length=96, fused_logprobs=fused)
        result = train(config, pairs, tmp_path / f"dpo-{fused}")
        assert result.global_step == 1 and not fl.installed()
        assert fl.call_counts().get("budgetlib", 0) == expect and "trl" not in fl.call_counts()
        assert result.log_history[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
