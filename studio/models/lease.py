"""GPU leases: one job at a time uses the model manager's pipelines, in arrival order, and what the
job changes on them is put back when it ends.

A lease is not a thread-owned lock: Gradio resumes a generator on whichever worker thread is free,
so a job may start on one thread and end on another. The gate below keeps a *holder* (the lease
object) and uses its internal lock only for short critical sections, never across a job.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studio.models.loading import TASKS
from studio.models.registry import LEASABLE_ROLES, ModelEntry, Registry

if TYPE_CHECKING:
    from studio.models.manager import ModelManager

WAIT_REPORT_S = 1.0  # how often a waiting job hears where it stands


class Lease:
    """The right to use the manager's GPU objects for one job; see `ModelManager.lease`.

    `pipe` is the pipeline for the job's model, task and ControlNets (None for a lease without a
    model) and `entry` the registry entry asked for. `release()` ends it, from any thread, once."""

    def __init__(self, manager: ModelManager, entry: ModelEntry | None, task: str, purpose: str, exclusive: bool):
        self.pipe: Any = None
        self.entry = entry
        self.task = task
        self.purpose = purpose
        self.exclusive = exclusive
        self.thread = threading.get_ident()  # the thread that asked; a second ask from it is nesting
        self._manager = manager
        self._undo: list[Callable[[], None]] = []  # run last-in first-out on release
        self._released = False
        self._release_lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"{self.entry.name!r} ({self.task})" if self.entry is not None else self.purpose

    @property
    def held(self) -> bool:
        return not self._released

    def on_release(self, undo: Callable[[], None]) -> None:
        """Run `undo` when the lease ends (after those registered later)."""
        self._undo.append(undo)

    def depth_estimator(self) -> tuple[str, Any]:
        """(registry name, transformers depth-estimation pipeline), loaded on first use."""
        if self._released:
            raise RuntimeError(f"the GPU lease for {self.description} was released; take a new one")
        from studio.models.helpers import depth_estimator

        return depth_estimator(self._manager)

    def annotator(self, kind: str) -> tuple[str, Any]:
        """(registry name, annotator) of `kind` ("lineart"), loaded on first use; the annotator maps
        a PIL RGB image to its hint image (white lines on black, the same size)."""
        if self._released:
            raise RuntimeError(f"the GPU lease for {self.description} was released; take a new one")
        from studio.models.helpers import annotator

        return annotator(self._manager, kind)

    def release(self) -> None:
        """Undo the job's changes and let the next job in. Idempotent; callable from any thread."""
        with self._release_lock:
            if self._released:
                return
            self._released = True
        try:
            for undo in reversed(self._undo):
                undo()
        finally:
            self._manager._end(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


class Gate:
    """First come, first served admission of leases: one holder at a time."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[object] = deque()  # one ticket per waiting lease, oldest first
        self.holder: Lease | None = None

    def enter(self, lease: Lease, on_wait: Callable[[str], None] | None = None) -> None:
        """Block until `lease` is the holder. Raises RuntimeError if its thread already holds one:
        waiting for itself would deadlock, and sharing would let the inner job change the outer's
        pipelines."""
        ticket = object()
        with self._cond:
            holder = self.holder
            if holder is not None and holder.thread == lease.thread:
                raise RuntimeError(f"this job already holds the GPU lease for {holder.description}; "
                                   "nested leases are not allowed — release it first")
            self._queue.append(ticket)
        try:
            self._wait_for_turn(lease, ticket, on_wait)
        except BaseException:  # interrupted while waiting: give up the place in line
            with self._cond:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                self._cond.notify_all()
            raise

    def leave(self, lease: Lease) -> None:
        with self._cond:
            if self.holder is lease:
                self.holder = None
                self._cond.notify_all()

    def _wait_for_turn(self, lease: Lease, ticket: object, on_wait: Callable[[str], None] | None) -> None:
        next_report = 0.0
        while True:
            with self._cond:
                if self.holder is None and self._queue[0] is ticket:
                    self._queue.popleft()
                    self.holder = lease
                    return
                report = on_wait is not None and time.monotonic() >= next_report
                if report:
                    message = self._wait_message(ticket)
                else:
                    self._cond.wait(None if on_wait is None else max(0.0, next_report - time.monotonic()))
            if report:  # outside the lock: the callback may be slow or touch the UI
                next_report = time.monotonic() + WAIT_REPORT_S
                on_wait(message)

    def _wait_message(self, ticket: object) -> str:
        position = self._queue.index(ticket) + 1
        holder = self.holder
        if holder is None:
            who = "Another job is starting on the GPU"
        elif holder.exclusive:
            who = f"{holder.purpose[:1].upper()}{holder.purpose[1:]} holds the GPU"
        else:
            who = f"Another job ({holder.purpose}) is using the GPU"
        return f"{who}; you are number {position} in line."


def snapshot(pipes: Sequence[Any]) -> Callable[[], None]:
    """Record what a job may change on these pipelines (which share their modules); the function
    returned puts it back: components (the scheduler above all), the interrupt flag, VAE tiling and
    slicing, and attention processors."""
    components = [(pipe, dict(pipe.components)) for pipe in pipes]
    modules = list({id(m): m for _, saved in components for m in saved.values() if m is not None}.values())
    vae_flags = [(m, m.use_tiling, m.use_slicing) for m in modules if hasattr(m, "use_tiling")]
    processors = [(m, m.attn_processors) for m in modules if hasattr(m, "attn_processors")]

    def restore() -> None:
        for pipe, saved in components:
            for name, value in saved.items():
                if getattr(pipe, name, None) is not value:
                    setattr(pipe, name, value)
            pipe._interrupt = False  # a cancelled job must not cancel the next one
        for vae, tiling, slicing in vae_flags:
            vae.use_tiling, vae.use_slicing = tiling, slicing
        for module, saved in processors:
            current = module.attn_processors
            if current.keys() != saved.keys() or any(current[k] is not v for k, v in saved.items()):
                module.set_attn_processor(dict(saved))  # diffusers pops from the dict it is given

    return restore


@dataclass(frozen=True)
class Plan:
    """What a lease needs, checked against the registry before the job waits in line."""

    entry: ModelEntry | None  # the model asked for
    base: ModelEntry | None  # the checkpoint it runs on: a LoRA-based model's lora.base, else itself
    task: str
    controlnets: tuple[str, ...] = ()
    loras: tuple[tuple[str, float], ...] = ()  # (adapter, weight), the model's own LoRA first


LIBRARY_PREFIX = "library:"  # adapter names of library LoRAs, so they never clash with registry names


def plan_lease(registry: Registry, model: str | None, task: str, controlnets: Sequence[str] = (),
               loras: Sequence[tuple[str, float]] = (),
               library: Callable[[str, ModelEntry], str] | None = None) -> Plan:
    """Check a lease request; raises ValueError naming what is wrong and what is expected.

    A LoRA name that is not a registry entry goes to `library(name, base)`, which checks the
    user's LoRA file against the base model and returns its adapter name ("library:<name>")."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if model is None:
        if controlnets or loras:
            raise ValueError(f"controlnets and loras need a model, got model=None with {list(controlnets)} and {list(loras)}")
        return Plan(None, None, task)
    entry = registry.get(model)
    if entry.role not in LEASABLE_ROLES:
        raise ValueError(f"model {model!r} has role {entry.role!r}, but a lease's model must have a role in "
                         f"{LEASABLE_ROLES} (ControlNets go in controlnets=, LoRAs in loras=)")
    if task not in registry.tasks(entry):
        raise ValueError(f"model {model!r} (role {entry.role!r}) can do {registry.tasks(entry)}, not {task!r}")
    base = registry.get(entry.lora.base) if entry.lora is not None else entry
    stack = [(entry.name, entry.lora.scale)] if entry.lora is not None else []
    for name, weight in loras:
        weight = _check_weight(name, weight)
        if library is None or any(m.name == name for m in registry.models):
            stack.append((_check_add_on(registry, name, "lora", base), weight))
        else:
            stack.append((library(name, base), weight))
    names = [n for n, _ in stack]
    if len(set(names)) != len(names):
        raise ValueError(f"LoRAs must not repeat (a LoRA-based model brings its own LoRA), got {names}")
    # A ControlNet may repeat: two units of one union model (two modes), or two hints of one kind.
    nets = [_check_add_on(registry, name, "controlnet", base) for name in controlnets]
    unions = [n for n in nets if registry.get(n).union]
    if unions and len(unions) != len(nets):
        singles = [n for n in nets if n not in unions]
        raise ValueError(f"ControlNet-Union models cannot be combined with single-condition ControlNets in one "
                         f"job (diffusers has no pipeline for the mix), got unions {unions} and {singles}; "
                         "use the union model for every unit, or only single-condition ones")
    if unions and entry.role == "inpaint":
        raise ValueError(f"ControlNet-Union models cannot run on inpainting checkpoint {model!r}: diffusers' union "
                         f"inpainting pipeline needs a base model's 4-channel UNet, got {unions}; inpaint with a base "
                         "model and the union model's inpaint mode instead")
    return Plan(entry, base, task, tuple(nets), tuple(stack))


def _check_add_on(registry: Registry, name: str, kind: str, base: ModelEntry) -> str:
    """`name` is a LoRA (any entry with a `lora` source) or a ControlNet usable on `base`'s family."""
    entry = registry.get(name)
    fits = entry.lora is not None if kind == "lora" else entry.role == "controlnet"
    if not fits:
        expected = "an entry with a `lora` source" if kind == "lora" else "an entry with role 'controlnet'"
        raise ValueError(f"{kind} {name!r} must be {expected}, but it has role {entry.role!r}")
    if entry.family != base.family:
        raise ValueError(f"{kind} {name!r} is for family {entry.family!r}, but model {base.name!r} is {base.family!r}")
    return name


def _check_weight(name: str, weight: object) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"LoRA {name!r}: weight must be a finite number, got {weight!r}")
    return float(weight)
