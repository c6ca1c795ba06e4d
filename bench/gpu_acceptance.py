"""Everything only a GPU can prove, in one command: one CUDA GPU, no network, at most 10 minutes.

    uv run bench/gpu_acceptance.py --plan           # the steps, their time limits and commands (no GPU needed)
    uv run bench/gpu_acceptance.py                  # run them; results to stdout and bench/results/
    .venv/bin/python bench/gpu_acceptance.py --only a,b_bf16,c --keep --work /tmp/acc

Each step runs as its own process (this script with --child STEP) in a process group under its own time limit:
a hang or a crash stops that step alone, and the steps after it run (those that need its output are skipped).
Every figure is one line `RESULT key=value`; a step that cannot run prints `RESULT <step>=skipped reason=...`,
one that fails or runs out of time `RESULT <step>=failed reason=...`, one that ran `RESULT <step>=ok`. The lines
go to stdout and to `--out` (default bench/results/gpu_acceptance-<UTC time>.txt); every step's full output
(the vram_profile tables included) goes to the file beside it with `.log`. The runs and the model are written
under `--work` (default a temporary folder, removed at the end unless --keep), never into the repository.

Nothing is downloaded: the model is made here with random weights (bench/random_model.py: Qwen2.5-1.5B's exact
shape with its 151,936-row vocabulary, tokenized by the embedded SmolLM2 tokenizer), the tokenizer and the
configs come with the repository and its .venv, and every child runs with the Hugging Face hub offline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 600  # every step's limit together, model build included
CONFIG = "countdown"
# Countdown at its own batch sizes, with a small Pass@K (4 problems x 4 samples + greedy, at steps 0 and 2), the KL
# diagnostics every step, a trainer checkpoint at step 2 (for the resume check) and no live plots.
SMALL = ["eval.num_problems=4", "eval.num_samples=4", "eval.k=[1,4]", "eval.batch_size=16", "kl.diagnostics_every=1",
         "trainer.save_steps=2", "logging.plots=false", "logging.wandb=disabled"]  # fmt: skip
STEPS_TRAINED = 2
DEVICE = "cuda"  # where analysis/llc.py and the gradient check run
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
}  # fmt: skip


# ------------------------------------------------------------------ the work folder and the steps


@dataclass(frozen=True)
class Work:
    """Where the steps read and write (a folder outside the repository) and the interpreter they run."""

    root: Path
    python: str = sys.executable

    @property
    def model(self) -> Path:
        return self.root / "qwen-shape"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, dtype: str) -> Path:
        return self.runs / f"acc-{dtype}"

    def script(self, path: str, *args: str) -> list[str]:
        return [self.python, str(REPO / path), *args]

    def train(self, dtype: str) -> list[str]:
        """vram_profile.py --run: the experiment itself, its memory per phase beside the --dry-run estimate."""
        sets = [f"model.name={self.model}", f"model.dtype={dtype}", f"output_dir={self.runs}", f"name=acc-{dtype}", *SMALL]
        return self.script(
            "bench/vram_profile.py", "--config", CONFIG, "--run", "--steps", str(STEPS_TRAINED), "--overwrite",
            "--json", str(self.root / f"memory-{dtype}.json"), *(a for s in sets for a in ("--set", s)),
        )  # fmt: skip


@dataclass(frozen=True)
class Step:
    key: str
    limit: int  # seconds
    title: str
    needs: tuple[str, ...]
    commands: Callable[[Work], list[list[str]]]  # what the step runs (for --plan; the body runs them)
    body: Callable[[Work], None]
    inline: str = ""  # what the step's process does itself, beside the commands


def _model(w: Work) -> list[list[str]]:
    return [w.script("bench/random_model.py", "--shape", "qwen2.5-1.5b", "--out", str(w.model), "--device", "cuda")]


def _resume(w: Work) -> list[str]:
    return w.script("experiments/run_experiment.py", str(w.run("float16") / "config.yaml"), "--resume", "--set",
                    "model.dtype=bfloat16")  # fmt: skip


def _resume_auto(w: Work) -> list[str]:
    """The float16 run resumed with model.dtype auto (bfloat16 on this card) for one more step: pinned to float16."""
    return w.script("experiments/run_experiment.py", str(w.run("float16") / "config.yaml"), "--resume", "--set",
                    "model.dtype=auto", "--set", f"trainer.max_steps={STEPS_TRAINED + 1}")  # fmt: skip


def _evaluate(w: Work) -> list[str]:
    return w.script("experiments/evaluate.py", "--run", str(w.run("bfloat16")), "--checkpoint", str(STEPS_TRAINED))


def _infer(w: Work, nums: str = "<nums>", target: str = "<target>") -> list[str]:
    return w.script("experiments/infer.py", "--run", str(w.run("bfloat16")), "--checkpoint", str(STEPS_TRAINED),
                    "--task", "countdown", "--nums", nums, "--target", target)  # fmt: skip


def _llc(w: Work) -> list[str]:
    return w.script(
        "analysis/llc.py", "--run", str(w.run("float16")), "--checkpoints", str(STEPS_TRAINED), "--probe", "reference",
        "--num-probes", "2", "--chains", "1", "--draws", "4", "--burn-in", "2", "--mala-steps", "0", "--no-calibrate",
        "--no-figure", "--no-robustness", "--device", DEVICE,
    )  # fmt: skip


def _export(w: Work) -> list[str]:
    return w.script("experiments/export.py", "--run", str(w.run("bfloat16")), "--checkpoint", str(STEPS_TRAINED),
                    "--gguf", "q8_0", "--out", str(w.root / "gguf"))  # fmt: skip


def _overhead(w: Work) -> list[str]:
    sets = [f"model.name={w.model}", "model.dtype=bfloat16", "trainer.gradient_accumulation_steps=1", "logging.plots=false"]
    return w.script(
        "bench/trainer_overhead.py", "--config", CONFIG, "--steps", "1", "--repeats", "2", "--variants", "plain,ours-off",
        "--json", str(w.root / "overhead.json"), *(a for s in sets for a in ("--set", s)),
    )  # fmt: skip


# ------------------------------------------------------------------ what a child prints


def result(key: str, value: Any, **extra: Any) -> str:
    """One `RESULT key=value[ name=value ...]` line (printed and returned); values on one line."""

    def text(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.6g}"
        if isinstance(v, bool):
            return "yes" if v else "no"
        return " ".join(str(v).split())

    line = f"RESULT {key}={text(value)}" + "".join(f" {k}={text(v)}" for k, v in extra.items())
    print(line, flush=True)
    return line


def call(argv: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command from the repository root, its output echoed (it goes to the step's log) and captured."""
    print(f"$ {shlex.join(argv)}", flush=True)
    proc = subprocess.run(argv, cwd=REPO, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)  # fmt: skip
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    sys.stdout.flush()
    return proc


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or [f"exit {proc.returncode}"])[-1][:300]


class StepFailed(Exception):
    """The step cannot go on: reported as `RESULT <step>=failed reason=<message>`."""


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        raise StepFailed(f"{what} exited {proc.returncode}: {_last_line(proc)}")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_").replace("__", "_")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


# ------------------------------------------------------------------ the steps' bodies (run in the child)


def step_model(w: Work) -> None:
    """a. Qwen2.5-1.5B's shape and vocabulary with random weights, tokenized by the embedded SmolLM2 tokenizer."""
    proc = call(_model(w)[0])
    _check(proc, "random_model.py")
    from transformers import AutoTokenizer

    config = json.loads((w.model / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(w.model)
    result("a.vocab", config["vocab_size"])
    result("a.layers", config["num_hidden_layers"], hidden=config["hidden_size"], mlp=config["intermediate_size"])
    result("a.tokenizer_tokens", len(tok), tokenizer="embedded SmolLM2-135M-Instruct (ids above it are sampled, never tokenized)")
    result("a.pad_token", tok.pad_token, eos=tok.eos_token)
    if config["vocab_size"] != 151936:
        raise StepFailed(f"the model has {config['vocab_size']} vocabulary rows, not Qwen2.5's 151936")


def compare_trainer_keys(asked: dict[str, Any], held: dict[str, Any]) -> list[str]:
    """The keys of `asked` (the run's trainer: section) whose value the trainer's GRPO config does not hold."""
    missing = object()

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, bool) or isinstance(b, bool):
            return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
        if isinstance(a, int | float) and isinstance(b, int | float):
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
        if isinstance(a, list | tuple) and isinstance(b, list | tuple):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        return a == b or (isinstance(b, str) and str(a) == b)

    return [
        f"{k}: {v!r} asked, {repr(held[k]) if k in held else 'nothing'} held"
        for k, v in asked.items()
        if not same(v, held.get(k, missing))
    ]


def _train_and_report(w: Work, dtype: str, key: str) -> None:
    """b. The countdown config for 2 steps in `dtype`: memory per phase beside the estimate, s/step, KL at step 1,
    the recorded GRPO config against the YAML's trainer keys."""
    proc = call(w.train(dtype))
    _check(proc, "vram_profile.py --run")
    memory = json.loads((w.root / f"memory-{dtype}.json").read_text())
    for row in memory["rows"]:
        part = "act_logits" if row["part"] == "act. + logits" else _slug(row["part"])
        result(f"{key}.memory.{part}.estimate_gib", row["estimate_gib"])
        result(f"{key}.memory.{part}.measured_gib", row["measured_gib"])
    result(f"{key}.memory.reserved_peak_gib", memory.get("reserved_peak_gib"))
    result(f"{key}.memory.device", memory.get("device"), estimate_for=memory.get("estimate_for"))
    run = w.run(dtype)
    metrics = _read_jsonl(run / "metrics.jsonl")
    train = {r["step"]: r for r in metrics if r.get("kind") == "train"}
    for step in range(1, STEPS_TRAINED + 1):
        result(f"{key}.step_time_s.step{step}", train.get(step, {}).get("step_time", "-"))
    first = train.get(1, {})
    values = [first.get(f"kl/k{i}") for i in (1, 2, 3)]
    for i, v in enumerate(values, 1):
        result(f"{key}.kl_k{i}.step1", v if v is not None else "-")
    measured = [v for v in values if isinstance(v, int | float)]
    result(f"{key}.kl_step1_zero", bool(measured) and all(abs(v) < 1e-6 for v in measured), expected="yes (LoRA B = 0)")
    for r in metrics:
        if r.get("kind") == "eval":
            result(f"{key}.eval.pass1.step{r['step']}", r.get("eval/pass@1", "-"), greedy=r.get("eval/greedy_pass@1", "-"))
    from training_with_unsloth.yaml_reader import read_yaml_mapping

    asked = dict(read_yaml_mapping(run / "config.yaml", what="run's config").get("trainer") or {})
    held = json.loads((run / "trainer" / "grpo_config.json").read_text())
    bad = compare_trainer_keys(asked, held)
    result(f"{key}.grpo_config", "ok" if not bad else "mismatch", keys=len(asked), differ="; ".join(bad) or "-")
    if bad:
        raise StepFailed(f"the trainer holds other values than the YAML for {len(bad)} trainer keys")


def step_scoring(w: Work) -> None:
    """c. Reference log-probs of Unsloth's packed/fused scorer (what the KL diagnostics read) against a direct
    forward pass of each row alone, unpadded."""
    import torch
    from trl.trainer.utils import use_adapter

    from training_with_unsloth.config import load_config
    from training_with_unsloth.config_files import resolve_config
    from training_with_unsloth.session import open_session

    cfg = load_config(resolve_config(CONFIG), [f"model.name={w.model}", "model.dtype=bfloat16", *SMALL])
    session = open_session(cfg)
    trainer = session.trainer
    result("c.backend", session.prep.backend)
    device = trainer.accelerator.device
    tok = session.tokenizer
    pad = tok.pad_token_id
    ids, _, _ = trainer._tokenize_prompts([r["prompt"] for r in session.eval_rows[:4]])
    prompts = [list(p)[cut:] for p, cut in zip(ids, (0, 5, 11, 17), strict=True)]  # different left padding per row
    lengths = [40, 23, 31, 12]
    gen = torch.Generator().manual_seed(0)
    special = {pad, tok.eos_token_id, tok.bos_token_id}
    completions = []
    for n in lengths:
        row = torch.randint(3, len(tok), (n,), generator=gen).tolist()
        completions.append([t if t not in special else 100 for t in row])
    width_p, width_c = max(map(len, prompts)), max(lengths)
    prompt_ids = torch.tensor([[pad] * (width_p - len(p)) + p for p in prompts], device=device)
    prompt_mask = torch.tensor([[0] * (width_p - len(p)) + [1] * len(p) for p in prompts], device=device)
    completion_ids = torch.tensor([c + [pad] * (width_c - len(c)) for c in completions], device=device)
    completion_mask = torch.tensor([[1] * len(c) + [0] * (width_c - len(c)) for c in completions], device=device)
    output = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask}  # fmt: skip
    scored = trainer._reference_logps(output).float()
    temperature = float(trainer.args.temperature)
    model = trainer.model
    diffs, shifted = [], []
    os.environ["UNSLOTH_RETURN_HIDDEN_STATES"] = "0"  # Unsloth's forward returns logits, not hidden states
    os.environ["UNSLOTH_RETURN_LOGITS"] = "1"
    with torch.no_grad(), use_adapter(trainer.accelerator.unwrap_model(model), adapter_name=None):
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            row = torch.tensor([p + c], device=device)
            logits = model(input_ids=row, attention_mask=torch.ones_like(row)).logits
            if logits.shape[-1] != session.loaded.model.get_output_embeddings().weight.shape[0]:
                raise StepFailed(f"the direct forward returned width {logits.shape[-1]}, not the vocabulary's")
            logp = torch.log_softmax(logits[0, len(p) - 1 : len(p) - 1 + len(c)].float() / temperature, dim=-1)
            direct = logp.gather(-1, torch.tensor(c, device=device)[:, None])[:, 0]
            diffs.append((scored[i, : len(c)] - direct).abs())
            shifted.append((scored[i, 1 : len(c)] - direct[:-1]).abs())
    diff, off = torch.cat(diffs), torch.cat(shifted)
    mean, worst, misaligned = float(diff.mean()), float(diff.max()), float(off.mean())
    result("c.rows", len(lengths), left_padding="0..17", completion_tokens=int(diff.numel()))
    result("c.mean_abs_diff", mean)
    result("c.max_abs_diff", worst)
    result("c.misaligned_mean_abs_diff", misaligned, note="the same comparison one column off, for scale")
    session.close()
    if not (mean < 0.05 and worst < 0.5 and misaligned > 5 * mean):
        raise StepFailed(
            f"scored and direct log-probs differ: mean {mean:.3g}, max {worst:.3g} (one column off: {misaligned:.3g})"
        )


def step_resume(w: Work) -> None:
    """d. The float16 run resumed on this bfloat16 card: `model.dtype: bfloat16` is refused in one line naming
    model.dtype, before anything is moved; `model.dtype: auto` is pinned to float16 and trains one more step (its
    float16 gradient scaler loads: under bf16 `Trainer._load_scaler` would crash)."""
    run = w.run("float16")
    if not (run / "trainer").is_dir():
        raise StepFailed("the float16 run has no trainer folder")
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    proc = call(_resume(w))
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    untouched = sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    result("d.refused.exit", proc.returncode, expected=2)
    result("d.refused.error", errors[0] if errors else "-")
    result("d.refused.run_untouched", untouched)
    if proc.returncode != 2 or len(errors) != 1 or "model.dtype" not in errors[0] or "Traceback" in proc.stderr:
        raise StepFailed(f"expected exit 2 and one error line naming model.dtype; got exit {proc.returncode}: {_last_line(proc)}")
    if not untouched:
        raise StepFailed("the refused resume changed the run directory")
    proc = call(_resume_auto(w))
    _check(proc, "the resume with model.dtype auto")
    env = json.loads((run / "env.json").read_text())
    resumed = (env.get("resumes") or [{}])[-1]
    steps = [r["step"] for r in _read_jsonl(run / "metrics.jsonl") if r.get("kind") == "train"]
    pinned = "pinned to float16" in proc.stdout
    dtype = (resumed.get("model") or {}).get("dtype")
    result("d.pinned.note", pinned, dtype=dtype, steps=",".join(map(str, steps)))
    if not pinned or dtype != "float16" or steps[-1:] != [STEPS_TRAINED + 1]:
        raise StepFailed(f"the auto resume did not continue in float16 to step {STEPS_TRAINED + 1} (dtype {dtype})")


def step_after_training(w: Work) -> None:
    """e. evaluate.py and infer.py on the bf16 run reproduce its training-time evaluation at step 2."""
    run = w.run("bfloat16")
    trained = {r["problem_id"]: r for r in _read_jsonl(run / "eval" / f"passk-{STEPS_TRAINED}.jsonl")}
    if not trained:
        raise StepFailed(f"the run has no eval/passk-{STEPS_TRAINED}.jsonl")
    proc = call(_evaluate(w))
    _check(proc, "evaluate.py")
    again = {r["problem_id"]: r for r in _read_jsonl(run / "evaluations" / "default" / "eval" / f"passk-{STEPS_TRAINED}.jsonl")}
    same_samples = sum(a == b for pid in trained for a, b in zip(trained[pid]["samples"], again.get(pid, {}).get("samples", [])))
    total = sum(len(r["samples"]) for r in trained.values())
    same_greedy = sum(trained[pid].get("greedy") == again.get(pid, {}).get("greedy") for pid in trained)
    result("e.evaluate.samples_identical", f"{same_samples}/{total}")
    result("e.evaluate.greedy_identical", f"{same_greedy}/{len(trained)}")
    metrics = [r for r in _read_jsonl(run / "metrics.jsonl") if r.get("kind") == "eval" and r.get("step") == STEPS_TRAINED]
    redone = [r for r in _read_jsonl(run / "evaluations" / "default" / "metrics.jsonl") if r.get("step") == STEPS_TRAINED]
    pass1 = (metrics[-1].get("eval/pass@1") if metrics else None, redone[-1].get("eval/pass@1") if redone else None)
    result("e.evaluate.pass1", f"{pass1[0]} (training) vs {pass1[1]} (evaluate.py)")
    # infer.py: the first problem's greedy answer, asked alone
    import tasks
    from training_with_unsloth.config import validate
    from training_with_unsloth.yaml_reader import read_yaml_mapping

    cfg = validate(read_yaml_mapping(run / "config.yaml", what="run's config"))
    _, eval_ds = tasks.get(cfg.task.name, **cfg.task.params).build(cfg.seed)
    rows = {r["problem_id"]: r for r in eval_ds}
    pid = next(iter(trained))
    row = rows[pid]
    proc = call(_infer(w, ",".join(map(str, row["nums"])), str(row["target"])))
    _check(proc, "infer.py")
    answer = streamed_answer(proc.stdout, row["prompt"])
    greedy = trained[pid].get("greedy") or ""
    result("e.infer.greedy_matches", answer is not None and answer.strip() == greedy.strip(), problem=pid)
    if same_samples != total or same_greedy != len(trained) or pass1[0] != pass1[1]:
        raise StepFailed("evaluate.py did not reproduce the training-time evaluation sample for sample")


def streamed_answer(stdout: str, prompt: list[dict[str, str]]) -> str | None:
    """The answer infer.py streamed: between the prompt it printed and its verdict line (None if not found)."""
    shown = "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)
    start = stdout.find(shown)
    verdict = max(stdout.rfind("\ncorrect (gold:"), stdout.rfind("\nwrong (gold:"))
    if start < 0 or verdict < start + len(shown):
        return None
    return stdout[start + len(shown) : verdict]


def step_llc(w: Work) -> None:
    """f. analysis/llc.py on the float16 4-bit run with tiny settings; the LoRA gradients of its probe loss."""
    proc = call(_llc(w))
    _check(proc, "llc.py")
    import csv

    rows = list(csv.DictReader((w.run("float16") / "analysis" / "llc.csv").open()))
    row = next((r for r in rows if r.get("step") == str(STEPS_TRAINED)), None)
    value = float(row["llc_mean"]) if row and row.get("llc_mean") not in (None, "") else float("nan")
    result("f.llc_mean", value, finite=math.isfinite(value), nonzero=value != 0)
    import torch

    from analysis.llc_estimator import Settings
    from analysis.per_checkpoint import Context
    from analysis.run_probe import run_probe
    from analysis.runs import open_run

    ctx = Context(open_run(w.run("float16"), checkpoints=True), DEVICE)
    cfg, model = ctx.cfg, ctx.model
    ctx.swap(STEPS_TRAINED)
    probe = run_probe(ctx, Settings(probe="reference", num_probes=2))
    ids = probe.dataset()[:2]["input_ids"].to(DEVICE)
    loss = probe.loss_fn()(model, ids).mean()
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
    finite = bool(grads) and all(bool(torch.isfinite(g).all()) for g in grads)
    norm = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads))) if grads else 0.0
    grad_dtype = str(grads[0].dtype).removeprefix("torch.") if grads else "-"
    result("f.lora_grads", len(grads), finite=finite, nonzero=norm > 0, norm=norm, loss=float(loss),
           model_dtype=cfg.model.dtype, grad_dtype=grad_dtype)  # fmt: skip
    if not (math.isfinite(value) and value != 0 and finite and norm > 0):
        raise StepFailed("the LLC or the LoRA gradients are not finite and non-zero")


def step_gguf(w: Work) -> None:
    """g. GGUF export offline: one error line saying what llama.cpp lacks, or the GGUF files in --out."""
    out = w.root / "gguf"
    proc = call(_export(w))
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    if proc.returncode == 2 and len(errors) == 1 and "--gguf offline" in errors[0] and "Traceback" not in proc.stderr:
        result("g.offline", "refused", error=errors[0])
        return
    _check(proc, "export.py --gguf")
    files = sorted(p.name for p in out.glob("*.gguf")) if out.is_dir() else []
    result("g.offline", "exported", files=",".join(files) or "-", stray_sibling=Path(f"{out}_gguf").exists())
    if not files or Path(f"{out}_gguf").exists():
        raise StepFailed("the export did not leave its .gguf files in --out alone")


def step_overhead(w: Work) -> None:
    """h. Our trainer's s/step against Unsloth's own GRPOTrainer (trl.GRPOTrainer under Unsloth), same settings."""
    proc = call(_overhead(w))
    _check(proc, "trainer_overhead.py")
    record = json.loads((w.root / "overhead.json").read_text())
    for variant, seconds in record["seconds_per_step"].items():
        result(f"h.{_slug(variant)}.s_per_step", seconds[-1], rounds=",".join(f"{s:.3f}" for s in seconds))
    warm = {v: s[-1] for v, s in record["seconds_per_step"].items()}  # the last round: both compiled and warm
    result("h.ratio_ours_off_over_plain", warm["ours-off"] / warm["plain"], note="gradient_accumulation_steps 1, last round")


STEPS = [
    Step("a", 60, "random-weights model of Qwen2.5-1.5B's shape, 151,936-row vocabulary, embedded tokenizer", (), _model,
         step_model),
    Step("b_bf16", 150, "countdown, 2 steps, bfloat16: memory per phase vs estimate, s/step, KL at step 1, GRPO config",
         ("a",), lambda w: [w.train("bfloat16")], lambda w: _train_and_report(w, "bfloat16", "b_bf16")),
    Step("b_fp16", 110, "countdown, 2 steps, float16 (the T4 recipe): the same figures", ("a",),
         lambda w: [w.train("float16")], lambda w: _train_and_report(w, "float16", "b_fp16")),
    Step("c", 45, "Unsloth's packed/fused reference log-probs vs a direct forward of each row", ("a",), lambda w: [],
         step_scoring, "open_session(countdown), ResearchGRPOTrainer._reference_logps on 4 left-padded rows vs "
         "model(row) unpadded, row by row"),
    Step("d", 70, "the float16 run resumed on a bf16 card: model.dtype=bfloat16 is one error line naming model.dtype; "
         "auto is pinned to float16 and trains a step", ("b_fp16",), lambda w: [_resume(w), _resume_auto(w)], step_resume),
    Step("e", 50, "evaluate.py and infer.py reproduce the bf16 run's training-time evaluation", ("b_bf16",),
         lambda w: [_evaluate(w), _infer(w)], step_after_training),
    Step("f", 50, "analysis/llc.py on the float16 4-bit run; finite, non-zero LoRA gradients", ("b_fp16",),
         lambda w: [_llc(w)], step_llc),
    Step("g", 20, "GGUF export offline: the one-line refusal, or the files in --out", ("b_bf16",), lambda w: [_export(w)],
         step_gguf),
    Step("h", 45, "s/step: ResearchGRPOTrainer vs Unsloth's own GRPOTrainer (trainer_overhead.py)", ("a",),
         lambda w: [_overhead(w)], step_overhead),
]  # fmt: skip
BY_KEY = {s.key: s for s in STEPS}


# ------------------------------------------------------------------ the parent: plan, steps under time limits


def plan_text(steps: Iterable[Step], w: Work) -> str:
    steps = list(steps)
    lines = [f"gpu_acceptance: {len(steps)} steps, {sum(s.limit for s in steps)} s of time limits in all (budget "
             f"{BUDGET_S} s); work folder {w.root}; each step runs as `{shlex.join(child_argv(steps[0], w)[:2])} --child STEP "
             f"--work {w.root}`, killed at its limit:"]  # fmt: skip
    for s in steps:
        needs = f"; needs {', '.join(s.needs)}" if s.needs else ""
        lines.append(f"{s.key:7s} limit {s.limit:4d} s  {s.title}{needs}")
        lines += [f"          $ {shlex.join(c)}" for c in s.commands(w)]
        if s.inline:
            lines.append(f"          in its own process: {s.inline}")
    return "\n".join(lines)


@dataclass
class Outcome:
    lines: list[str] = field(default_factory=list)  # everything the step printed
    returncode: int | None = None
    timed_out: bool = False
    seconds: float = 0.0


def run_limited(argv: list[str], limit: float, *, on_line: Callable[[str], None] = lambda line: None,
                env: dict[str, str] | None = None) -> Outcome:  # fmt: skip
    """Run `argv` in a process group of its own; past `limit` seconds the whole group is killed. Lines are
    handed to `on_line` as they come."""
    out = Outcome()
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        left = limit - (time.monotonic() - start)
        try:
            line = lines.get(timeout=max(left, 0.01))
        except queue.Empty:
            line = ""
        if line is None:
            break
        if line:
            out.lines.append(line)
            on_line(line)
        if time.monotonic() - start > limit:
            out.timed_out = True
            _kill_group(proc)
            break
    try:
        out.returncode = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out.returncode = proc.wait()
    out.seconds = time.monotonic() - start
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Report:
    """RESULT lines to stdout and the results file; everything to the log beside it."""

    def __init__(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        self.results = out.open("a")
        self.log = out.with_suffix(".log").open("a")
        self.path = out

    def result(self, line: str) -> None:
        print(line, flush=True)
        self.results.write(line + "\n")
        self.results.flush()

    def note(self, line: str) -> None:
        self.log.write(line + "\n")
        self.log.flush()

    def close(self) -> None:
        self.results.close()
        self.log.close()


def child_argv(step: Step, w: Work) -> list[str]:
    """The process that runs one step: this script with --child."""
    return [w.python, str(Path(__file__).resolve()), "--child", step.key, "--work", str(w.root)]


def run_steps(
    steps: list[Step], w: Work, report: Report, limits: dict[str, int],
    argv_for: Callable[[Step, Work], list[str]] = child_argv,
) -> dict[str, str]:  # fmt: skip
    """Each step in its own process under its time limit; returns each step's status (ok, failed, skipped)."""
    status: dict[str, str] = {}
    for s in steps:
        limit = limits.get(s.key, s.limit)
        failed = [n for n in s.needs if n in status and status[n] != "ok"]  # a need not run here: its files may exist
        if failed:
            status[s.key] = "skipped"
            report.result(f"RESULT {s.key}=skipped reason=needs step {', '.join(failed)}, which did not succeed")
            continue
        print(f"## {s.key} (limit {limit} s): {s.title}", flush=True)
        report.note(f"\n## {s.key} (limit {limit} s): {s.title}")
        seen: list[str] = []

        def on_line(line: str, seen: list[str] = seen, key: str = s.key) -> None:
            report.note(line)
            if line.startswith("RESULT "):
                report.result(line)
                seen.append(line)

        outcome = run_limited(argv_for(s, w), limit, on_line=on_line, env=OFFLINE_ENV)
        final = [ln for ln in seen if ln.startswith(f"RESULT {s.key}=")]
        if outcome.timed_out:
            status[s.key] = "failed"
            report.result(f"RESULT {s.key}=failed reason=timeout after {limit} s (killed)")
        elif final:
            status[s.key] = final[-1].split("=", 1)[1].split()[0]
        else:
            status[s.key] = "failed"
            tail = outcome.lines[-1][:300] if outcome.lines else "no output"
            report.result(f"RESULT {s.key}=failed reason=exit {outcome.returncode}: {' '.join(tail.split())}")
        report.result(f"RESULT {s.key}.seconds={outcome.seconds:.1f}")
    return status


def child(key: str, w: Work) -> int:
    """One step's body; its outcome is the last RESULT line, `<key>=ok|failed`."""
    try:
        BY_KEY[key].body(w)
    except StepFailed as exc:
        result(key, "failed", reason=str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - any crash is this step's failure, with its traceback in the log
        import traceback

        traceback.print_exc()
        result(key, "failed", reason=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
        return 1
    result(key, "ok")
    return 0


def _limits(ap: argparse.ArgumentParser, items: list[str]) -> dict[str, int]:
    limits = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in BY_KEY or not value.isdigit():
            ap.error(f"--limit {item}: expected STEP=SECONDS with STEP one of {', '.join(BY_KEY)}")
        limits[key] = int(value)
    return limits


def _environment_lines(w: Work) -> list[str]:
    import torch

    lines = [f"RESULT device={torch.cuda.get_device_name(0)}", f"RESULT torch={torch.__version__}",
             f"RESULT work={w.root}"]  # fmt: skip
    from importlib.metadata import PackageNotFoundError, version

    for name in ("unsloth", "unsloth_zoo", "trl", "transformers"):
        try:
            lines.append(f"RESULT {name}={version(name)}")
        except PackageNotFoundError:
            lines.append(f"RESULT {name}=not installed")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    lines.append(f"RESULT git_commit={commit.stdout.strip() or '-'}" + (" dirty=yes" if dirty.stdout.strip() else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", action="store_true", help="print the steps, their time limits and commands; run nothing")
    ap.add_argument("--only", help=f"comma-separated steps to run (of {', '.join(BY_KEY)}); default all")
    ap.add_argument("--limit", action="append", default=[], metavar="STEP=SECONDS", help="another time limit for a step")
    ap.add_argument("--work", type=Path, help="folder for the model and runs (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (3 GB model, runs) at the end")
    ap.add_argument("--out", type=Path, help="results file (default bench/results/gpu_acceptance-<UTC time>.txt)")
    ap.add_argument("--child", metavar="STEP", choices=list(BY_KEY), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        if args.work is None:
            ap.error("--child needs --work")
        return child(args.child, Work(args.work.resolve()))

    from training_with_unsloth.cli import run_main
    from training_with_unsloth.errors import UserError

    steps = STEPS
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = [k for k in keys if k not in BY_KEY]
        if unknown:
            ap.error(f"--only {', '.join(unknown)}: the steps are {', '.join(BY_KEY)}")
        steps = [s for s in STEPS if s.key in keys]
    limits = _limits(ap, args.limit)
    if args.plan:
        print(plan_text([replace(s, limit=limits.get(s.key, s.limit)) for s in steps], Work(args.work or Path("$WORK"))))
        return 0

    def body() -> int:
        import shutil
        import tempfile

        from training_with_unsloth.models import backends

        if not backends.cuda_available():
            raise UserError("no CUDA GPU here: bench/gpu_acceptance.py runs on a GPU machine (--plan shows its steps)")
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        out = args.out or REPO / "bench" / "results" / f"gpu_acceptance-{stamp}.txt"
        root = (args.work or Path(tempfile.mkdtemp(prefix="gpu-acceptance-"))).resolve()
        root.mkdir(parents=True, exist_ok=True)
        w = Work(root)
        report = Report(out)
        started = time.monotonic()
        try:
            report.result(f"RESULT date={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
            for line in _environment_lines(w):
                report.result(line)
            status = run_steps(steps, w, report, limits)
            report.result(f"RESULT total_s={time.monotonic() - started:.1f}")
            report.result("RESULT summary=" + ",".join(f"{k}:{v}" for k, v in status.items()))
        finally:
            report.close()
            if not args.keep and args.work is None:
                shutil.rmtree(root, ignore_errors=True)
        print(f"results: {out} (full output: {out.with_suffix('.log')})")
        return 0 if all(v == "ok" for v in status.values()) else 1

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
