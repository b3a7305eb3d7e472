"""Safetensors files must be byte-stable across processes (DVC hashes and registry sha256 rely on it)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from safetensors import safe_open

from generatect_kedro.utils.safetensors_bytes import dumps_numpy

WRITE = """
import sys, numpy as np
from generatect_kedro.utils.safetensors_bytes import dumps_numpy
meta = {f"key{i}": str(i) for i in range(12)}
sys.stdout.buffer.write(dumps_numpy({"b": np.arange(6, dtype=np.float32), "a": np.ones((2, 3))}, meta))
"""


def test_same_bytes_in_separate_processes():
    outputs = {subprocess.run([sys.executable, "-c", WRITE], capture_output=True, check=True).stdout for _ in range(4)}
    assert len(outputs) == 1


def test_canonical_file_still_loads(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(dumps_numpy({"v": np.arange(5, dtype=np.int32)}, {"z": 1, "a": "two"}))
    with safe_open(str(path), framework="numpy") as handle:
        assert handle.metadata() == {"z": "1", "a": "two"}
        np.testing.assert_array_equal(handle.get_tensor("v"), np.arange(5))
