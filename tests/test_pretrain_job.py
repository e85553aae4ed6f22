"""The pretraining job as a library (sop_hf.pretrain.main): its trainer_class / callbacks hooks, and evaluating a
checkpoint with --do_train false through public loading only (safetensors weights, TrainerState)."""

import json
import re

import pytest
from safetensors.torch import load_file
from transformers import TrainerCallback

from sop_hf.pretrain import main
from sop_hf.training import SOPTrainer

QUICK = ["--per_device_train_batch_size", "8", "--logging_steps", "1", "--monitor_steps", "0", "--knn_eval", "false",
         "--disable_tqdm", "true", "--dataloader_num_workers", "0"]  # fmt: skip


class StopAfterFirstStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = True


class CountingTrainer(SOPTrainer):
    built = 0

    def __init__(self, *args, **kwargs):
        type(self).built += 1
        super().__init__(*args, **kwargs)


def test_do_train_false__evaluates_the_newest_checkpoint_and_the_hooks_reach_the_trainer(tmp_path):
    with pytest.raises(ValueError, match=re.escape("--do_train false needs a checkpoint to evaluate")):
        main(["--do_train", "false", "--output_dir", str(tmp_path), *QUICK])
    summary = main(["--max_steps", "3", "--save_steps", "1", "--output_dir", str(tmp_path), *QUICK],
                   callbacks=[StopAfterFirstStep()])  # fmt: skip
    assert summary["global_step"] == 1 and (tmp_path / "checkpoint-1" / "model.safetensors").exists()
    trained = load_file(tmp_path / "encoder" / "model.safetensors")
    (tmp_path / "encoder" / "model.safetensors").unlink()

    summary = main(["--do_train", "false", "--output_dir", str(tmp_path), *QUICK, "--knn_eval", "true",
                    "--max_eval_samples", "60", "--knn_k", "5"], trainer_class=CountingTrainer)  # fmt: skip
    assert CountingTrainer.built == 1
    assert summary["global_step"] == 1 and 0 < summary["knn_top1_trained"] <= 1
    assert json.loads((tmp_path / "results.json").read_text())["global_step"] == 1
    evaluated = load_file(tmp_path / "encoder" / "model.safetensors")  # the checkpoint's weights, exported again
    assert evaluated.keys() == trained.keys() and all((evaluated[k] == trained[k]).all() for k in trained)


GLOO_THREADS_SCRIPT = r"""
import tempfile, psutil, torch, torch.distributed as dist
from sop_hf.training import end_process_group

threads = psutil.Process().num_threads  # native threads too (gloo's are C++ threads Python does not list)
alone = threads()
dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
holder = {"model": model}
holder["self"] = holder  # a reference cycle keeps the DDP model (and through it the group) alive, as a trainer does
parts = [torch.zeros(2)]
dist.all_gather(parts, torch.ones(2))
del model, holder, parts
print("before", threads() - alone)
end_process_group()
print("after", threads() - alone, dist.is_initialized())
"""


def test_end_process_group__joins_gloo_threads_although_a_cycle_holds_the_ddp_model(tmp_path):
    """The abort at exit of a finished 2-process run (gloo's worker thread freeing an all-gather during interpreter
    shutdown) cannot happen once the threads are joined; a bare destroy_process_group left them running."""
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", GLOO_THREADS_SCRIPT], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("before", "after")))
    assert int(lines["before"]) >= 2  # gloo's loop and worker threads: the check sees the threads it is about
    assert lines["after"] == "0 False"
