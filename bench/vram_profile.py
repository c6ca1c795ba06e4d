"""Measured memory of a run's phases beside the `--dry-run` estimate (`training_with_unsloth/memory.py`).

    uv run bench/vram_profile.py                                   # countdown: its model must be cached
    uv run bench/vram_profile.py --config quickstart --steps 1     # the embedded model (on a CPU: RSS)
    # a GPU without the hub model: random weights with Qwen2.5-1.5B's layers and vocabulary (bench/random_model.py)
    uv run bench/random_model.py --shape qwen2.5-1.5b --out /tmp/qwen-shape
    uv run bench/vram_profile.py --config countdown --set model.name=/tmp/qwen-shape
    # the real run (research controls, Pass@K, checkpoints, its run directory) measured the same way
    uv run bench/vram_profile.py --config countdown --run --set model.name=/tmp/qwen-shape --set name=cd-mem --json mem.json

The model loads through `backends.load` (Unsloth on CUDA, transformers + PEFT on a CPU). By default the
trainer is `assembly.build_trainer` with no research callbacks (no Pass@K or snapshots; save_strategy no,
wandb disabled, a temporary run directory), `--steps` optimizer steps run (it sets trainer.max_steps,
over any --set), then one Pass@K batch is generated (`eval.batch_size` sequences through
`generate_completions`, as training-time Pass@K does; `--no-passk` skips it). With `--run` the run is the
experiment itself (`experiment.plan -> assemble -> record -> train`: research controls, Pass@K at its steps,
checkpoints, into `<output_dir>/<name>`), so its run directory is kept. The estimate is
memory.estimate_for with the GRPOConfig built for the run, for the backend and device that run it. Each row:

  base weights   after backends.load minus before it (Unsloth: up to its get_peft_model call)
  LoRA weights   after build_trainer minus after the base loaded (PEFT or Unsloth attaches the adapter)
  gradients      what zero_grad frees after the first optimizer step (on_optimizer_step minus
                 on_step_end): the .grad tensors, LoRA's only, the base being frozen
  optimizer      the growth over the first optimizer.step() (on_pre_optimizer_step -> on_optimizer_step):
                 the states it creates
  act. + logits  peak in training_step outside generation and scoring (the loss forward and backward)
                 minus what was in use when training_step began, minus the gradients it allocated (a
                 step's first micro-batch does; the gradients row counts them)
  KV cache       peak in _generate_single_turn during training minus what was in use before it: the KV cache
                 and generation's transients (logits, sampling, model.fast_generation's merged weights)
  Pass@K cache   the same window during Pass@K generation (generate_completions)
  scoring        peak in _generate_and_score_completions outside generation: rewards and the no-grad
                 log-prob passes (old policy, reference, KL diagnostics)
  peak           the highest reading of the run minus the reading before the model loaded

Windows are exclusive, as timing.py's phases: a nested window's peak is its own, not its parent's. A
row shows the largest of a window's calls; the line under the table lists each call. The `tensors`
column adds up the storage of the tensors themselves (parameters and buffers, trainable parameters,
.grad, optimizer.state): exact and allocator-free, it checks the formulas apart from the allocator.
`--json PATH` writes the same figures (GiB) for scripts: bench/gpu_acceptance.py prints them as RESULT lines.

On CUDA the memory is torch.cuda.memory_allocated and the peak max_memory_allocated, its counter reset at
each window's edges: the CUDA context and the allocator's cache are not in it (the verdict adds
memory.py's margin; the reserved peak is printed beside it). Without CUDA the column is CPU RSS, the
process's resident memory (psutil), its peak sampled every 2 ms by a background thread: NOT GPU
memory. RSS is what the process holds, not what tensors use: the C allocator keeps freed memory for
reuse (so at every mark and window edge glibc's malloc_trim hands free pages back first, otherwise a
window would reuse memory freed before it and read low); Python objects, imports and library caches
are in it too (everything is imported before the first reading, so the rows are what the run added,
but first-call caches land in the window that first calls); weights loaded in their file's dtype are
pages of the safetensors file, resident once read (each weight is read once after loading so that
they count as base weights, not in the first generation). A spike shorter than 2 ms can be missed.
On a CPU the estimate is memory.py's CPU one (transformers, float32 with `model.dtype: auto`).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

GIB = 1024**3
WINDOW_LABELS = {"loss": "training_step", "generation": "_generate_single_turn", "scoring": "scoring"}
SAMPLE_SECONDS = 0.002  # the RSS sampler's interval


# ------------------------------------------------------------------ memory probes: now, peak since reset


class CudaProbe:
    """torch.cuda.memory_allocated now and max_memory_allocated since the last reset (device 0)."""

    label = "CUDA allocated"

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda
        self.reserved_top = 0  # max_memory_reserved over the run (reset_peak_memory_stats resets it too)

    def now(self) -> int:
        return self.cuda.memory_allocated()

    def peak(self) -> int:
        self.reserved_top = max(self.reserved_top, self.cuda.max_memory_reserved())
        return self.cuda.max_memory_allocated()

    def reset_peak(self) -> None:
        self.cuda.reset_peak_memory_stats()

    def close(self) -> None:
        pass


class RssProbe:
    """The process's resident set size now, and its peak since the last reset sampled by a background thread."""

    label = "CPU RSS"

    def __init__(self, interval: float = SAMPLE_SECONDS) -> None:
        import psutil

        self._rss = psutil.Process().memory_info
        self._trim = _malloc_trim()
        self._lock = threading.Lock()
        self._top = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), name="rss-sampler", daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        while not self._stop.wait(interval):
            rss = self.now()
            with self._lock:
                self._top = max(self._top, rss)

    def now(self) -> int:
        return self._rss().rss

    def peak(self) -> int:
        rss = self.now()
        with self._lock:
            self._top = max(self._top, rss)
            return self._top

    def reset_peak(self) -> None:
        """Return the C heap's free pages to the OS first (glibc's malloc_trim), so that RSS is the memory in
        use: a window then sees its allocations as growth, not as reuse of memory freed before it began."""
        if self._trim is not None:
            self._trim(0)
        rss = self.now()
        with self._lock:
            self._top = rss

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim (None elsewhere, e.g. macOS: RSS then keeps what the allocator caches)."""
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def touch(model: Any) -> None:
    """Read every weight once: weights loaded from a safetensors file in their own dtype are its mapped pages,
    resident (in RSS) only once read, which otherwise happens in the first generation."""
    import torch

    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if t.device.type == "cpu" and t.numel():
                t.detach().sum()


# ------------------------------------------------------------------ phase bookkeeping


@dataclass
class _Frame:
    name: str
    start: float
    top: float
    less: float


@dataclass
class Window:
    """`peak - start - less` of each of a window's calls, in order; `value` is the largest."""

    values: list[float] = field(default_factory=list)

    @property
    def value(self) -> float:
        return max(self.values)


@dataclass
class Meter:
    """Memory readings of a run: marks (memory now) and exclusive windows (peak over a span of work).

    `probe` has `now()`, `peak()` (the highest reading since `reset_peak()`) and `reset_peak()`. Every
    reset is preceded by a read, so `overall` is the highest reading since the meter began, whatever the
    windows did. A window's value is the peak while it was the innermost open window, minus the memory
    at its start, minus the growth of `less()` over it (memory the window allocated that another row counts).
    """

    probe: Any
    marks: dict[str, float] = field(default_factory=dict)
    windows: dict[str, Window] = field(default_factory=dict)
    overall: float = 0.0
    _stack: list[_Frame] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.overall = self.probe.now()
        self.probe.reset_peak()

    def _read(self) -> None:
        """Fold the peak since the last reset into the innermost open window and the overall peak; reset."""
        top = self.probe.peak()
        self.overall = max(self.overall, top)
        if self._stack:
            self._stack[-1].top = max(self._stack[-1].top, top)
        self.probe.reset_peak()

    def mark(self, name: str) -> float:
        """Memory now, kept as `marks[name]`."""
        self._read()
        self.marks[name] = value = self.probe.now()
        return value

    @contextmanager
    def window(self, name: str, less: Callable[[], float] | None = None) -> Iterator[None]:
        self._read()  # the parent's peak so far is the parent's
        start = self.probe.now()
        frame = _Frame(name, start, start, less() if less else 0.0)
        self._stack.append(frame)
        try:
            yield
        finally:
            self._read()
            self._stack.pop()
            value = frame.top - frame.start - ((less() - frame.less) if less else 0.0)
            self.windows.setdefault(name, Window()).values.append(value)

    def delta(self, later: str, earlier: str) -> float | None:
        """marks[later] - marks[earlier], None when either was never taken."""
        if later not in self.marks or earlier not in self.marks:
            return None
        return self.marks[later] - self.marks[earlier]

    def window_value(self, name: str) -> float | None:
        seen = self.windows.get(name)
        return None if seen is None else seen.value


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Row:
    name: str
    estimate: float | None  # bytes
    measured: float | None  # bytes
    tensors: float | None = None  # bytes
    how: str = ""


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.3f}"


def _ratio(measured: float | None, estimate: float | None) -> str:
    if measured is None or not estimate:
        return "-"
    return f"{measured / estimate:.2f}"


def format_table(rows: Iterable[Row], measured_label: str) -> str:
    """A caption, then one line per row: part, estimate, measured, measured / estimate, tensors (GiB), how measured."""
    rows = list(rows)
    width = max([len("part"), *(len(r.name) for r in rows)])
    cols = max(len(measured_label), 9)
    head = f"{'part':<{width}}  {'estimate':>9}  {measured_label:>{cols}}  {'ratio':>6}  {'tensors':>9}  measured as"
    caption = f"GiB; ratio = {measured_label} / estimate; tensors = the storage of the tensors themselves"
    lines = [caption, head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.name:<{width}}  {_gib(r.estimate):>9}  {_gib(r.measured):>{cols}}  {_ratio(r.measured, r.estimate):>6}"
            f"  {_gib(r.tensors):>9}  {r.how}".rstrip()
        )
    return "\n".join(lines)


def verdict(peak_bytes: float) -> str:
    """memory.py's 16 GB verdict: the peak plus its CUDA-context margin against a 16 GB card's usable memory."""
    from training_with_unsloth.memory import CONTEXT, USABLE_16GB

    fits = "fits" if peak_bytes + CONTEXT <= USABLE_16GB else "does not fit"
    return (
        f"{peak_bytes / GIB:.2f} GiB + {CONTEXT / GIB:.2f} GiB CUDA context: {fits} a 16 GB card "
        f"({USABLE_16GB / GIB:.2f} GiB usable)"
    )


# ------------------------------------------------------------------ tensor sizes


def storage_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind `tensors` (a tied weight counts once)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in tensors:
        if t is None or not hasattr(t, "untyped_storage"):
            continue
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def _quant_constants(param: Any) -> Iterator[Any]:
    """The quantisation constants bitsandbytes keeps beside a 4-bit weight (absmax, and with double
    quantisation its own absmax and offset)."""
    state = getattr(param, "quant_state", None)
    if state is None:
        return
    yield getattr(state, "absmax", None)
    yield getattr(state, "offset", None)
    nested = getattr(state, "state2", None)
    if nested is not None:
        yield getattr(nested, "absmax", None)


def weight_bytes(model: Any) -> int:
    params = list(model.parameters())
    tensors = [*params, *model.buffers(), *(c for p in params for c in _quant_constants(p))]
    return storage_bytes(tensors)


def trainable_bytes(model: Any) -> int:
    return storage_bytes(p for p in model.parameters() if p.requires_grad)


def grad_bytes(model: Any) -> int:
    return storage_bytes(p.grad for p in model.parameters() if p.grad is not None)


def optimizer_bytes(optimizer: Any) -> int:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps torch's
    tensors = []
    for state in inner.state.values():
        tensors += [v for v in state.values() if hasattr(v, "untyped_storage")]
    return storage_bytes(tensors)


# ------------------------------------------------------------------ the run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "experiment_configs" / "countdown.yaml"),
                    help="experiment YAML path or shipped config name (default: countdown)")  # fmt: skip
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override any config key (repeatable)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps to run (sets trainer.max_steps; default 2)")
    ap.add_argument("--run", action="store_true", help="profile the experiment itself (research controls, Pass@K at its "
                    "steps, checkpoints) and keep its run directory")  # fmt: skip
    ap.add_argument("--overwrite", action="store_true", help="with --run: replace an existing run of that name")
    ap.add_argument("--no-passk", dest="passk", action="store_false", help="without --run: skip the Pass@K batch")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the figures (GiB) as JSON")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be at least 1")

    from training_with_unsloth.cli import run_main

    def body() -> int:
        result = profile(args.config, args.overrides, args.steps, run=args.run, overwrite=args.overwrite, passk=args.passk)
        print(result.text())
        if args.json is not None:
            import json

            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        return 0

    return run_main(body)


@dataclass
class Profile:
    """What one profiled run measured, with the estimate beside it (bytes)."""

    header: list[str]
    rows: list[Row]
    label: str  # what the measured column is (CUDA allocated / CPU RSS)
    cuda: bool
    estimate_peak: float
    measured_peak: float
    reserved_peak: float | None
    calls: dict[str, list[float]]
    missing: list[str]
    meta: dict[str, Any]

    def text(self) -> str:
        lines = ["", *self.header, "", format_table(self.rows, self.label), ""]
        if self.cuda:
            lines.append(f"estimate: {verdict(self.estimate_peak)}")
            lines.append(
                f"measured: {verdict(self.measured_peak)} (allocated; reserved peak {(self.reserved_peak or 0) / GIB:.2f} GiB)"
            )
        else:
            lines.append(f"estimate: {self.estimate_peak / GIB:.2f} GiB of host memory ({self.meta.get('estimate_for')})")
            lines.append("measured: CPU RSS is not GPU memory, so it gives no 16 GB verdict; rerun on a GPU for one")
        if self.calls:
            calls = (f"{k} {', '.join(f'{v / GIB:.3f}' for v in vs)}" for k, vs in self.calls.items())
            lines.append("per call (GiB): " + "; ".join(calls))
        if self.missing:
            lines.append(f"not measured (the hook never ran): {', '.join(self.missing)}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        def gib(value: float | None) -> float | None:
            return None if value is None else round(value / GIB, 4)

        return {
            **self.meta,
            "measured_as": self.label,
            "rows": [
                {
                    "part": r.name,
                    "estimate_gib": gib(r.estimate),
                    "measured_gib": gib(r.measured),
                    "tensors_gib": gib(r.tensors),
                    "measured_as": r.how,
                }
                for r in self.rows
            ],  # fmt: skip
            "estimate_peak_gib": gib(self.estimate_peak),
            "measured_peak_gib": gib(self.measured_peak),
            "reserved_peak_gib": gib(self.reserved_peak),
            "per_call_gib": {k: [gib(v) for v in vs] for k, vs in self.calls.items()},
            "not_measured": self.missing,
        }


class Profiler:
    """The meter of one run and the hooks that feed it: marks around the model load and the first optimizer
    step, exclusive windows around the trainer's loss step, scoring and generation (training or Pass@K)."""

    def __init__(self, probe: Any) -> None:
        self.probe = probe
        self.meter = Meter(probe)
        self.tensors: dict[str, float] = {}
        self.seen: dict[str, int] = {}
        self.in_passk = False

    @contextmanager
    def loading(self, backend: str) -> Iterator[None]:
        """Around the model load: mark `base` once the base model is in memory (under Unsloth as its
        get_peft_model begins; on transformers when backends.load returns, however it is called)."""
        from training_with_unsloth.models import backends

        original = backends.load

        def load(*args: Any, **kwargs: Any) -> Any:
            loaded = original(*args, **kwargs)
            if "base" not in self.meter.marks:  # transformers: backends.load returns the base; the trainer attaches LoRA
                if not self._cuda():
                    touch(loaded.model)
                self.meter.mark("base")
                self.tensors["base weights"] = weight_bytes(loaded.model)
            return loaded

        backends.load = load
        try:
            with _mark_before_lora(backend, self.meter, self.tensors):
                yield
        finally:
            backends.load = original

    def _cuda(self) -> bool:
        return isinstance(self.probe, CudaProbe)

    def built(self, trainer: Any) -> None:
        """After the trainer is built: mark it, and hook its phases and its first optimizer step."""
        from transformers import TrainerCallback

        self.meter.mark("built")
        self.tensors["LoRA weights"] = trainable_bytes(trainer.model)
        meter, tensors = self.meter, self.tensors
        _wrap(trainer, "training_step", meter, "loss", less=lambda: grad_bytes(trainer.model))
        _wrap(trainer, "_generate_and_score_completions", meter, "scoring", after=self._note_lengths)
        _wrap(trainer, "_generate_single_turn", meter, lambda: "passk" if self.in_passk else "generation")
        original = getattr(trainer, "generate_completions", None)
        if original is not None:

            def generate_completions(*args: Any, **kwargs: Any) -> Any:
                self.in_passk = True
                try:
                    return original(*args, **kwargs)
                finally:
                    self.in_passk = False

            trainer.generate_completions = generate_completions

        class StepMarks(TrainerCallback):
            """Memory around the first optimizer step (global_step 0 before it, 1 after)."""

            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                if state.global_step == 0:
                    meter.mark("pre_optimizer")
                    tensors["gradients"] = grad_bytes(trainer.model)

            def on_optimizer_step(self, args, state, control, **kwargs):
                if state.global_step == 0:
                    meter.mark("post_optimizer")
                    tensors["optimizer"] = optimizer_bytes(kwargs.get("optimizer") or trainer.optimizer)

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 1:
                    meter.mark("step_end")

        trainer.add_callback(StepMarks())

    def _note_lengths(self, output: Any) -> None:
        if isinstance(output, dict) and "prompt_ids" in output and "completion_ids" in output:
            seen = self.seen
            seen["prompt"] = max(seen.get("prompt", 0), int(output["prompt_ids"].shape[1]))
            seen["completion"] = max(seen.get("completion", 0), int(output["completion_ids"].shape[1]))
            seen["rows"] = max(seen.get("rows", 0), int(output["completion_ids"].shape[0]))

    def rows(self, parts: dict[str, float], backend: str) -> list[Row]:
        """The table: each part's estimate beside what was measured for it."""
        m, t = self.meter, self.tensors
        return [
            Row("base weights", parts["base weights"], m.delta("base", "start"), t.get("base weights"),
                "after backends.load - before" + (" (to get_peft_model)" if backend == "unsloth" else "")),
            Row("LoRA weights", parts["LoRA weights"], m.delta("built", "base"), t.get("LoRA weights"),
                "after build_trainer - base loaded"),
            Row("gradients", parts["gradients"], m.delta("post_optimizer", "step_end"), t.get("gradients"),
                "freed by zero_grad after step 1"),
            Row("optimizer", parts["optimizer"], m.delta("post_optimizer", "pre_optimizer"), t.get("optimizer"),
                "growth over step 1's optimizer.step()"),
            Row("activations", parts["activations"], None, None, "(measured with the logits)"),
            Row("logits", parts["logits"], None, None, "(measured with the activations)"),
            Row("act. + logits", parts["activations"] + parts["logits"], m.window_value("loss"), None,
                "peak in training_step outside generation/scoring"),
            Row("KV cache", parts["KV cache"], m.window_value("generation"), None, "peak in training's _generate_single_turn"),
            Row("Pass@K cache", parts["Pass@K cache"], m.window_value("passk"), None, "peak in Pass@K's _generate_single_turn"),
            Row("scoring", parts["scoring"], m.window_value("scoring"), None, "peak in scoring outside generation"),
        ]  # fmt: skip


WINDOW_NAMES = {**WINDOW_LABELS, "passk": "Pass@K generation"}


def profile(config: str, user_overrides: list[str], steps: int, *, run: bool = False, overwrite: bool = False,
            passk: bool = True) -> Profile:  # fmt: skip
    """Train `steps` optimizer steps of `config` (the bare trainer, or with `run` the experiment itself) and
    measure each phase's memory beside memory.py's estimate."""
    import gc
    import tempfile

    from training_with_unsloth import memory
    from training_with_unsloth.config import load_config
    from training_with_unsloth.config_files import resolve_config
    from training_with_unsloth.models import backends

    path = resolve_config(config)
    overrides = ["logging.wandb=disabled", *([] if run else ["trainer.save_strategy=no"]), *user_overrides,
                 f"trainer.max_steps={steps}"]  # fmt: skip
    cfg = load_config(path, overrides)
    tmp = None
    if run:
        from training_with_unsloth import experiment

        plan = experiment.plan(cfg, overwrite=overwrite)
        prep, targs, cuda, run_dir = plan.prep, plan.args, plan.cuda, plan.run
    else:
        from training_with_unsloth.plan import prepare
        from training_with_unsloth.rundir import RunDir

        backends.offline_environment(cfg.model.download)
        cuda = backends.cuda_available()
        prep = prepare(cfg, cuda=cuda)
        backends.resolve_model_path(cfg.model.name, allow_download=cfg.model.download)  # not cached: one line, now
        backends.prepare(prep.backend)  # before anything imports trl (Unsloth patches it on import)
        import rewards
        from training_with_unsloth.assembly import build_grpo_config

        funcs, weights = rewards.build(prep.reward_specs, on_error=cfg.rewards_on_error)
        tmp = tempfile.TemporaryDirectory(prefix="vram-profile-")
        run_dir = RunDir(Path(tmp.name) / cfg.name)
        run_dir.create()
        targs = build_grpo_config(cfg, run_dir, weights, cuda=cuda, backend=prep.backend)

    import torch
    from transformers import ProgressCallback, set_seed

    import training_with_unsloth.research_trainer  # noqa: F401  (imported before the first reading)
    from training_with_unsloth.assembly import build_trainer

    # The estimate --dry-run prints, for the backend and device that run it here.
    est_target = memory.target(cfg, prep.backend, cuda)
    found = memory.model_shape(cfg.model)
    if found is None:  # not expected: a model that resolved has its config.json here
        from transformers import AutoConfig

        local = backends.resolve_model_path(cfg.model.name, allow_download=cfg.model.download)
        found = memory.shape_of(AutoConfig.from_pretrained(local, local_files_only=not cfg.model.download)), "its config.json"
    shape, source = found
    estimated = memory.estimate_for(cfg, targs, shape, est_target)
    parts = {p.name: p.bytes for p in estimated}
    est_peak = memory.peak(estimated)

    probe = CudaProbe() if cuda else RssProbe()
    try:
        gc.collect()
        prof = Profiler(probe)
        prof.meter.mark("start")
        set_seed(cfg.seed)
        if run:
            with prof.loading(prep.backend):
                assembled = experiment.assemble(plan)
            trainer, loaded = assembled.trainer, assembled.loaded
            experiment.record(plan, assembled)
        else:
            with prof.loading(prep.backend):
                loaded = backends.load(
                    cfg.model, prep.backend, seed=cfg.seed, gradient_checkpointing=bool(targs.gradient_checkpointing)
                )
            train_ds, eval_ds = prep.task.build(cfg.seed)
            trainer = build_trainer(
                prep, run_dir, args=targs, model=loaded.model, tokenizer=loaded.tokenizer, peft_config=loaded.peft_config,
                train_ds=train_ds, eval_ds=eval_ds, reward_funcs=funcs, reward_weights=weights, callbacks=[],
            )  # fmt: skip
            trainer.remove_callback(ProgressCallback)  # quiet: the table is what this prints
        prof.built(trainer)
        started = time.perf_counter()
        if run:
            experiment.train(plan, assembled)
        else:
            trainer.train()
        seconds = time.perf_counter() - started
        if passk and not run and cfg.eval.enabled:
            ev = cfg.eval
            per = max(1, ev.batch_size // ev.num_samples)
            prompts = [row["prompt"] for row in list(eval_ds)[:per]]
            trainer.generate_completions(
                prompts, num_samples=ev.num_samples, greedy=False, temperature=ev.temperature,
                max_new_tokens=ev.max_new_tokens or targs.max_completion_length, batch_size=ev.batch_size,
            )  # fmt: skip
        prof.meter.mark("end")
    finally:
        probe.close()
        if tmp is not None:
            tmp.cleanup()

    meter = prof.meter
    measured_peak = meter.overall - meter.marks["start"]
    rows = [*prof.rows(parts, prep.backend), Row("peak", est_peak, measured_peak, None, "highest reading - before the load")]
    t = trainer.args
    optim = str(getattr(t.optim, "value", t.optim))
    gen_rows = int(getattr(targs, "generation_batch_size", None) or t.per_device_train_batch_size)
    dtype = str(backends.torch_dtype(cfg.model.dtype, cuda)).removeprefix("torch.")
    if cuda:
        device = f"{torch.cuda.get_device_name(0)} (CUDA)"
        measuring = "CUDA allocated (torch.cuda.memory_allocated / max_memory_allocated)"
    else:
        device = f"CPU, {torch.get_num_threads()} threads, no CUDA"
        measuring = "CPU RSS (process resident memory sampled every 2 ms: NOT GPU memory)"
    seen = prof.seen
    lengths = (f"; sequences seen: prompt {seen['prompt']} + completion {seen['completion']} tokens, {seen['rows']} rows "
               "per generation" if seen else "")  # fmt: skip
    header = [
        f"vram_profile  {path}  {steps} optimizer step{'s' if steps != 1 else ''}"
        + (f"  (the experiment: {run_dir.path})" if run else ""),
        f"  device      {device}; measured: {measuring}",
        f"  model       {cfg.model.name} via {prep.backend}: {shape.params / 1e9:.3f}B parameters (shape from {source}), "
        f"{'4-bit NF4 base, ' if cfg.model.load_in_4bit else ''}{dtype}, LoRA r={cfg.model.lora.r}; "
        f"estimate for {est_target.label}",
        f"  shape       {shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads / {shape.kv_heads} KV x "
        f"{shape.head_dim}, MLP {shape.intermediate}, vocabulary {shape.vocab}{', tied' if shape.tied else ''}",
        f"  batch       loss micro-batch {t.per_device_train_batch_size} x max_seq_length {cfg.model.max_seq_length}, "
        f"completion {t.max_completion_length}, generation batch {gen_rows}, Pass@K batch {cfg.eval.batch_size}, "
        f"gradient checkpointing {'on' if t.gradient_checkpointing else 'off'}, {optim}{lengths}",
    ]
    if getattr(trainer, "args_rewritten", None):
        changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in trainer.args_rewritten.items())
        header.append(f"  note        the trainer changed {changed}; the estimate uses the config's values")
    calls = {label: meter.windows[name].values for name, label in WINDOW_NAMES.items() if name in meter.windows}
    missing = [WINDOW_NAMES[name] for name in WINDOW_NAMES if name not in meter.windows]
    missing += [name for name in ("pre_optimizer", "post_optimizer", "step_end") if name not in meter.marks]
    meta = {
        "config": str(path), "steps": steps, "device": device, "cuda": cuda, "backend": prep.backend,
        "model": cfg.model.name, "dtype": dtype, "load_in_4bit": cfg.model.load_in_4bit,
        "estimate_for": est_target.label, "vocab": shape.vocab, "train_seconds": round(seconds, 3),
        "run_dir": str(run_dir.path) if run else None, "sequences_seen": dict(seen),
    }  # fmt: skip
    return Profile(
        header, rows, probe.label, cuda, est_peak, measured_peak, probe.reserved_top if cuda else None, calls, missing, meta
    )


def _wrap(trainer: Any, method: str, meter: Meter, window: str | Callable[[], str], *, less=None, after=None) -> None:
    """Replace the trainer's bound `method` by one that runs inside `meter.window(window)` (a name, or a function
    that names the window at each call)."""
    original = getattr(trainer, method, None)
    if original is None:  # not in this TRL / Unsloth: the row reads "-" and the hook is listed as not measured
        return

    def wrapped(*args, **kwargs):
        with meter.window(window() if callable(window) else window, less=less):
            out = original(*args, **kwargs)
        if after is not None:
            after(out)
        return out

    setattr(trainer, method, wrapped)


@contextmanager
def _mark_before_lora(backend: str, meter: Meter, tensors: dict[str, float]) -> Iterator[None]:
    """Under Unsloth, backends.load attaches LoRA itself: mark the memory as its get_peft_model begins."""
    if backend != "unsloth":
        yield
        return
    from unsloth import FastLanguageModel

    saved = FastLanguageModel.__dict__.get("get_peft_model")
    original = FastLanguageModel.get_peft_model

    def get_peft_model(model, *args, **kwargs):
        meter.mark("base")
        tensors["base weights"] = weight_bytes(model)
        return original(model, *args, **kwargs)

    FastLanguageModel.get_peft_model = staticmethod(get_peft_model)
    try:
        yield
    finally:
        if saved is None:
            del FastLanguageModel.get_peft_model
        else:
            FastLanguageModel.get_peft_model = saved


if __name__ == "__main__":
    sys.exit(main())
