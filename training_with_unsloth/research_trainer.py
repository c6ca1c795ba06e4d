"""`ResearchGRPOTrainer`: TRL's GRPOTrainer plus generation for evaluation; research hooks are callbacks.

Import this module only after `backends.prepare()`: under Unsloth, `trl.GRPOTrainer` is rebound to
`UnslothGRPOTrainer` by `import unsloth`, and a subclass defined afterwards inherits it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, ProgressCallback, TrainerCallback
from trl import GRPOTrainer

from training_with_unsloth.controls import ResearchCallback, check_protocol
from training_with_unsloth.controls import kl as kl_math
from training_with_unsloth.controls.scored_batch import ScoredBatch
from training_with_unsloth.resume import RESEARCH_STATE_FILE  # in each trainer/checkpoint-<step>/, written before TRL's state
from training_with_unsloth.rundir import atomic_write_json
from training_with_unsloth.timing import PhaseTimer


class ResearchGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with `generate_completions` (used by Pass@K) and research callbacks bound to it.

    The training step is TRL's (or Unsloth's) own. Around it: KL diagnostics and the optional KL term
    (`kl.py`), a `ScoredBatch` for hooks after each batch is scored (curricula, replay, completion
    logs), and research state saved in every trainer checkpoint and restored on resume.
    """

    def __init__(
        self,
        *args,
        research_callbacks: Sequence[TrainerCallback] = (),
        kl: kl_math.KLSettings | None = None,
        fast_generation: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.fast_generation = fast_generation  # generation.py: same completions, fewer and faster products
        self.kl = kl or kl_math.KLSettings()
        if self.kl.in_loss and self.beta != 0.0:
            raise ValueError("the toolkit's KL term and trainer.beta cannot both be on")
        self.batch_hooks: list[Callable[[ScoredBatch], None]] = []
        self.stateful: dict[str, ResearchCallback] = {}  # state_key -> control, its state saved per checkpoint
        self._last_rewards: torch.Tensor | None = None
        self._captured_logps: list[torch.Tensor] | None = None
        self._kl_at_loss = False  # this generation batch's KL is measured in TRL's loss forward
        if any(isinstance(cb, ProgressCallback) for cb in research_callbacks):
            self.remove_callback(ProgressCallback)  # replaced by the research one
        self.args_rewritten: dict[str, tuple[Any, Any]] = {}  # unset keys the constructor changed (assembly records them)
        self.timer = PhaseTimer()  # wall time per phase (timing.py); callbacks time their own phases
        for callback in research_callbacks:  # in the order assembly.research_callbacks declares
            check_protocol(callback)
            if isinstance(callback, ResearchCallback):
                callback.bind(self)
                if callback.wants_batches:
                    self.batch_hooks.append(callback.on_scored_batch)
                if callback.state_key:
                    if callback.state_key in self.stateful:
                        raise ValueError(f"two research callbacks keep state under '{callback.state_key}'")
                    self.stateful[callback.state_key] = callback
            self.add_callback(callback)

    # ------------------------------------------------------------------ research state across resumes

    def _save_checkpoint(self, model, trial):
        """Research state (and the files of stateful callbacks, e.g. a copy of checkpoints/best) first, then TRL's.

        transformers writes `trainer_state.json` last, and that file marks a checkpoint complete: a run killed
        in between leaves an incomplete checkpoint, never a complete one without its research state.
        """
        with self.timer.phase("checkpoint"):
            self._save_research_and_trl_checkpoint(model, trial)

    def _save_research_and_trl_checkpoint(self, model, trial):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        if self.args.should_save:
            # the folder transformers' _save_checkpoint writes into (directly: it uses no staging folder)
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(folder / RESEARCH_STATE_FILE, {name: obj.state_dict() for name, obj in self.stateful.items()})
            for obj in self.stateful.values():
                obj.save_to_checkpoint(folder)
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """TRL's train, with the research state restored first (refused, in one line, where a checkpoint lacks it)."""
        from transformers.trainer_utils import get_last_checkpoint

        from training_with_unsloth.resume import check_research_state

        if resume_from_checkpoint is True:  # as transformers resolves it, so the research state comes from there too
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True
        if isinstance(resume_from_checkpoint, str):
            check_research_state(resume_from_checkpoint, self.stateful)
            path = Path(resume_from_checkpoint) / RESEARCH_STATE_FILE
            saved = json.loads(path.read_text()) if path.is_file() else {}
            for name, obj in self.stateful.items():
                if name in saved:
                    obj.load_state_dict(saved[name])
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # ------------------------------------------------------------------ scored batches, KL diagnostics and KL loss

    def training_step(self, *args, **kwargs):
        with self.timer.phase("loss"):  # generation, rewards and KL inside it are split off as their own phases
            return super().training_step(*args, **kwargs)

    def _generate_single_turn(self, *args, **kwargs):
        with self.timer.phase("generation"), self._fast_generate():
            return super()._generate_single_turn(*args, **kwargs)

    def _generation_models(self) -> list[Any]:
        """The models whose `generate` TRL's generation path calls (the unwrapped one, and the trainer's own)."""
        return [self.model, self.accelerator.unwrap_model(self.model_wrapped)]

    @contextmanager
    def _fast_generate(self) -> Iterator[None]:
        """TRL's `generate` calls through `generation.fast_generate` while active (`model.fast_generation`)."""
        if not self.fast_generation or self.use_vllm or getattr(self, "use_transformers_continuous_batching", False):
            yield
            return
        from training_with_unsloth.generation import fast_generate, patched_generate

        with patched_generate(self._generation_models(), fast_generate):
            yield

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        with self.timer.phase("rewards"):
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = rewards
        return rewards

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return output
        self._kl_at_loss = False
        ref = self._stored_logps(output, "ref_per_token_logps") if self.kl.measures or self.kl.in_loss else None
        # TRL's own reference log-probs (beta != 0) cost nothing extra; a pass of our own runs only when due
        if (self.kl.measures or self.kl.in_loss) and (ref is not None or self.kl.due(self.state.global_step + 1)):
            if ref is None:
                ref = self._reference_logps(output)
                if output.get("ref_per_token_logps") is None and self._loss_is_trls():
                    # for TRL's loss forward (measurement, KL term); split and shuffled with the batch. TRL itself
                    # reads it only when beta != 0, and then computed its own. Unsloth's own value is never replaced.
                    output["ref_per_token_logps"] = ref
            if self.kl.measures:
                policy = self._stored_logps(output, "old_per_token_logps")
                if policy is None and self._loss_is_trls():
                    # TRL's loss forward computes these very log-probs (same weights: no update happens between
                    # generation and the step's micro-batches without old_per_token_logps): measure there, for free.
                    self._kl_at_loss = True
                else:
                    if policy is None:
                        policy = self._policy_logps(output)
                    mask = output["completion_mask"] * output.get("tool_mask", 1)
                    self.kl.add(*kl_math.token_sums(policy, ref, mask))
        if self.batch_hooks:
            batch = self._scored_batch(inputs, output)
            for hook in self.batch_hooks:
                hook(batch)
        return output

    def _stored_logps(self, output: dict[str, Any], key: str) -> torch.Tensor | None:
        """TRL's or Unsloth's per-token log-probs of the batch, one column per completion token (None when absent)."""
        value = output.get(key)
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            return None
        return self._per_completion_token(value, output)

    def _per_completion_token(self, logps: torch.Tensor, output: dict[str, Any]) -> torch.Tensor:
        """Log-probs laid out like `completion_ids` (row i, column j: completion token j of row i).

        TRL's scorer returns exactly that. Unsloth's moves each row's left padding to the right before its
        forward and scores the last `completion length + max left padding` positions, so row i's completion
        starts `max_left_pad - left_pad_i` columns in (`unsloth_zoo.rl_replacements.create_completion_attention_mask`).
        """
        completion_ids = output["completion_ids"]
        length = completion_ids.size(1)
        extra = logps.size(1) - length
        if extra == 0:
            return logps
        pad_id = self.processing_class.pad_token_id if hasattr(self.processing_class, "pad_token_id") else None
        if extra < 0 or pad_id is None:
            raise RuntimeError(f"per-token log-probs of width {logps.size(1)} for completions of {length} tokens")
        left_pad = (output["prompt_ids"] == pad_id).sum(-1)  # Unsloth's calculate_pad_tokens_in_prompt
        if int(left_pad.max()) != extra:
            raise RuntimeError(
                f"log-probs {extra} columns wider than the completions, but the prompts' left padding is {int(left_pad.max())}"
            )
        columns = (extra - left_pad)[:, None] + torch.arange(length, device=logps.device)[None, :]
        return logps.gather(1, columns.to(logps.device))

    def _scored_batch(self, inputs: list[dict[str, Any]], output: dict[str, Any]) -> ScoredBatch:
        n = len(inputs)
        start = self.accelerator.process_index * n
        rewards = self._last_rewards[start : start + n].detach().float().cpu() if self._last_rewards is not None else None
        names = [getattr(f, "__name__", str(f)) for f in self.reward_funcs]
        per = {
            name: [float(rewards[i, j]) for i in range(n)] if rewards is not None else [math.nan] * n
            for j, name in enumerate(names)
        }
        ids = output["completion_ids"]
        mask = output["completion_mask"]
        lengths = [int(x) for x in mask.sum(-1).tolist()]
        texts = (
            self.processing_class.batch_decode(
                [row[:length].tolist() for row, length in zip(ids, lengths, strict=True)], skip_special_tokens=True
            )
            if hasattr(self.processing_class, "batch_decode")
            else [""] * n
        )
        return ScoredBatch(
            step=self.state.global_step + 1,
            rows=list(inputs),
            completions=texts,
            rewards=per,
            weights=[float(w) for w in self.reward_weights.tolist()],
            advantages=[float(a) for a in output["advantages"].reshape(n, -1)[:, 0].tolist()],
            num_generations=self.num_generations,
            completion_lengths=lengths,
        )

    def _forward_inputs(self, output: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        return input_ids, attention_mask, output["completion_ids"].size(1)

    @torch.no_grad()
    def _trainer_logps(self, output: dict[str, Any]) -> torch.Tensor:
        """Per-token log-probs of the batch's completions through the trainer's own scorer.

        TRL's (or Unsloth's) `_get_per_token_logps_and_entropies`, which the loss also uses: logits divided by
        `args.temperature`, the model's softcapping and logit scaling applied, so policy and reference are
        scored exactly as training scores them.
        """
        input_ids, attention_mask, logits_to_keep = self._forward_inputs(output)
        batch_size = self.args.per_device_train_batch_size
        if self._loss_is_trls():
            from trl.models.utils import disable_gradient_checkpointing

            # as TRL does around its own no-grad scoring (Unsloth replaces this context with a no-op of its own)
            with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                logps = self._get_per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size
                )[0]
        else:
            logps = self._get_per_token_logps_and_entropies(
                self.model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size
            )[0]
        return self._per_completion_token(logps.detach(), output)

    def _policy_logps(self, output: dict[str, Any]) -> torch.Tensor:
        """Per-token log-probs of the completions under the current policy (the one that sampled them)."""
        with self.timer.phase("kl"):
            return self._trainer_logps(output)

    def _reference_logps(self, output: dict[str, Any]) -> torch.Tensor:
        """Per-token log-probs under the reference: the base model, the LoRA adapter switched off."""
        from trl.trainer.utils import use_adapter

        model = self.accelerator.unwrap_model(self.model)
        adapter = "ref" if "ref" in getattr(model, "peft_config", {}) else None
        with self.timer.phase("kl"), use_adapter(model, adapter_name=adapter):
            return self._trainer_logps(output)

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._captured_logps is not None:
            self._captured_logps.append(result[0])
        return result

    def _loss_is_trls(self) -> bool:
        """Whether TRL's `_compute_loss` runs (Unsloth replaces `compute_loss` and never calls it)."""
        return not any(cls.__name__.startswith("Unsloth") for cls in type(self).__mro__)

    def _compute_loss(self, model, inputs):
        measure = getattr(self, "_kl_at_loss", False) and model.training
        if not (self.kl.in_loss or measure) or not model.training:
            return super()._compute_loss(model, inputs)
        self._captured_logps = []
        try:
            loss = super()._compute_loss(model, inputs)
            per_token_logps = self._captured_logps[0]
        finally:
            self._captured_logps = None
        mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
        if measure:
            self.kl.add(*kl_math.token_sums(per_token_logps, inputs["ref_per_token_logps"], mask))
        if not self.kl.in_loss:
            return loss
        per_token_kl = kl_math.per_token(self.kl.estimator, per_token_logps, inputs["ref_per_token_logps"])
        self.kl.add_term(float((per_token_kl.detach() * mask).sum()), float(mask.sum()))  # logged as kl/loss_term
        if self.args.use_bias_correction_kl:  # TRL's default: weight the KL term by the importance ratio, as it does
            per_token_kl = per_token_kl * kl_math.importance_ratio(self, per_token_logps, inputs, mask)
        term = kl_math.aggregate_like_trl(self, per_token_kl, mask, inputs)
        return loss + self.kl.coef * term

    @contextmanager
    def _generation_settings(self, *, greedy: bool, temperature: float, max_new_tokens: int) -> Iterator[None]:
        """Temporarily swap the trainer's sampling settings (training uses `args.temperature`)."""
        old_config = self.generation_config
        old_kwargs = getattr(self, "generation_kwargs", None)
        kwargs = dict(old_kwargs or old_config.to_dict())
        kwargs["max_new_tokens"] = max_new_tokens
        if greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None, min_p=None)
        else:
            kwargs.update(do_sample=True, temperature=temperature)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("transformers_version", "_from_model_config")}
        self.generation_config = GenerationConfig(**{**kwargs, "disable_compile": True})
        if old_kwargs is not None:
            self.generation_kwargs = kwargs
        try:
            yield
        finally:
            self.generation_config = old_config
            if old_kwargs is not None:
                self.generation_kwargs = old_kwargs

    @contextmanager
    def _inference_mode(self) -> Iterator[None]:
        """Eval mode for generation, restored afterwards; Unsloth models switch with their own methods."""
        model = self.model
        was_training = model.training
        if hasattr(model, "for_inference"):
            model.for_inference()
        else:
            model.eval()
        try:
            yield
        finally:
            if was_training and hasattr(model, "for_training"):
                use_gc = getattr(model, "_unsloth_gradient_checkpointing", self.args.gradient_checkpointing)
                model.for_training(use_gradient_checkpointing=use_gc)
            else:
                model.train(was_training)

    @contextmanager
    def _streaming(self, streamer: Any, count: int) -> Iterator[None]:
        """Hand `streamer` to the `generate` call of TRL's generation path (the unwrapped model's), for one completion."""
        if streamer is None:
            yield
            return
        if count != 1:
            raise ValueError("streaming generates one completion: one prompt, num_samples 1")
        from training_with_unsloth.generation import patched_generate

        def wrap(_model, method):
            return lambda *a, **kw: method(*a, **{**kw, "streamer": streamer})

        with patched_generate(self._generation_models(), wrap):
            yield

    @torch.no_grad()
    def generate_completions(
        self,
        prompts: list,
        *,
        num_samples: int,
        greedy: bool,
        temperature: float,
        max_new_tokens: int,
        batch_size: int,
        on_batch: Callable[[int], None] | None = None,
        streamer: Any = None,
    ) -> tuple[list[list[str]], list[list[list[int]]]]:
        """`num_samples` completions per prompt through the trainer's own generation path.

        Returns the decoded texts and their token ids, grouped per prompt. `on_batch` is called with the
        number of completions of each generated batch (a progress bar); a transformers `streamer` receives
        the tokens as they are generated (one prompt, one sample).
        """
        prompt_ids, _, _ = self._tokenize_prompts(prompts)
        flat = [ids for ids in prompt_ids for _ in range(num_samples)]
        completion_ids: list[list[int]] = []
        with (
            self._inference_mode(),
            self._generation_settings(greedy=greedy, temperature=temperature, max_new_tokens=max_new_tokens),
            self._streaming(streamer, len(flat)),
        ):
            for start in range(0, len(flat), batch_size):
                chunk = flat[start : start + batch_size]
                ids, _ = self._generate_single_turn(chunk, None, {}, len(chunk))
                completion_ids.extend(list(map(int, c)) for c in ids)
                if on_batch is not None:
                    on_batch(len(chunk))
        texts = self._tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        group = lambda xs: [xs[i : i + num_samples] for i in range(0, len(xs), num_samples)]  # noqa: E731
        return group(texts), group(completion_ids)
