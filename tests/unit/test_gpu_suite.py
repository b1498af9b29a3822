"""``benchmarks/gpu_suite.py --device cpu --quick``: every section runs and reports numeric ratios.

A smoke test of the script a GPU machine runs (about 25 s on 2 CPU cores); no timing is asserted.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("epoch", "trainer", "attack_deepinversion", "attack_gmi", "serving")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_cpu_run_writes_every_section_with_numeric_ratios(tmp_path):
    out = tmp_path / "suite.json"
    # sys.executable is the interpreter of `uv run pytest`, i.e. what `uv run python` runs.
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--device", "cpu", "--quick", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["quick"] is True
    assert report["device_name"] and report["date"]
    sections = report["sections"]
    assert set(SECTIONS) <= set(sections), sorted(sections)
    for name in SECTIONS:
        assert "error" not in sections[name], f"{name}: {sections[name].get('error')}"
        assert _number(sections[name]["ratio"]) and sections[name]["ratio"] > 0, (name, sections[name]["ratio"])
    erasing = sections["epoch"]["erasing"]
    assert erasing["host_sync"] == "n/a" and _number(erasing["inplace_ms"])
    for name in ("attack_deepinversion", "attack_gmi"):
        assert sections[name]["peak_share"] == "unknown"  # no peak FLOP/s is known for a CPU
        assert _number(sections[name]["step_gflop"]) and sections[name]["step_gflop"] > 0
    serving = sections["serving"]
    for mode in ("batched", "unbatched"):
        assert _number(serving[mode]["predictions_per_s"]) and _number(serving[mode]["p99_ms"])
    # The printed table names the device and every section.
    for label in ("device: CPU", "epoch midre/nodef", "trainer/bare loop", "attack_gmi", "serving batched"):
        assert label in proc.stdout, label


def test_peak_table_matches_the_most_specific_card_name():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_suite
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    expected = {"NVIDIA H200": "H200", "NVIDIA H100 80GB HBM3": "H100", "NVIDIA H100 PCIe": "H100 PCIe",
                "NVIDIA A100-SXM4-80GB": "A100", "NVIDIA A10G": "A10", "NVIDIA L4": "L4", "NVIDIA L40S": "L40S",
                "NVIDIA L40": "L40", "Tesla T4": "T4", "NVIDIA GeForce RTX 4090": "unknown"}
    for name, card in expected.items():
        assert gpu_suite.peak_for_name(name)[0] == card, name
    assert gpu_suite.peak_for_name("NVIDIA H200")[1]["bf16"] > gpu_suite.peak_for_name("NVIDIA A100")[1]["bf16"]
