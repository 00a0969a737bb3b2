"""Training recipes: YAML files with a `smoke` and a `full` profile, read into
a frozen dataclass. Recipes shipped with budgetlib live in
`budgetlib/recipes/` (so a pip or Colab install has them)."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Literal, Union

from .rewards import DEFAULT_REWARD, RewardConfig

__all__ = ["TrainConfig", "resolved_rollouts", "load_recipe", "RECIPES_DIR", "RecipeError", "EXECUTION_ONLY", "DPO_BETA", "DRY_RUN_RECIPE"]

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


#: DPO's beta in the official TALE-PT code (GeniusHTX/TALE, TALE-PT.py); trl's own default is 0.1
DPO_BETA = 0.5

#: fields that change how a run executes, not what it computes: not part of a run's identity
EXECUTION_ONLY = ("fused_logprobs", "gradient_checkpointing")


def resolved_rollouts(config: "TrainConfig") -> str:
    """The GRPO rollout engine `config` runs with: its ``rollouts``, with "auto" resolved (vllm when vllm is
    importable and a CUDA GPU is present, hf otherwise)."""
    if config.rollouts != "auto":
        return config.rollouts
    from ..backends.vllm_engine import cuda_available, vllm_available

    return "vllm" if vllm_available() and cuda_available() else "hf"


class RecipeError(ValueError):
    """A recipe that cannot be used: the message names the file and key."""


@dataclass(frozen=True)
class TrainConfig:
    kind: Literal["sft", "dpo", "grpo"]
    epochs: float = 1.0
    batch_size: int = 4  # per device and step; the batch per optimizer step is batch_size x gradient_accumulation_steps
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0  # transformers' default; TALE's DPO uses 0.001 (the full DPO recipe)
    max_grad_norm: float = 1.0  # transformers' default; TALE's DPO uses 5.0 (the full DPO recipe)
    max_length: int = 512
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: Union[str, tuple[str, ...]] = "all-linear"
    completion_only_loss: bool = True  # SFT only
    # DPO's beta only. None -> 0.5 for DPO: the official TALE-PT code trains DPO with beta 0.5 (trl's default
    # is 0.1). GRPO's KL weight is not this field: train.py runs GRPO with beta=0.0, so a grpo (or sft)
    # recipe that sets beta is refused rather than silently ignored.
    beta: float | None = None
    num_generations: int = 4  # GRPO: samples per prompt
    temperature: float = 0.6  # GRPO sampling
    max_completion_length: int = 128  # GRPO
    max_steps: int = -1  # > 0 overrides epochs
    save_steps: int = 50
    logging_steps: int = 1
    seed: int = 0
    # DPO/GRPO: trl's fused LM head runs budgetlib.kernels (an execution detail, not part of a run's identity).
    # Off by default until the Triton path has run on a GPU (LOG.md); on CPU it runs the PyTorch twin.
    fused_logprobs: bool = False
    # Recompute activations in the backward pass: far less memory for some extra time (an execution detail too).
    gradient_checkpointing: bool = False
    # GRPO only: SelfBudgeter's reward (constants, alpha schedule, b_max rule, equations); part of the run's
    # identity, so a run trained on another reward is never reused. None -> the default for GRPO.
    reward: RewardConfig | None = None
    # GRPO only: who samples the rollouts. "hf": the trainer's own transformers generate; "vllm": trl's vLLM
    # generation colocated on the training GPU (vllm_mode "colocate"), vLLM taking vllm_gpu_memory_utilization
    # of the GPU's memory and training the rest; "auto": vllm when vllm is importable and a CUDA GPU is
    # present, else hf. The resolved engine is part of a run's identity (`resolved_rollouts`).
    rollouts: str = "hf"
    vllm_gpu_memory_utilization: float = 0.3

    def __post_init__(self):
        if self.kind not in ("sft", "dpo", "grpo"):
            raise RecipeError(f"kind must be 'sft', 'dpo' or 'grpo', got {self.kind!r}")
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for name in ("batch_size", "gradient_accumulation_steps", "max_length", "lora_r", "save_steps",
                     "logging_steps"):
            if getattr(self, name) < 1:
                raise RecipeError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.epochs <= 0:
            raise RecipeError("learning_rate and epochs must be > 0")
        if self.kind == "dpo":
            if self.beta is None:
                object.__setattr__(self, "beta", DPO_BETA)
            elif self.beta <= 0:
                raise RecipeError(f"beta must be > 0, got {self.beta}")
        elif self.beta is not None:
            raise RecipeError(f"beta is DPO's; a {self.kind} run does not use it (GRPO runs with KL weight 0), "
                              f"got beta={self.beta}")
        if isinstance(self.reward, dict):
            object.__setattr__(self, "reward", _reward(self.reward))
        if self.kind == "grpo":
            if self.reward is None:
                object.__setattr__(self, "reward", DEFAULT_REWARD)
            elif not isinstance(self.reward, RewardConfig):
                raise RecipeError(f"reward must be a mapping of RewardConfig fields, got {self.reward!r}")
        elif self.reward is not None:
            raise RecipeError(f"reward is GRPO's; a {self.kind} run does not use it")
        if self.rollouts not in ("hf", "vllm", "auto"):
            raise RecipeError(f"rollouts must be 'hf', 'vllm' or 'auto', got {self.rollouts!r}")
        if self.rollouts != "hf" and self.kind != "grpo":
            raise RecipeError(f"rollouts is GRPO's; a {self.kind} run samples nothing, got rollouts={self.rollouts!r}")
        if not 0 < self.vllm_gpu_memory_utilization < 1:
            raise RecipeError(f"vllm_gpu_memory_utilization must be in (0, 1), got {self.vllm_gpu_memory_utilization}")

    def identity(self) -> dict:
        """The fields that decide what a run computes (JSON-ready; `EXECUTION_ONLY` left out): the key
        for a run's directory and for reusing a finished run. ``rollouts`` is the resolved engine ("auto"
        never reaches a key); runs before rollouts existed sampled with hf and keep their keys."""
        values = json.loads(json.dumps(asdict(self), default=str))
        values = {k: v for k, v in values.items() if k not in EXECUTION_ONLY}
        engine = resolved_rollouts(self)
        values.pop("rollouts"), values.pop("vllm_gpu_memory_utilization")
        if engine == "vllm":
            values.update(rollouts="vllm", vllm_gpu_memory_utilization=self.vllm_gpu_memory_utilization)
        return values


def _check_keys(values: dict, cls, where: str) -> None:
    """Refuse keys that are not fields of the dataclass `cls`, naming `where` they were found."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")


def _check_types(values: dict, cls, where: str) -> None:
    """Refuse a value of the wrong type for a field of `cls` (from its annotation), naming `where`,
    the key, the value and the type expected: e.g. ``learning_rate: 1e-4`` is a string in YAML."""
    expected = {f.name: str(f.type) for f in fields(cls)}
    for key, value in values.items():
        kind = expected.get(key, "")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind.startswith("float"):
            ok = number or (value is None and "None" in kind)
            want = "a number"
        elif kind.startswith("int"):
            ok = isinstance(value, int) and not isinstance(value, bool)
            want = "a whole number"
        elif kind == "bool":
            ok, want = isinstance(value, bool), "true or false"
        elif kind == "str":
            ok, want = isinstance(value, str), "a string"
        elif kind.startswith("Union[str"):
            ok = isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))
            want = "a string or a list of strings"
        elif kind.startswith("RewardConfig"):
            ok, want = value is None or isinstance(value, (dict, RewardConfig)), "a mapping"
        else:
            continue
        if not ok:
            hint = " (YAML reads 1e-4 as text: write 1.0e-4)" if isinstance(value, str) and "a number" in want else ""
            raise RecipeError(f"{where}: {key} must be {want}, got {value!r} ({type(value).__name__}){hint}")


def _reward(values: dict) -> RewardConfig:
    _check_keys(values, RewardConfig, "reward")
    _check_types(values, RewardConfig, "reward")
    try:
        return RewardConfig(**values)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"reward: {exc}") from exc


#: what a dry run's recipe ("full+dry": the full recipe, `profiles` dry run) changes: 2 optimizer steps, a
#: checkpoint after each (so the resume path runs), short GRPO completions
DRY_RUN_RECIPE = {"max_steps": 2, "save_steps": 1, "max_completion_length": 32}


def load_recipe(recipe: str | Path, profile: str = "smoke", **overrides) -> TrainConfig:
    """Read `profile` from a recipe file (a path, or the name of one in
    `RECIPES_DIR`, e.g. ``"tale_pt_sft"``), then apply `overrides`. A profile
    named ``<profile>+dry`` is that profile with `DRY_RUN_RECIPE` applied."""
    import yaml

    if profile.endswith("+dry"):
        return load_recipe(recipe, profile[:-len("+dry")], **{**DRY_RUN_RECIPE, **overrides})

    path = Path(recipe)
    if not path.suffix:
        path = RECIPES_DIR / f"{recipe}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if p.stem != "profiles")
        raise RecipeError(f"recipe not found: {path}; shipped recipes: {known}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise RecipeError(f"{path}: expected profiles (smoke, full, ...) each mapping keys to values")
    if profile not in data:
        raise RecipeError(f"{path}: no profile {profile!r}; it has {sorted(data)}")
    values = {**data[profile], **overrides}
    where = f"{path} [{profile}]"
    _check_keys(values, TrainConfig, where)
    missing = [f.name for f in fields(TrainConfig) if f.default is MISSING and f.name not in values]
    if missing:
        raise RecipeError(f"{where}: missing key(s) {missing}")
    _check_types(values, TrainConfig, where)
    try:
        return TrainConfig(**values)
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc}") from None
