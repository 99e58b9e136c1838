"""Tests for jblase.io: torch-free .pt reading (and its refusals), clone files, spectra files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jblase.io import (
    CLONE_FORMAT,
    UnsafePickleError,
    atomic_write,
    line_list_from_blase,
    load_line_list,
    read_blase_clone,
    read_spectrum,
    read_torch_state_dict,
    save_line_list,
    write_json_atomic,
    write_spectrum,
)
from jblase.linelist import LineList, stack_line_lists

from .conftest import BLASE_CLONE as CLONE_PT
from .conftest import HPF_FITS, require
from .torch_format import op_global as _op_global
from .torch_format import op_int as _op_int
from .torch_format import op_str as _op_str
from .torch_format import op_tuple as _op_tuple
from .torch_format import state_dict as _state_dict
from .torch_format import tensor as _tensor
from .torch_format import write_pt as _write_pt
from .torch_format import write_state_dict

# The torch-format writer (hand-written protocol-2 opcodes) lives in tests/torch_format.py.


def _strided_reference(flat, offset, size, stride):
    """The slow, obvious twin of the strided rebuild: index every element."""
    out = np.empty(size, dtype=flat.dtype)
    for idx in np.ndindex(*size):
        out[idx] = flat[offset + sum(i * s for i, s in zip(idx, stride, strict=True))]
    return out


# ----------------------------------------------------------------- reading without torch

#: A ``torch`` package that records that it was imported, then refuses to be.
_FAKE_TORCH = """
import os, pathlib
pathlib.Path(os.environ["FAKE_TORCH_MARKER"]).touch()
raise ImportError("this test's fake torch: jblase must not import torch")
"""

_READ_WITHOUT_TORCH = """
import hashlib, json, sys
from jblase.io import read_torch_state_dict
out = {"digests": {}}
for path in sys.argv[1:]:
    state = read_torch_state_dict(path)
    out["digests"][path] = {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in state.items()}
out["torch_loaded"] = "torch" in sys.modules
print(json.dumps(out))
"""

_SMALL_VALUES = np.array([1.25, -3.5, 8068.23])


def _digests(state: dict[str, np.ndarray]) -> dict[str, str]:
    return {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in state.items()}


@pytest.fixture(scope="module")
def read_without_torch(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Read a small torch-format file and, if present, the real clone in one fresh Python
    whose ``import torch`` finds a fake package first (it records the import, then fails):
    the reader must work there and never import it. Returns {path: {key: SHA-256}}."""
    tmp = tmp_path_factory.mktemp("no_torch")
    pkl = _state_dict({"v": _tensor("DoubleStorage", "0", 3, 0, (3,), (1,))})
    small = _write_pt(tmp / "v.pt", pkl, {"0": _SMALL_VALUES.astype("<f8").tobytes()})
    paths = [small] + ([CLONE_PT] if CLONE_PT.is_file() else [])
    fake = tmp / "fake_site"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(_FAKE_TORCH)
    marker = tmp / "torch_was_imported"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "FAKE_TORCH_MARKER": str(marker)}
    env["PYTHONPATH"] = os.pathsep.join([str(fake), str(repo), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _READ_WITHOUT_TORCH, *map(str, paths)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "the reader imported torch"
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["torch_loaded"] is False
    # Control: the fake really is what ``import torch`` finds in that environment.
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True)
    assert probe.returncode != 0 and marker.exists()
    return {Path(p).name: d for p, d in out["digests"].items()}


def test_torch_format_reads_where_torch_cannot_be_imported(read_without_torch):
    assert read_without_torch["v.pt"] == {"v": hashlib.sha256(_SMALL_VALUES.tobytes()).hexdigest()}


# ----------------------------------------------------------------- the real blase clone


def test_real_clone_reads_without_torch(read_without_torch):
    require(CLONE_PT)
    state = read_torch_state_dict(CLONE_PT)
    assert read_without_torch[CLONE_PT.name] == _digests(state)
    assert set(state) == {
        "lam_centers",
        "amplitudes",
        "sigma_widths",
        "gamma_widths",
        "radial_velocity",
        "a_coeff",
        "b_coeff",
        "c_coeff",
    }
    lines = [state[k] for k in ("lam_centers", "amplitudes", "sigma_widths", "gamma_widths")]
    assert {a.shape for a in lines} == {(9028,)}
    assert all(a.dtype == np.float64 for a in lines)  # stored as torch.DoubleStorage
    centers = state["lam_centers"]
    assert np.isfinite(centers).all()
    assert (np.diff(centers) > 0).all()
    assert 8000 < centers[0] and centers[-1] < 13000
    for a in lines[1:]:
        assert np.isfinite(a).all()
    for k in ("radial_velocity", "a_coeff", "b_coeff", "c_coeff"):
        assert state[k].shape == ()

    # Compare with the raw little-endian record read by hand.
    with zipfile.ZipFile(CLONE_PT) as zf:
        raw = np.frombuffer(zf.read("archive/data/3"), dtype="<f8")
    np.testing.assert_array_equal(centers, raw)


def test_real_clone_as_line_list_and_clone_file_round_trip(tmp_path):
    require(CLONE_PT)
    lines = read_blase_clone(CLONE_PT)
    assert isinstance(lines, LineList)
    assert len(lines) == lines.n_lines == 9028
    assert lines.center.dtype == np.float64
    np.testing.assert_array_equal(lines.identity_center, np.round(np.asarray(lines.center), 2))

    out = tmp_path / "clone.npz"
    save_line_list(out, lines, {"source": CLONE_PT.name, "teff": np.float64(4700.0)})
    back, meta = load_line_list(out)
    assert meta == {"source": CLONE_PT.name, "teff": 4700.0}
    for f in ("identity_center", "center", "ln_amplitude", "ln_sigma", "ln_gamma"):
        np.testing.assert_array_equal(getattr(back, f), getattr(lines, f))


def test_line_list_from_blase_identities_are_the_pre_optimisation_centres(tmp_path):
    """The paper's identity: pre_line_centers rounded to 0.01 A; without them (older clones)
    the tuned centres rounded. Read from a file object too (a member of a zip of clones)."""
    tuned = np.array([8500.0171, 8501.2449, 8502.3333])
    pre = np.array([8500.0049, 8501.2551, 8502.3349])
    state = {
        "amplitudes": np.log([0.1, 0.2, 0.3]),
        "sigma_widths": np.full(3, -4.0),
        "gamma_widths": np.full(3, -4.5),
        "lam_centers": tuned,
        "pre_line_centers": pre,
    }
    path = write_state_dict(tmp_path / "T4700G4.50Z0.00.pt", state)
    lines = read_blase_clone(path)
    np.testing.assert_array_equal(lines.identity_center, [8500.0, 8501.26, 8502.33])
    np.testing.assert_array_equal(lines.center, tuned)
    old = line_list_from_blase({k: v for k, v in state.items() if k != "pre_line_centers"})
    np.testing.assert_array_equal(old.identity_center, [8500.02, 8501.24, 8502.33])
    with pytest.raises(ValueError, match="same shape"):
        line_list_from_blase({**state, "pre_line_centers": pre[:2]})

    named = tmp_path / "archive.zip" / "T4700G4.50Z0.00.pt"
    from_bytes = read_torch_state_dict(named, fileobj=io.BytesIO(path.read_bytes()))
    assert from_bytes.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(from_bytes[key], value)
    with pytest.raises(ValueError, match=r"archive.zip/T4700G4.50Z0.00.pt: not a PyTorch zip"):
        read_torch_state_dict(named, fileobj=io.BytesIO(b"junk"))


def test_line_list_from_blase_reports_missing_keys():
    with pytest.raises(ValueError, match=r"lacks \['sigma_widths', 'gamma_widths'\].*it has"):
        line_list_from_blase({"lam_centers": np.ones(3), "amplitudes": np.ones(3)})
    bad = {k: np.ones(3) for k in ("lam_centers", "amplitudes", "sigma_widths")}
    bad["gamma_widths"] = np.ones(4)
    with pytest.raises(ValueError, match="same shape"):
        line_list_from_blase(bad)


# ----------------------------------------------------------------- torch-format round trips


@pytest.mark.parametrize("prefix", ["archive", "my_model"])
def test_torch_round_trip_strides_offsets_dtypes(tmp_path, prefix):
    flat = (np.arange(24, dtype="<f4") * 1.5 - 7).astype("<f4")
    ints = np.array([3, -1, 2**40, 7], dtype="<i8")
    flags = np.array([True, False, True])
    bf16_values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    bf16 = (bf16_values.view(np.uint32) >> 16).astype("<u2")
    pkl = _state_dict(
        {
            "x": _tensor("FloatStorage", "0", 24, 2, (3, 4), (1, 5)),  # transposed-like view
            "y": _tensor("FloatStorage", "0", 24, 7, (2,), (3,)),  # same storage, offset
            "s": _tensor("DoubleStorage", "1", 1, 0, (), ()),  # 0-d
            "i": _tensor("LongStorage", "2", 4, 1, (3,), (1,)),
            "b": _tensor("BoolStorage", "3", 3, 0, (3,), (1,)),
            "h": _tensor("BFloat16Storage", "4", 3, 0, (3,), (1,)),
            "e": _tensor("FloatStorage", "5", 0, 0, (0, 3), (3, 1)),
        }
    )
    records = {
        "0": flat.tobytes(),
        "1": np.array([2.5], "<f8").tobytes(),
        "2": ints.tobytes(),
        "3": flags.tobytes(),
        "4": bf16.tobytes(),
        "5": b"",
    }
    path = _write_pt(tmp_path / "model.pt", pkl, records, prefix=prefix)
    state = read_torch_state_dict(path)

    assert list(state) == ["x", "y", "s", "i", "b", "h", "e"]
    np.testing.assert_array_equal(state["x"], _strided_reference(flat, 2, (3, 4), (1, 5)))
    assert state["x"].dtype == np.float32 and state["x"].flags.c_contiguous
    np.testing.assert_array_equal(state["y"], [flat[7], flat[10]])
    assert state["s"].shape == () and state["s"].dtype == np.float64 and state["s"] == 2.5
    np.testing.assert_array_equal(state["i"], ints[1:])
    assert state["i"].dtype == np.int64
    np.testing.assert_array_equal(state["b"], flags)
    np.testing.assert_array_equal(state["h"], bf16_values)
    assert state["h"].dtype == np.float32
    assert state["e"].shape == (0, 3)
    # The arrays are copies, not views of one shared buffer.
    state["x"][0, 0] = 1e9
    assert state["y"][0] == flat[7]


def test_torch_big_endian_archive(tmp_path):
    values = np.array([1.25, -3.5, 8068.23])
    pkl = _state_dict({"v": _tensor("DoubleStorage", "0", 3, 0, (3,), (1,))})
    path = _write_pt(tmp_path / "be.pt", pkl, {"0": values.astype(">f8").tobytes()})
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("archive/byteorder", "big")
    out = read_torch_state_dict(path)["v"]
    np.testing.assert_array_equal(out, values)
    assert out.dtype.isnative


# ----------------------------------------------------------------- refusals and damage


class _SystemCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _SubprocessCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return subprocess.call, (["touch", str(self.marker)],)


def _malicious_pickles(marker: Path) -> dict[str, tuple[bytes, str]]:
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    return {
        "os.system via __reduce__ (protocol 2)": (
            pickle.dumps({"w": _SystemCall(marker)}, protocol=2),
            f"{os.system.__module__}.system",
        ),
        "subprocess.call via STACK_GLOBAL (protocol 4)": (
            pickle.dumps(_SubprocessCall(marker), protocol=4),
            "subprocess.call",
        ),
        "builtins.eval, handcrafted": (
            b"\x80\x02" + _op_global("builtins", "eval") + _op_tuple(_op_str(code)) + b"R.",
            "builtins.eval",
        ),
        "os.system after a valid tensor": (
            _state_dict(
                {
                    "ok": _tensor("FloatStorage", "0", 2, 0, (2,), (1,)),
                    "bad": _op_global("os", "system")
                    + _op_tuple(_op_str(f"touch {marker}"))
                    + b"R",
                }
            ),
            "os.system",
        ),
        "a module class": (
            b"\x80\x02" + _op_global("torch.nn.modules.linear", "Linear") + b")R.",
            "torch.nn.modules.linear.Linear",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "os.system via __reduce__ (protocol 2)",
        "subprocess.call via STACK_GLOBAL (protocol 4)",
        "builtins.eval, handcrafted",
        "os.system after a valid tensor",
        "a module class",
    ],
)
def test_malicious_pickle_is_refused_before_running(tmp_path, case):
    marker = tmp_path / "pwned"
    pkl, refused = _malicious_pickles(marker)[case]
    path = _write_pt(tmp_path / "evil.pt", pkl, {"0": np.zeros(2, "<f4").tobytes()})
    with pytest.raises(UnsafePickleError, match=refused.replace(".", r"\.")) as info:
        read_torch_state_dict(path)
    assert isinstance(info.value, pickle.UnpicklingError)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_malicious_payload_is_live_under_plain_pickle(tmp_path):
    """Control: the handcrafted eval payload really acts when unpickled without restrictions."""
    marker = tmp_path / "pwned"
    pkl, _ = _malicious_pickles(marker)["builtins.eval, handcrafted"]
    pickle.loads(pkl)
    assert marker.exists()


@pytest.mark.parametrize(
    "target", [("torch._utils", "_rebuild_tensor_v2"), ("torch", "FloatStorage")]
)
def test_build_cannot_tamper_with_allowed_globals(tmp_path, target):
    slot_state = _op_tuple(b"N", b"}" + _op_str("fn") + _op_int(1) + b"s")
    path = _write_pt(tmp_path / "t.pt", b"\x80\x02" + _op_global(*target) + slot_state + b"b.", {})
    with pytest.raises(ValueError, match=r"t\.pt: corrupt checkpoint"):
        read_torch_state_dict(path)
    good = _state_dict({"v": _tensor("FloatStorage", "0", 2, 0, (2,), (1,))})
    path = _write_pt(tmp_path / "ok.pt", good, {"0": np.ones(2, "<f4").tobytes()})
    np.testing.assert_array_equal(read_torch_state_dict(path)["v"], [1.0, 1.0])


def test_missing_storage_record(tmp_path):
    pkl = _state_dict({"v": _tensor("FloatStorage", "1", 2, 0, (2,), (1,))})
    path = _write_pt(tmp_path / "m.pt", pkl, {"0": np.zeros(2, "<f4").tobytes()})
    with pytest.raises(ValueError, match=r"m\.pt.*missing storage record 'archive/data/1'"):
        read_torch_state_dict(path)


def test_short_storage_and_out_of_range_tensor(tmp_path):
    pkl = _state_dict({"v": _tensor("DoubleStorage", "0", 10, 0, (10,), (1,))})
    path = _write_pt(tmp_path / "short.pt", pkl, {"0": np.zeros(5, "<f8").tobytes()})
    with pytest.raises(ValueError, match=r"short\.pt.*holds 40 bytes, 80 needed"):
        read_torch_state_dict(path)
    pkl = _state_dict({"v": _tensor("DoubleStorage", "0", 4, 1, (2,), (3,))})
    path = _write_pt(tmp_path / "range.pt", pkl, {"0": np.zeros(4, "<f8").tobytes()})
    with pytest.raises(ValueError, match=r"range\.pt.*reaches element 4 of a storage of 4"):
        read_torch_state_dict(path)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a zip file")
    with pytest.raises(ValueError, match=r"notes\.pt: not a PyTorch zip"):
        read_torch_state_dict(text)
    with pytest.raises(ValueError, match=r"absent\.pt: no such file"):
        read_torch_state_dict(tmp_path / "absent.pt")
    nopkl = tmp_path / "nopkl.pt"
    with zipfile.ZipFile(nopkl, "w") as zf:
        zf.writestr("archive/version", "3\n")
    with pytest.raises(ValueError, match=r"nopkl\.pt.*data\.pkl"):
        read_torch_state_dict(nopkl)
    garbage = _write_pt(tmp_path / "garbage.pt", b"\x80\x02garbage", {})
    with pytest.raises(ValueError, match=r"garbage\.pt: corrupt checkpoint"):
        read_torch_state_dict(garbage)
    not_tensor = _write_pt(tmp_path / "str.pt", _state_dict({"k": _op_str("v")}), {})
    with pytest.raises(ValueError, match=r"str\.pt: entry 'k' is a str, not a tensor"):
        read_torch_state_dict(not_tensor)


def test_truncated_real_checkpoint(tmp_path):
    require(CLONE_PT)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(CLONE_PT.read_bytes()[:150_000])
    with pytest.raises(ValueError, match=r"cut\.pt"):
        read_torch_state_dict(cut)


# ----------------------------------------------------------------- jblase clone files


def _small_lines() -> LineList:
    return LineList(
        center=[8500.123456789, 8600.5, 8700.25],
        ln_amplitude=[-3.0, -4.5, -1.0],
        ln_sigma=[-3.2, -3.1, -2.9],
        ln_gamma=[-4.0, -3.9, -3.8],
    )


def test_clone_file_round_trip(tmp_path):
    lines = _small_lines().pad(5)  # padding must not be saved
    meta = {
        "teff": np.float64(4700.0),
        "n": np.int64(3),
        "grid": np.array([1.0, 2.0]),
        "path": tmp_path / "x",
        "nested": {"ok": True, "t": (1, 2)},
    }
    path = tmp_path / "clone.npz"
    save_line_list(path, lines, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clone.npz"]  # no .tmp left

    with np.load(path, allow_pickle=False) as npz:
        assert str(npz["format"]) == CLONE_FORMAT and int(npz["format_version"]) == 1
        assert npz["metadata"].shape == () and npz["metadata"].dtype.kind == "U"
        assert npz["center"].dtype == np.float64 and npz["center"].shape == (3,)

    back, back_meta = load_line_list(path)
    assert back_meta == {
        "teff": 4700.0,
        "n": 3,
        "grid": [1.0, 2.0],
        "path": str(tmp_path / "x"),
        "nested": {"ok": True, "t": [1, 2]},
    }
    ref = _small_lines()
    assert len(back) == 3 and bool(np.all(back.mask))
    for f in ("identity_center", "center", "ln_amplitude", "ln_sigma", "ln_gamma"):
        np.testing.assert_array_equal(getattr(back, f), getattr(ref, f))
        assert getattr(back, f).dtype == np.float64


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_truncated_clone_file(tmp_path, keep):
    path = tmp_path / "clone.npz"
    save_line_list(path, _small_lines(), {"a": 1})
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:n])
    with pytest.raises(ValueError, match=r"clone\.npz"):
        load_line_list(path)


def test_clone_file_wrong_format_version_or_missing(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, center=np.ones(3))
    with pytest.raises(ValueError, match=r"other\.npz: format is None"):
        load_line_list(other)
    newer = tmp_path / "newer.npz"
    save_line_list(newer, _small_lines())
    with np.load(newer) as npz:
        arrays = dict(npz)
    arrays["format_version"] = np.array(2)
    np.savez(newer, **arrays)
    with pytest.raises(ValueError, match=r"newer\.npz: format version 2 is newer"):
        load_line_list(newer)
    with pytest.raises(ValueError, match=r"missing\.npz: no such file"):
        load_line_list(tmp_path / "missing.npz")
    bare = tmp_path / "bare.npz"
    with open(bare, "wb") as fh:
        np.save(fh, np.ones(3))  # a .npy payload under an .npz name
    with pytest.raises(ValueError, match=r"bare\.npz"):
        load_line_list(bare)


def test_save_refuses_a_batch(tmp_path):
    batch = stack_line_lists([_small_lines(), _small_lines()])
    with pytest.raises(ValueError, match="single line list"):
        save_line_list(tmp_path / "b.npz", batch, {})
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_keeps_old_file(tmp_path):
    path = tmp_path / "manifest.json"
    write_json_atomic(path, {"x": np.arange(3), "y": np.float32(0.5)})
    assert json.loads(path.read_text()) == {"x": [0, 1, 2], "y": 0.5}

    def fail(fh):
        fh.write(b"half a fi")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"x": [0, 1, 2], "y": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


# ----------------------------------------------------------------- spectra


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".fits", ".fit", ".fits.gz"])
@pytest.mark.parametrize("with_unc", [True, False])
def test_spectrum_round_trip(tmp_path, suffix, with_unc):
    rng = np.random.default_rng(0)
    wl = np.linspace(8656.1736222, 8768.0, 50)
    flux = 1 - 0.3 * rng.random(50)
    unc = 0.01 + 0.001 * rng.random(50) if with_unc else None
    path = tmp_path / f"spec{suffix}"
    write_spectrum(path, wl, flux, unc)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    w2, f2, u2 = read_spectrum(path)
    np.testing.assert_array_equal(w2, wl)
    np.testing.assert_array_equal(f2, flux)
    assert all(a.dtype == np.float64 for a in (w2, f2))
    if with_unc:
        np.testing.assert_array_equal(u2, unc)
    else:
        assert u2 is None


def test_fits_spectrum_units_and_case_insensitive_columns(tmp_path):
    from astropy.io import fits

    path = tmp_path / "s.fits"
    write_spectrum(path, [1.0, 2.0], [0.5, 0.6])
    with fits.open(path) as hdul:
        assert hdul[1].columns["wavelength"].unit == "Angstrom"

    upper = tmp_path / "upper.fits"
    cols = [
        fits.Column(name="WAVELENGTH", format="E", array=np.array([1.0, 2.0])),
        fits.Column(name="Flux", format="E", array=np.array([0.5, 0.75])),
    ]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(upper)
    wl, fl, unc = read_spectrum(upper)
    assert wl.dtype == np.float64 and unc is None
    np.testing.assert_array_equal(fl, [0.5, 0.75])


def test_spectrum_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\.npz, \.csv, \.fits"):
        read_spectrum(tmp_path / "spec.txt")
    with pytest.raises(ValueError, match=r"\.npz, \.csv, \.fits"):
        write_spectrum(tmp_path / "spec.dat", [1.0], [1.0])
    np.savez(tmp_path / "nf.npz", wavelength=np.ones(3))
    with pytest.raises(ValueError, match=r"nf\.npz: missing column\(s\) \['flux'\]"):
        read_spectrum(tmp_path / "nf.npz")
    (tmp_path / "nw.csv").write_text("lambda,flux\n1,2\n")
    with pytest.raises(ValueError, match=r"nw\.csv: missing column\(s\) \['wavelength'\]"):
        read_spectrum(tmp_path / "nw.csv")
    (tmp_path / "bad.fits").write_bytes(b"SIMPLE  = garbage")
    with pytest.raises(ValueError, match=r"bad\.fits"):
        read_spectrum(tmp_path / "bad.fits")
    with pytest.raises(ValueError, match="same shape"):
        write_spectrum(tmp_path / "x.npz", [1.0, 2.0], [1.0])


def test_read_real_hpf_spectrum():
    require(HPF_FITS)
    wl, flux, unc = read_spectrum(HPF_FITS)
    assert wl.shape == flux.shape == unc.shape == (2048,)
    assert all(a.dtype == np.float64 for a in (wl, flux, unc))
    assert (np.diff(wl) > 0).all() and 8650 < wl[0] < wl[-1] < 8775
    # The published order has 26 NaN pixels at its red edge (flux and uncertainty alike).
    bad = ~np.isfinite(flux)
    np.testing.assert_array_equal(bad, ~np.isfinite(unc))
    assert bad.sum() == 26 and bad[-26:].all()
    assert (unc[~bad] > 0).all() and 0.2 < flux[~bad].min() < flux[~bad].max() < 1.1
