"""apache-tvm-ffi is pinned: 0.1.15.post2 segfaults in save_json on anything holding a dtype,
which breaks MetaSchedule's JSON database. This fails if an install drifts to a broken release."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

SCRIPT = """
import tvm
from tvm import relax
ty = relax.TensorType((1, 3, 224, 224), "float32")
text = tvm.ir.save_json(ty)
tvm.ir.assert_structural_equal(tvm.ir.load_json(text), ty)
var = tvm.tirx.Var("n", "int64")
assert '"int64"' in tvm.ir.save_json(var)
print("ok")
"""


def test_save_json_round_trips_dtypes_in_a_fresh_process() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode} (-11 is the segfault): {done.stderr[-2000:]}"
    assert done.stdout.strip() == "ok"


def test_installed_tvm_ffi_is_the_pinned_release() -> None:
    assert importlib.metadata.version("apache-tvm-ffi") == "0.1.14.post1"
