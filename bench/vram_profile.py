"""Measured memory of a run's phases beside the `--dry-run` estimate (`training_with_unsloth/memory.py`).

    uv run bench/vram_profile.py                                   # countdown: its model must be cached
    uv run bench/vram_profile.py --config quickstart --steps 1     # the embedded model (on a CPU: RSS)
    # a GPU without the hub model: random weights with Qwen2.5-1.5B's layers (bench/random_model.py)
    uv run bench/random_model.py --shape qwen2.5-1.5b --out /tmp/qwen-shape
    uv run bench/vram_profile.py --config countdown --set model.name=/tmp/qwen-shape

The model loads through `backends.load` (Unsloth on CUDA, transformers + PEFT on a CPU), the trainer is
`assembly.build_trainer` with no research callbacks (no Pass@K or snapshots; save_strategy no, wandb
disabled, a temporary run directory), and `--steps` optimizer steps run (it sets trainer.max_steps,
over any --set). The estimate is memory.estimate with the GRPOConfig built for the run. Each row:

  base weights   after backends.load minus before it (Unsloth: up to its get_peft_model call)
  LoRA weights   after build_trainer minus after the base loaded (PEFT or Unsloth attaches the adapter)
  gradients      what zero_grad frees after the first optimizer step (on_optimizer_step minus
                 on_step_end): the .grad tensors, LoRA's only, the base being frozen
  optimizer      the growth over the first optimizer.step() (on_pre_optimizer_step -> on_optimizer_step):
                 the states it creates
  act. + logits  peak in training_step outside generation and scoring (the loss forward and backward)
                 minus what was in use when training_step began, minus the gradients it allocated (a
                 step's first micro-batch does; the gradients row counts them)
  KV cache       peak in _generate_single_turn minus what was in use before it: the KV cache and
                 generation's transients (logits, sampling, model.fast_generation's merged weights)
  scoring        peak in _generate_and_score_completions outside generation (no estimate): rewards and
                 the no-grad log-prob passes (old policy, reference, KL diagnostics)
  peak           the highest reading of the run minus the reading before the model loaded

Windows are exclusive, as timing.py's phases: a nested window's peak is its own, not its parent's. A
row shows the largest of a window's calls; the line under the table lists each call. The `tensors`
column adds up the storage of the tensors themselves (parameters and buffers, trainable parameters,
.grad, optimizer.state): exact and allocator-free, it checks the formulas apart from the allocator.

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
On a CPU `model.dtype: auto` loads float32, so the estimate is made for float32.
"""

from __future__ import annotations

import argparse
import sys
import threading
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
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be at least 1")

    from training_with_unsloth.cli import run_main

    return run_main(lambda: profile(args.config, args.overrides, args.steps))


def profile(config: str, user_overrides: list[str], steps: int) -> int:
    import gc
    import tempfile

    from training_with_unsloth import memory
    from training_with_unsloth.config import load_config
    from training_with_unsloth.config_files import resolve_config
    from training_with_unsloth.models import backends
    from training_with_unsloth.plan import prepare
    from training_with_unsloth.rundir import RunDir

    path = resolve_config(config)
    overrides = ["logging.wandb=disabled", "trainer.save_strategy=no", *user_overrides, f"trainer.max_steps={steps}"]
    cfg = load_config(path, overrides)
    backends.offline_environment(cfg.model.download)
    cuda = backends.cuda_available()
    prep = prepare(cfg, cuda=cuda)
    backends.resolve_model_path(cfg.model.name, allow_download=cfg.model.download)  # not cached: one line, now
    backends.prepare(prep.backend)  # before anything imports trl (Unsloth patches it on import)

    import torch
    from transformers import ProgressCallback, TrainerCallback, set_seed

    import rewards
    import training_with_unsloth.research_trainer  # noqa: F401  (imported before the first reading)
    from training_with_unsloth.assembly import build_grpo_config, build_trainer

    funcs, weights = rewards.build(prep.reward_specs, on_error=cfg.rewards_on_error)
    train_ds, eval_ds = prep.task.build(cfg.seed)
    tmp = tempfile.TemporaryDirectory(prefix="vram-profile-")
    run = RunDir(Path(tmp.name) / cfg.name)
    run.create()
    targs = build_grpo_config(cfg, run, weights, cuda=cuda, backend=prep.backend)

    # The estimate --dry-run prints, for the dtype this machine loads (auto is float32 on a CPU).
    dtype = str(backends.torch_dtype(cfg.model.dtype, cuda)).removeprefix("torch.")
    est_cfg = cfg
    if cfg.model.dtype == "auto" and dtype == "float32":
        est_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dtype": "float32"})})
    found = memory.model_shape(cfg.model)
    if found is None:  # not expected: a model that resolved has its config.json here
        from transformers import AutoConfig

        local = backends.resolve_model_path(cfg.model.name, allow_download=cfg.model.download)
        found = memory.shape_of(AutoConfig.from_pretrained(local, local_files_only=not cfg.model.download)), "its config.json"
    shape, source = found
    estimated = memory.estimate(est_cfg, targs, shape)
    parts = {p.name: p.bytes for p in estimated}
    est_peak = memory.peak(estimated)

    probe = CudaProbe() if cuda else RssProbe()
    try:
        gc.collect()
        meter = Meter(probe)
        meter.mark("start")
        tensors: dict[str, float] = {}
        set_seed(cfg.seed)
        with _mark_before_lora(prep.backend, meter, tensors):
            loaded = backends.load(
                cfg.model, prep.backend, seed=cfg.seed, gradient_checkpointing=bool(targs.gradient_checkpointing)
            )
        if not cuda:
            touch(loaded.model)
        if "base" not in meter.marks:  # transformers: backends.load returns the base; the trainer attaches LoRA
            meter.mark("base")
            tensors["base weights"] = weight_bytes(loaded.model)
        trainer = build_trainer(
            prep, run, args=targs, model=loaded.model, tokenizer=loaded.tokenizer, peft_config=loaded.peft_config,
            train_ds=train_ds, eval_ds=eval_ds, reward_funcs=funcs, reward_weights=weights, callbacks=[],
        )  # fmt: skip
        trainer.remove_callback(ProgressCallback)  # quiet: the table is what this prints
        meter.mark("built")
        tensors["LoRA weights"] = trainable_bytes(trainer.model)

        seen: dict[str, int] = {}

        def note_lengths(output: Any) -> None:
            if isinstance(output, dict) and "prompt_ids" in output and "completion_ids" in output:
                seen["prompt"] = max(seen.get("prompt", 0), int(output["prompt_ids"].shape[1]))
                seen["completion"] = max(seen.get("completion", 0), int(output["completion_ids"].shape[1]))
                seen["rows"] = max(seen.get("rows", 0), int(output["completion_ids"].shape[0]))

        _wrap(trainer, "training_step", meter, "loss", less=lambda: grad_bytes(trainer.model))
        _wrap(trainer, "_generate_and_score_completions", meter, "scoring", after=note_lengths)
        _wrap(trainer, "_generate_single_turn", meter, "generation")

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
        trainer.train()
        meter.mark("end")
    finally:
        probe.close()
        tmp.cleanup()

    measured_peak = meter.overall - meter.marks["start"]
    rows = [
        Row("base weights", parts["base weights"], meter.delta("base", "start"), tensors.get("base weights"),
            "after backends.load - before" + (" (to get_peft_model)" if prep.backend == "unsloth" else "")),
        Row("LoRA weights", parts["LoRA weights"], meter.delta("built", "base"), tensors.get("LoRA weights"),
            "after build_trainer - base loaded"),
        Row("gradients", parts["gradients"], meter.delta("post_optimizer", "step_end"), tensors.get("gradients"),
            "freed by zero_grad after step 1"),
        Row("optimizer", parts["optimizer"], meter.delta("post_optimizer", "pre_optimizer"), tensors.get("optimizer"),
            "growth over step 1's optimizer.step()"),
        Row("activations", parts["activations"], None, None, "(measured with the logits)"),
        Row("logits", parts["logits"], None, None, "(measured with the activations)"),
        Row("act. + logits", parts["activations"] + parts["logits"], meter.window_value("loss"), None,
            "peak in training_step outside generation/scoring"),
        Row("KV cache", parts["KV cache"], meter.window_value("generation"), None, "peak in _generate_single_turn"),
        Row("scoring", None, meter.window_value("scoring"), None, "peak in scoring outside generation (no estimate)"),
        Row("peak", est_peak, measured_peak, None, "highest reading - before the load"),
    ]  # fmt: skip

    t = trainer.args
    optim = str(getattr(t.optim, "value", t.optim))
    gen_rows = int(getattr(targs, "generation_batch_size", None) or t.per_device_train_batch_size)
    if cuda:
        device = f"{torch.cuda.get_device_name(0)} (CUDA)"
        measuring = "CUDA allocated (torch.cuda.memory_allocated / max_memory_allocated)"
    else:
        device = f"CPU, {torch.get_num_threads()} threads, no CUDA"
        measuring = "CPU RSS (process resident memory sampled every 2 ms: NOT GPU memory)"
    print()
    print(f"vram_profile  {path}  {steps} optimizer step{'s' if steps != 1 else ''}")
    print(f"  device      {device}; measured: {measuring}")
    print(f"  model       {cfg.model.name} via {prep.backend}: {shape.params / 1e9:.3f}B parameters (shape from {source}), "
          f"{'4-bit NF4 base, ' if cfg.model.load_in_4bit else ''}{dtype}"
          f"{' (auto on a CPU: the estimate takes float32, where --dry-run takes 16-bit)' if est_cfg is not cfg else ''}, "
          f"LoRA r={cfg.model.lora.r}")  # fmt: skip
    print(f"  shape       {shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads / {shape.kv_heads} KV x "
          f"{shape.head_dim}, MLP {shape.intermediate}, vocabulary {shape.vocab}{', tied' if shape.tied else ''}")  # fmt: skip
    lengths = (f"; sequences seen: prompt {seen['prompt']} + completion {seen['completion']} tokens, {seen['rows']} rows "
               "per generation" if seen else "")  # fmt: skip
    print(f"  batch       loss micro-batch {t.per_device_train_batch_size} x max_seq_length {cfg.model.max_seq_length}, "
          f"completion {t.max_completion_length}, generation batch {gen_rows}, gradient checkpointing "
          f"{'on' if t.gradient_checkpointing else 'off'}, {optim}{lengths}")  # fmt: skip
    if getattr(trainer, "args_rewritten", None):
        changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in trainer.args_rewritten.items())
        print(f"  note        the trainer changed {changed}; the estimate uses the config's values")
    print()
    print(format_table(rows, probe.label))
    print()
    print(f"estimate: {verdict(est_peak)}")
    if cuda:
        print(f"measured: {verdict(measured_peak)} (allocated; reserved peak {probe.reserved_top / GIB:.2f} GiB)")
    else:
        print("measured: CPU RSS is not GPU memory, so it gives no 16 GB verdict; rerun on a GPU for one")
    calls = [f"{label} {', '.join(f'{v / GIB:.3f}' for v in meter.windows[name].values)}"
             for name, label in WINDOW_LABELS.items() if name in meter.windows]  # fmt: skip
    if calls:
        print(f"per call (GiB): {'; '.join(calls)}")
    missing = [WINDOW_LABELS[name] for name in WINDOW_LABELS if name not in meter.windows]
    missing += [name for name in ("pre_optimizer", "post_optimizer", "step_end") if name not in meter.marks]
    if missing:
        print(f"not measured (the hook never ran): {', '.join(missing)}")
    return 0


def _wrap(trainer: Any, method: str, meter: Meter, window: str, *, less=None, after=None) -> None:
    """Replace the trainer's bound `method` by one that runs inside `meter.window(window)`."""
    original = getattr(trainer, method, None)
    if original is None:  # not in this TRL / Unsloth: the row reads "-" and the hook is listed as not measured
        return

    def wrapped(*args, **kwargs):
        with meter.window(window, less=less):
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
