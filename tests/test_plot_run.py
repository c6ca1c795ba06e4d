"""analysis/plot_run.py: the run figures are written at 200 dpi with the expected panels."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from analysis.plot_run import LLC_TITLE, PASSK_TITLE, REWARD_TITLE, build_combined_figure, panel_titles, plot_run

REPO = Path(__file__).resolve().parent.parent


def png_dpi(path: Path) -> float:
    """Dots per inch from a PNG's pHYs chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"pHYs":
            x, _, unit = struct.unpack(">IIB", data[pos + 8 : pos + 17])
            assert unit == 1  # metres
            return x * 0.0254
        pos += 12 + length
    raise AssertionError(f"{path} has no pHYs chunk")


def make_run(root: Path, *, llc: bool = True, conditions: bool = True) -> Path:
    rng = np.random.default_rng(0)
    (root / "eval").mkdir(parents=True)
    lines = []
    for s in range(1, 81):
        acc = 0.1 + 0.6 / (1 + np.exp(-(s - 40) / 5))
        lines.append(
            {
                "step": s,
                "kind": "train",
                "reward": 2 * acc + 0.1 * rng.standard_normal(),
                "rewards/correct/mean": acc + 0.05 * rng.standard_normal(),
                "rewards/format/mean": acc + 0.05 * rng.standard_normal(),
                "entropy": 1.0,
            }
        )
        if s % 10 == 0:
            lines.append(
                {"step": s, "kind": "eval", "eval/pass@1": acc, "eval/pass@4": min(1.0, 1.4 * acc), "eval/greedy_pass@1": acc}
            )
            with (root / "eval" / f"passk-{s}.jsonl").open("w") as f:
                for p in range(6):
                    rec = {
                        "step": s,
                        "problem_id": str(p),
                        "correct": [bool(v) for v in rng.random(4) < acc],
                        "greedy_correct": bool(rng.random() < acc),
                    }
                    if conditions:
                        rec["condition"] = f"{2 + p % 3} terms"
                    f.write(json.dumps(rec) + "\n")
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if llc:
        (root / "analysis").mkdir()
        rows = ["step,llc_mean,llc_std,llc_chain_0,llc_chain_1,init_loss,healthy,notes"]
        for k, s in enumerate(range(4, 81, 4)):
            m = 50 + (8 if s >= 40 else 0) + 0.3 * rng.standard_normal()
            rows.append(f"{s},{m:.3f},0.5,{m - 0.2:.3f},{m + 0.2:.3f},1.0,{k != 3},{'' if k != 3 else 'diverged'}")
        (root / "analysis" / "llc.csv").write_text("\n".join(rows) + "\n")
    return root


def test_plot_run_with_llc_and_conditions(tmp_path):
    run = make_run(tmp_path / "run")
    written = plot_run(run)
    names = sorted(p.name for p in written)
    assert names == ["accuracy_grid.png", "combined.png", "rewards.png"]
    for p in written:
        assert p.parent == run / "analysis" and p.is_file()
        assert round(png_dpi(p)) == 200
    assert not list((run / "analysis").glob(".*"))  # no temporary files left behind
    fig = build_combined_figure(run)
    assert panel_titles(fig) == [LLC_TITLE, REWARD_TITLE, PASSK_TITLE]
    # the planted LLC jump (between steps 36 and 40) is detected and shaded
    assert all(ax.patches for ax in fig.axes if ax.get_title(loc="left"))  # windows shaded on every panel
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "unhealthy estimate" in legend and "window: llc_mean" in legend
    from analysis.plot_run import load_run

    windows = [w for w in load_run(run).windows if w.column == "llc_mean"]
    assert any(w.start <= 36 and w.end >= 40 for w in windows), windows


def test_plot_run_without_llc_or_conditions(tmp_path):
    run = make_run(tmp_path / "run", llc=False, conditions=False)
    written = plot_run(run)
    assert sorted(p.name for p in written) == ["combined.png", "rewards.png"]
    assert not (run / "analysis" / "accuracy_grid.png").exists()
    assert panel_titles(build_combined_figure(run)) == [REWARD_TITLE, PASSK_TITLE]


def test_windows_read_from_phases_json(tmp_path):
    run = make_run(tmp_path / "run", conditions=False)
    (run / "analysis" / "phases.json").write_text(json.dumps({"windows": [{"start": 11, "end": 17, "column": "x", "score": 9}]}))
    from analysis.plot_run import load_run

    assert [(w.start, w.end) for w in load_run(run).windows] == [(11, 17)]


def test_cli(tmp_path):
    run = make_run(tmp_path / "run", conditions=False)
    out = subprocess.run(
        [sys.executable, str(REPO / "analysis" / "plot_run.py"), "--run", str(run)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert [Path(x).name for x in out.stdout.split()] == ["combined.png", "rewards.png"]
    bad = subprocess.run(
        [sys.executable, str(REPO / "analysis" / "plot_run.py"), "--run", str(tmp_path / "nope")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
