"""Training on several processes (data parallel): `python -m budgetlib train` under torch's launcher with two
CPU processes (gloo), which is what `accelerate launch --config_file budgetlib/recipes/accelerate_data_parallel.yaml`
starts on a multi-GPU machine (accelerate's CPU path needs MPI for more than one process)."""

import json
import subprocess
import sys

import pytest

from budgetlib.backends.server_process import free_port
from budgetlib.paths import project_root

ROWS = [{"id": f"s{i}", "prompt": f"What is {i}+{i}?", "completion": f"{i}+{i}={2 * i}. [[{2 * i}]]",
         "budget": 10, "n_tokens": 8, "source": "search"} for i in range(16)]


def _train(tmp_path, name, launcher):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / name
    cmd = [*launcher, "-m", "budgetlib", "train", "sft", "--recipe", "tale_pt_sft", "--max-steps", "2",
           "--data", str(data), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=project_root())
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(x) for x in done.stdout.splitlines() if x.startswith('{"adapter"')]
    return out, reports, json.loads((out / "log_history.json").read_text())


@pytest.mark.integration
def test_two_processes_train_one_adapter_on_twice_the_examples_per_step(tmp_path):
    ddp, reports, history = _train(tmp_path, "ddp", [sys.executable, "-m", "torch.distributed.run",
                                                      "--nproc_per_node", "2", "--master_port", str(free_port())])
    assert len(reports) == 1 and reports[0]["global_step"] == 2  # one report, from the main process
    assert (ddp / "adapter" / "adapter_model.safetensors").is_file()
    # 16 examples, 4 per process and step: two processes see all 16 in 2 steps (epoch 1.0), one sees 8 (0.5)
    assert max(h["epoch"] for h in history) == pytest.approx(1.0)
    _, _, single = _train(tmp_path, "one", [sys.executable])
    assert max(h["epoch"] for h in single) == pytest.approx(0.5)
    tokens = {h["step"]: h["num_tokens"] for h in history if "num_tokens" in h}
    assert tokens[1] == pytest.approx(2 * {h["step"]: h["num_tokens"] for h in single if "num_tokens" in h}[1], rel=0.2)


def test_the_shipped_accelerate_config_is_data_parallel_on_gpus():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(project_root() / "budgetlib" / "recipes" / "accelerate_data_parallel.yaml"))
    assert config.distributed_type == DistributedType.MULTI_GPU and config.mixed_precision == "bf16"
    assert config.num_machines == 1 and not config.use_cpu
