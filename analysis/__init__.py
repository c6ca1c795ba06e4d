"""Analysis of finished runs: LLCs over adapter checkpoints, phase-transition detection, figures."""
