"""Preemption-safe runs: on SIGTERM / SIGUSR1 finish the step, write one complete checkpoint of it, exit 75.

Clusters warn a job before they kill it: SLURM sends SIGTERM on preemption (and SIGUSR1 with
``--signal=USR1@120`` before the time limit), Kubernetes sends SIGTERM and waits ``terminationGracePeriodSeconds``.
``PreemptionCallback`` turns that warning into a clean stop, with public ``Trainer`` control only:

1. the signal handler records the signal and returns (the step in progress goes on);
2. after every optimizer step (``on_step_end``: after the teacher EMA) every process all-reduces a one-element
   stop flag, so all of them stop at the same step even when the signal reached only some of them;
3. the callback sets ``control.should_save`` and ``control.should_training_stop``: the Trainer writes the checkpoint
   of that step through the usual staging + marker scheme (``training.checkpoints``) and leaves its loop;
4. ``SOPTrainer.train`` then writes ``OUTPUT_DIR/preempted.json`` (main process), logs the checkpoint, tears the
   process group down and raises ``TrainingPreempted``, a ``SystemExit`` with status ``PREEMPTED_EXIT_CODE`` (75,
   ``EX_TEMPFAIL``: "try again"). Running the same command again resumes from the checkpoint and continues exactly.

Further signals while the checkpoint is written are counted and otherwise ignored (the save completes); a hard kill
during the save leaves only a staging folder, which resume ignores and the next save removes. A signal that arrives
before the first optimizer step of ``train`` lets that step finish and saves it. Before ``train`` starts (data
loading, model building) and after its last step has been checked, the process's own handler applies (by default the
process ends); the checkpoints already written stay complete.

The flag costs one all-reduce of one integer per optimizer step on a gloo (CPU) group: no device sync on GPUs.
"""

import json
import logging
import os
import signal
import threading

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL: a temporary failure, the same command should be run again
PREEMPTION_RECORD = "preempted.json"


class TrainingPreempted(SystemExit):
    """Raised by ``SOPTrainer.train`` after the preemption checkpoint is complete; the process exits with
    ``PREEMPTED_EXIT_CODE``. ``checkpoint`` is the folder written, ``global_step`` its step."""

    def __init__(self, message: str, checkpoint: str | None, global_step: int):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message, self.checkpoint, self.global_step = message, checkpoint, global_step

    def __str__(self) -> str:
        return self.message


def parse_signals(spec: str) -> tuple[signal.Signals, ...]:
    """``"SIGTERM,SIGUSR1"`` -> the signals; ``""`` -> none (preemption handling off).

    Raises:
        ValueError: naming ``--preemption_signals`` and the signals this platform knows, for an unknown name.
    """
    names = [name.strip().upper() for name in str(spec or "").split(",") if name.strip()]
    known = {s.name: s for s in signal.Signals}
    result = []
    for name in names:
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name not in known or name in ("SIGKILL", "SIGSTOP"):
            catchable = ", ".join(n for n in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP") if n in known)
            raise ValueError(f"--preemption_signals: {name} cannot be handled; use names like {catchable} separated "
                             f"by commas, or an empty string to turn preemption handling off")  # fmt: skip
        result.append(known[name])
    return tuple(dict.fromkeys(result))


class PreemptionCallback(TrainerCallback):
    """Stop every process after the same optimizer step once any of them got one of ``signals``, and save it.

    Args:
        signals: the signals that mean "preempted" (``parse_signals(args.preemption_signals)``); empty disables.

    The handlers are installed by ``install`` and restored by ``uninstall`` (``SOPTrainer.train`` does both), never
    at construction: a trainer that is built but not trained keeps the process's own handlers.

    >>> callback = PreemptionCallback(parse_signals("SIGUSR1"))
    >>> callback.install(); callback.uninstall()
    """

    def __init__(self, signals: tuple[signal.Signals, ...]):
        self.signals = tuple(signals)
        self.received: signal.Signals | None = None  # the first signal caught
        self.signal_count = 0
        self.stop_step: int | None = None  # the step whose checkpoint the run ends with
        self._previous: dict[signal.Signals, object] = {}
        self._group = None  # the process group of the stop flag (None: the default group)
        self._flag_on_device = False

    # --- signal handlers -----------------------------------------------------------------------------------------
    def _handle(self, signum, frame) -> None:
        self.signal_count += 1
        if self.received is None:
            self.received = signal.Signals(signum)

    def install(self) -> None:
        """Install the handlers (main thread only; elsewhere Python cannot, and a warning says so)."""
        if not self.signals:
            return
        if threading.current_thread() is not threading.main_thread():
            logger.warning("preemption handling is off: signal handlers can only be installed from the main thread")
            return
        self.received, self.signal_count, self.stop_step = None, 0, None
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Restore the process's handlers. A signal that came after the last step's check (while the run was
        ending) has not been acted on: it is raised again, so the process's own handler (by default: end the
        process) still sees it."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        pending = self.received if self._previous and self.stop_step is None else None
        self._previous = {}
        if pending is not None:
            logger.warning("%s arrived after the last optimizer step: passing it on", pending.name)
            signal.raise_signal(pending)

    # --- the agreed stop -------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._group, self._flag_on_device = None, False
        if not self.signals or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        if torch.distributed.get_world_size() < 2:
            return
        if "gloo" not in str(torch.distributed.get_backend()).lower():
            try:  # a CPU side group: the flag's all-reduce then never waits for the device
                self._group = torch.distributed.new_group(backend="gloo")
            except Exception as error:  # noqa: BLE001 - gloo unavailable: reduce on the device (one sync per step)
                logger.warning("preemption flag on the device (%s: %s)", type(error).__name__, error)
                self._flag_on_device = True

    def stop_requested_anywhere(self, device: torch.device) -> bool:
        """True on every process once any process got a signal (one all-reduce of one integer)."""
        flag = torch.tensor([0 if self.received is None else 1], dtype=torch.int32)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1:
            if self._flag_on_device:
                flag = flag.to(device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if not self.signals or self.stop_step is not None:
            return
        if self.stop_requested_anywhere(args.device):
            self.stop_step = state.global_step
            control.should_save = True
            control.should_training_stop = True
            name = self.received.name if self.received is not None else "a signal on another process"
            logger.warning("%s: stopping after optimizer step %d and saving checkpoint-%d", name, state.global_step,
                           state.global_step)  # fmt: skip

    def on_train_end(self, args, state, control, **kwargs):
        if self._group is not None:
            torch.distributed.destroy_process_group(self._group)
            self._group = None


def write_preemption_record(output_dir: str, checkpoint: str | None, step: int, received) -> str:
    """``OUTPUT_DIR/preempted.json``: what a job script reads to tell a preemption from a failure."""
    path = os.path.join(output_dir, PREEMPTION_RECORD)
    record = {"global_step": step, "checkpoint": checkpoint, "signal": getattr(received, "name", None),
              "exit_code": PREEMPTED_EXIT_CODE}  # fmt: skip
    os.makedirs(output_dir, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(record, handle, indent=1)
    return path


def clear_preemption_record(output_dir: str) -> None:
    """Remove an earlier run's record when a new attempt starts training."""
    path = os.path.join(output_dir, PREEMPTION_RECORD)
    if os.path.exists(path):
        os.remove(path)
