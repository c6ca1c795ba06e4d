"""`ResearchGRPOTrainer`: TRL's GRPOTrainer plus generation for evaluation; research hooks are callbacks.

Import this module only after `backends.prepare()`: under Unsloth, `trl.GRPOTrainer` is rebound to
`UnslothGRPOTrainer` by `import unsloth`, and a subclass defined afterwards inherits it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import GenerationConfig, ProgressCallback, TrainerCallback
from trl import GRPOTrainer


class ResearchGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with `generate_completions` (used by Pass@K) and research callbacks bound to it.

    The training step is TRL's (or Unsloth's) own: nothing here runs per step unless a callback does.
    """

    def __init__(self, *args, research_callbacks: Sequence[TrainerCallback] = (), **kwargs):
        super().__init__(*args, **kwargs)
        if any(isinstance(cb, ProgressCallback) for cb in research_callbacks):
            self.remove_callback(ProgressCallback)  # replaced by the research one
        for callback in research_callbacks:
            if hasattr(callback, "bind"):
                callback.bind(self)
            self.add_callback(callback)

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
    ) -> tuple[list[list[str]], list[list[list[int]]]]:
        """`num_samples` completions per prompt through the trainer's own generation path.

        Returns the decoded texts and their token ids, grouped per prompt.
        """
        prompt_ids, _, _ = self._tokenize_prompts(prompts)
        flat = [ids for ids in prompt_ids for _ in range(num_samples)]
        completion_ids: list[list[int]] = []
        with self._inference_mode(), self._generation_settings(
            greedy=greedy, temperature=temperature, max_new_tokens=max_new_tokens
        ):
            for start in range(0, len(flat), batch_size):
                chunk = flat[start : start + batch_size]
                ids, _ = self._generate_single_turn(chunk, None, {}, len(chunk))
                completion_ids.extend(list(map(int, c)) for c in ids)
        texts = self._tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        group = lambda xs: [xs[i : i + num_samples] for i in range(0, len(xs), num_samples)]  # noqa: E731
        return group(texts), group(completion_ids)
