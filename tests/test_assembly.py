"""training_with_unsloth/assembly.py: an error TRL or Unsloth raises while the trainer is built reaches the user as one line."""

from __future__ import annotations

from .helpers import tiny_config


def test_an_error_raised_building_the_trainer_is_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Unsloth's trainer raises TypeError for a float16 model with bf16: it must reach the user as one line."""
    from experiments.run_experiment import main
    from training_with_unsloth import research_trainer

    def refuse(self, *args, **kwargs):
        raise TypeError("Unsloth: Model is in float16 precision but you want to use bfloat16 precision.\nmore")

    monkeypatch.setattr(research_trainer.ResearchGRPOTrainer, "__init__", refuse)
    config = tmp_path / "tiny.yaml"
    import yaml

    config.write_text(yaml.safe_dump(tiny_config(tmp_path, tiny_model_dir)))
    assert main([str(config)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error", "Traceback"))]
    assert err == ["error: trainer: Unsloth: Model is in float16 precision but you want to use bfloat16 precision."]
    assert not (tmp_path / "runs" / "tiny").exists()
