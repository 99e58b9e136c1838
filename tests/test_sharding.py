"""Several devices: ``Generator.batch`` and batched cloning split their batches over every
local device by a named sharding, with the single-device results. JAX fixes its device count
when it starts, so each check runs in fresh interpreters, one with four CPU devices forced
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = """
import json
import jax
import numpy as np
from jblase._devices import BATCH_AXIS
from jblase.generator import Generator
from tests.test_generator import AXES, _random_manifold

identity, values, wl = _random_manifold(n_lines=120, n_pix=6000)
gen = Generator.from_arrays(identity, values, AXES, wl, wing_cut=1000)
rng = np.random.default_rng(5)
out = {"devices": len(jax.devices())}
for n in (8, 7):  # 4 devices x 1 step of 2 spectra; the same with the last step padded
    thetas = np.c_[rng.uniform(4000, 6000, n), rng.uniform(4.0, 4.5, n), rng.uniform(-0.5, 0, n)]
    sharded = gen.batch(thetas, batch_size=2)
    one = gen.batch(thetas, batch_size=2, devices=jax.devices()[:1])
    single = np.stack([np.asarray(gen(t)) for t in thetas])
    out[str(n)] = {
        "shape": list(sharded.shape),
        "device_set": len(sharded.sharding.device_set),
        "sharded_rows": getattr(sharded.sharding, "spec", None) == jax.P(BATCH_AXIS),
        "one_device_set": len(one.sharding.device_set),
        "vs_one_device": float(np.abs(np.asarray(sharded) - np.asarray(one)).max()),
        "vs_single_calls": float(np.abs(np.asarray(sharded) - single).max()),
    }
print("RESULT " + json.dumps(out))
"""


_CLONE_SCRIPT = """
import json
import jax
import numpy as np
from jblase import clone
from jblase.grids.synthetic import SyntheticGridModel
from jblase.preprocess import normalize

model = SyntheticGridModel(wl_range=(8500.0, 8640.0), n_lines=150, seed=4)
wl = model.wavelength()
teffs = (5000.0, 5300.0, 5600.0)
fl = np.stack([normalize(wl, model.flux(t, 4.5, 0.0, wavelength=wl), t) for t in teffs])
res = clone.clone_batch(wl, fl, epochs=20, wing_cut=1000, batch_size=3, progress=False)
print("RESULT " + json.dumps({
    "devices": len(jax.devices()),
    "sharded_programs": clone._run_segment_sharded._cache_size(),
    "rms": [r.rms for r in res],
    "n_lines": [r.n_lines for r in res],
    "lines": [np.stack([np.asarray(getattr(r.lines, k)) for k in
              ("center", "ln_amplitude", "ln_sigma", "ln_gamma")]).tolist() for r in res],
}))
"""


def _run(script: str, devices: int | None) -> dict:
    flags = os.environ.get("XLA_FLAGS", "")
    if devices:
        flags += f" --xla_force_host_platform_device_count={devices}"
    env = dict(os.environ, XLA_FLAGS=flags.strip())
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def test_batched_cloning_over_four_forced_cpu_devices_equals_one_device():
    """Three spectra, one batch rounded up to four (one per device; the fourth a copy)."""
    four, one = _run(_CLONE_SCRIPT, 4), _run(_CLONE_SCRIPT, None)
    assert (four["devices"], one["devices"]) == (4, 1)
    assert four["sharded_programs"] > 0 and one["sharded_programs"] == 0
    assert four["n_lines"] == one["n_lines"] and min(one["n_lines"]) > 5
    np.testing.assert_allclose(four["rms"], one["rms"], rtol=1e-9)
    for a, b in zip(four["lines"], one["lines"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_batch_over_four_forced_cpu_devices_equals_one_device():
    out = _run(_SCRIPT, 4)
    assert out["devices"] == 4
    for n in ("8", "7"):
        r = out[n]
        assert r["shape"][0] == int(n)
        assert r["device_set"] == 4 and r["one_device_set"] == 1, r
        # Equal to rounding: XLA may fuse the per-device program's interpolation differently.
        assert r["vs_one_device"] < 1e-13 and r["vs_single_calls"] < 1e-13, r
    assert out["8"]["sharded_rows"], out["8"]  # rows split over the devices, not gathered
