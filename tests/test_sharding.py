"""Several devices: ``Generator.batch`` splits its steps over every local device by a named
sharding, with the single-device fluxes. JAX fixes its device count when it starts, so the
check runs in a fresh interpreter with four CPU devices forced
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = """
import json
import jax
import numpy as np
from jblase.generator import BATCH_AXIS, Generator
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


def test_batch_over_four_forced_cpu_devices_equals_one_device():
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags.strip())
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    assert out["devices"] == 4
    for n in ("8", "7"):
        r = out[n]
        assert r["shape"][0] == int(n)
        assert r["device_set"] == 4 and r["one_device_set"] == 1, r
        assert r["vs_one_device"] == 0.0 and r["vs_single_calls"] < 1e-13, r
    assert out["8"]["sharded_rows"], out["8"]  # rows split over the devices, not gathered
