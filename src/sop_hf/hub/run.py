"""Publish a training run: the Trainer's own push would upload the pretraining model (student, teacher, heads,
banks), so the main job turns it off and publishes the exported encoder itself, at the end and, with the Trainer's
``--hub_strategy every_save / checkpoint / all_checkpoints``, at each save (``push.push_run_to_hub``)."""

import logging
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from ..training.checkpoints import last_complete_checkpoint
from .push import push_run_to_hub

logger = logging.getLogger(__name__)


@dataclass
class HubTarget:
    """Where --push_to_hub publishes: the Trainer's own push would upload the pretraining model (student, teacher,
    heads, banks), so the job turns it off and publishes the exported encoder itself (``hub.push_run_to_hub``)."""

    repo_id: str
    strategy: str
    token: str | None
    private: bool | None

    @classmethod
    def take_from(cls, training_args) -> "HubTarget | None":
        if not training_args.push_to_hub:
            return None
        strategy = str(getattr(training_args.hub_strategy, "value", training_args.hub_strategy))
        target = cls(training_args.hub_model_id or Path(training_args.output_dir).resolve().name, strategy,
                     training_args.hub_token, training_args.hub_private_repo)  # fmt: skip
        training_args.push_to_hub = False
        return target

    def checkpoints(self, output_dir: str) -> dict[str, str]:
        """The training checkpoints this strategy publishes beside the encoder."""
        if self.strategy == "checkpoint":
            last = last_complete_checkpoint(output_dir)
            return {"last-checkpoint": last} if last else {}
        if self.strategy == "all_checkpoints":
            return {p.name: str(p) for p in sorted(Path(output_dir).glob("checkpoint-*"))
                    if (p / "checkpoint_complete.json").exists()}  # fmt: skip
        return {}

    def push(self, output_dir: str, message: str) -> None:
        url = push_run_to_hub(output_dir, self.repo_id, checkpoints=self.checkpoints(output_dir), private=self.private,
                              token=self.token, commit_message=message)  # fmt: skip
        logger.info("pushed to %s", url)


class HubPushCallback(TrainerCallback):
    """--hub_strategy every_save / checkpoint / all_checkpoints: publish the encoder (and checkpoints) at each save."""

    def __init__(self, target: HubTarget, export):
        self.target, self.export = target, export

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.export()
            self.target.push(args.output_dir, f"Training in progress, step {state.global_step}")


__all__ = ["HubPushCallback", "HubTarget"]
