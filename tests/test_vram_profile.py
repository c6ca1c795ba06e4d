"""bench/vram_profile.py's bookkeeping: exclusive memory windows over a fake probe, the table and the verdict."""

from __future__ import annotations

import importlib.util
import mmap
import sys

from tests.helpers import REPO

GIB = 1024**3


def _module():
    name = "bench_vram_profile"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "vram_profile.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


class FakeProbe:
    """Memory in use and its peak since the last reset, moved by hand."""

    def __init__(self, level: int) -> None:
        self.level = self.top = level

    def alloc(self, n: int) -> None:
        self.level += n
        self.top = max(self.top, self.level)

    def free(self, n: int) -> None:
        self.level -= n

    def now(self) -> int:
        return self.level

    def peak(self) -> int:
        return self.top

    def reset_peak(self) -> None:
        self.top = self.level


def test_windows_are_exclusive_and_the_overall_peak_sees_everything():
    vp = _module()
    probe = FakeProbe(100)
    meter = vp.Meter(probe)
    meter.mark("start")
    probe.alloc(50)
    meter.mark("loaded")
    grads = [0]
    with meter.window("loss", less=lambda: grads[0]):
        probe.alloc(30)
        probe.free(30)  # the loss window's own peak so far: 180
        with meter.window("scoring"):
            probe.alloc(400)
            probe.free(400)
            with meter.window("generation"):
                probe.alloc(200)
                probe.free(200)
            probe.alloc(10)  # the scored batch stays
        probe.alloc(100)  # activations
        probe.alloc(5)  # gradients, counted by their own row
        grads[0] = 5
        probe.free(100)
    with meter.window("generation"):
        probe.alloc(70)
        probe.free(70)
    assert meter.delta("loaded", "start") == 50
    assert meter.delta("loaded", "never") is None
    assert meter.window_value("scoring") == 400  # its child's 200 is the child's
    assert meter.windows["generation"].values == [200, 70]
    assert meter.window_value("generation") == 200
    assert meter.window_value("loss") == 265 - 150 - 5  # not the 550 inside its children
    assert meter.window_value("never") is None
    assert meter.overall == 550


def test_a_mark_keeps_the_peak_before_it():
    vp = _module()
    probe = FakeProbe(0)
    meter = vp.Meter(probe)
    probe.alloc(300)
    probe.free(300)
    assert meter.mark("after") == 0
    assert meter.overall == 300


def test_the_table_shows_estimate_measurement_ratio_and_gaps():
    vp = _module()
    rows = [
        vp.Row("base weights", 2 * GIB, 3 * GIB, 2 * GIB, "after load - before"),
        vp.Row("activations", GIB, None, None, "(with the logits)"),
        vp.Row("scoring", None, GIB / 2),
    ]
    text = vp.format_table(rows, "CPU RSS")
    caption, head, rule, base, act, scoring = text.splitlines()
    assert "ratio = CPU RSS / estimate" in caption
    assert head.split() == ["part", "estimate", "CPU", "RSS", "ratio", "tensors", "measured", "as"]
    assert len(rule) == len(head)
    assert base.split()[2:] == ["2.000", "3.000", "1.50", "2.000", "after", "load", "-", "before"]
    assert act.split()[1:5] == ["1.000", "-", "-", "-"]
    assert scoring.split() == ["scoring", "-", "0.500", "-", "-"]
    assert head.index("ratio") + len("ratio") == base.index("1.50") + len("1.50")  # right-aligned columns


def test_the_verdict_is_memory_py_s():
    vp = _module()
    assert "fits a 16 GB card" in vp.verdict(4 * GIB)
    assert "does not fit a 16 GB card" in vp.verdict(15 * GIB)


def test_the_rss_probe_sees_a_block_come_and_go():
    vp = _module()
    probe = vp.RssProbe()
    try:
        probe.reset_peak()
        before = probe.now()
        # fresh anonymous pages, written so resident (a malloc'd block could reuse pages this process already holds)
        block = mmap.mmap(-1, 64 * 1024 * 1024)
        block.write(b"\x01" * len(block))
        assert probe.peak() - before >= 48 * 1024 * 1024
        block.close()
        probe.reset_peak()
        assert probe.peak() - before < 32 * 1024 * 1024
    finally:
        probe.close()


def test_a_window_is_named_at_each_call():
    """Training's and Pass@K's generation run through the same method; the window a call lands in is named when it runs."""
    vp = _module()
    probe = FakeProbe(0)
    meter = vp.Meter(probe)
    passk = [False]

    class Trainer:
        def _generate_single_turn(self, n: int) -> int:
            probe.alloc(n)
            probe.free(n)
            return n

    trainer = Trainer()
    vp._wrap(trainer, "_generate_single_turn", meter, lambda: "passk" if passk[0] else "generation")
    assert trainer._generate_single_turn(10) == 10
    passk[0] = True
    trainer._generate_single_turn(30)
    assert meter.windows["generation"].values == [10]
    assert meter.windows["passk"].values == [30]


def test_each_part_is_measured_beside_its_estimate():
    vp = _module()
    probe = FakeProbe(0)
    prof = vp.Profiler(probe)
    meter = prof.meter
    meter.mark("start")
    probe.alloc(2 * GIB)
    meter.mark("base")
    probe.alloc(GIB // 4)
    meter.mark("built")
    with meter.window("passk"):
        probe.alloc(GIB)
        probe.free(GIB)
    with meter.window("scoring"):
        probe.alloc(GIB // 2)
        probe.free(GIB // 2)
    names = ("base weights", "LoRA weights", "gradients", "optimizer", "activations", "logits", "KV cache", "Pass@K cache",
             "scoring")  # fmt: skip
    rows = {r.name: r for r in prof.rows(dict.fromkeys(names, GIB), "transformers")}
    assert rows["base weights"].measured == 2 * GIB and rows["LoRA weights"].measured == GIB // 4
    assert rows["Pass@K cache"].measured == GIB and rows["Pass@K cache"].estimate == GIB
    assert rows["scoring"].measured == GIB // 2 and rows["KV cache"].measured is None  # no training generation here
    assert rows["act. + logits"].estimate == 2 * GIB
    probe_label = "CUDA allocated"
    profile = vp.Profile(["header"], list(rows.values()), probe_label, True, 3 * GIB, 4 * GIB, 5 * GIB,
                         {"Pass@K generation": [GIB]}, ["step_end"], {"backend": "transformers"})  # fmt: skip
    data = profile.to_json()
    assert data["measured_as"] == probe_label and data["backend"] == "transformers"
    assert {"part": "Pass@K cache", "estimate_gib": 1.0, "measured_gib": 1.0, "tensors_gib": None,
            "measured_as": "peak in Pass@K's _generate_single_turn"} in data["rows"]  # fmt: skip
    assert (data["estimate_peak_gib"], data["measured_peak_gib"], data["reserved_peak_gib"]) == (3.0, 4.0, 5.0)
    text = profile.text()
    assert "estimate: 3.00 GiB" in text and "reserved peak 5.00 GiB" in text and "Pass@K generation 1.000" in text
    assert "not measured (the hook never ran): step_end" in text
