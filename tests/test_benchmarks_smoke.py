"""The restart/catch-up benchmark runs end to end on a tiny state and writes its results."""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_restart_catchup_benchmark_smoke(tmp_path):
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "benchmarks/restart_catchup.py", "--sizes", "500", "--concurrency", "16",
         "--timeout", "60", "--out-dir", str(out), "--work-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| keys |" in result.stdout.replace("|  keys |", "| keys |")
    doc = json.loads((out / "restart_catchup.json").read_text())
    (row,) = doc["results"]
    assert row["keys"] == 500
    assert 0 < row["restart"]["serving_s"] <= row["restart"]["seconds"] < 60
    assert 0 < row["catchup"]["seconds"] < 60 and row["catchup"]["via"] in ("log", "snapshot")
    assert row["restart"]["snapshot_slot"] > 0
    svg = ET.parse(out / "restart_catchup.svg").getroot()
    assert svg.tag.endswith("svg") and svg.findall(".//{http://www.w3.org/2000/svg}polyline")
