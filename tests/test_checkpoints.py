"""training.checkpoints without a training run: publishing a staged checkpoint, stale staging, rotation, step names."""

import json
import os

from sop_hf.training.checkpoints import (
    COMPLETE_MARKER,
    STAGING_DIR,
    checkpoint_problems,
    checkpoint_step,
    clear_staging,
    last_complete_checkpoint,
    publish_checkpoint,
    staging_folder,
)


def stage(run_dir, step, files=("model.safetensors", "optimizer.pt")):
    folder = staging_folder(str(run_dir), step)
    os.makedirs(folder, exist_ok=True)
    for name in files:
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(name.encode() * step)
    return folder


def test_checkpoint_step__only_checkpoint_folders():
    assert checkpoint_step("/x/checkpoint-12") == 12 and checkpoint_step("/x/checkpoint-12/") == 12
    assert checkpoint_step("checkpoint-final") == -1 and checkpoint_step(STAGING_DIR) == -1


def test_publish__marker_with_sizes_renamed_staging_removed_rotation_keeps_newest(tmp_path):
    for step in (1, 2, 3):
        stage(tmp_path, step)
        final = publish_checkpoint(str(tmp_path), step, world_size=2, save_total_limit=2)
        assert final == str(tmp_path / f"checkpoint-{step}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]  # rotated, no .staging
    record = json.loads((tmp_path / "checkpoint-3" / COMPLETE_MARKER).read_text())
    assert record == {"global_step": 3, "world_size": 2,
                      "files": {"model.safetensors": 17 * 3, "optimizer.pt": 12 * 3}}  # fmt: skip
    (tmp_path / "checkpoint-3" / "optimizer.pt").write_bytes(b"short")  # changed after it was marked complete
    assert checkpoint_problems(str(tmp_path / "checkpoint-3")) == [
        "trainer_state.json (trainer state)", "scheduler.pt (scheduler state)", "rng_state*.pth (RNG state)",
        "model.safetensors is unreadable (SafetensorError: Error while deserializing header: header too large)",
        "optimizer.pt (missing or of another size than written)",
    ]  # fmt: skip


def test_clear_staging__a_stale_attempt_of_the_same_step_is_not_published(tmp_path):
    stale = stage(tmp_path, 5, files=("model.safetensors", "rng_state_7.pth"))  # a save cut short, other world size
    clear_staging(str(tmp_path), 5)
    assert not os.path.exists(stale)
    stage(tmp_path, 5)
    publish_checkpoint(str(tmp_path), 5, world_size=1, save_total_limit=None)
    assert sorted(os.listdir(tmp_path / "checkpoint-5")) == [COMPLETE_MARKER, "model.safetensors", "optimizer.pt"]
    assert last_complete_checkpoint(str(tmp_path)) is None  # still lacks trainer, scheduler and RNG state
