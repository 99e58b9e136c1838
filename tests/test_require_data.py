"""The real-data guard of the test suite (tests/conftest.py ``require``): skip, or fail in CI."""

import pytest

from .conftest import REQUIRE_DATA_ENV, require


def _outcome(path):
    """What ``require(path)`` raised (pytest's skip and fail are BaseExceptions), or None.

    Caught here rather than by ``pytest.raises(<one kind>)``, so that a guard which skips
    where it should fail makes this test fail instead of skipping it too."""
    try:
        require(path)
    except BaseException as exc:
        return exc
    return None


def test_missing_reference_file_skips_by_default(monkeypatch, tmp_path):
    absent = tmp_path / "shared" / "data" / "absent.npz"
    for value in (None, "", "0"):
        if value is None:
            monkeypatch.delenv(REQUIRE_DATA_ENV, raising=False)
        else:
            monkeypatch.setenv(REQUIRE_DATA_ENV, value)
        outcome = _outcome(absent)
        assert isinstance(outcome, pytest.skip.Exception), (value, outcome)
        assert str(absent) in str(outcome)


def test_missing_reference_file_fails_when_required(monkeypatch, tmp_path):
    monkeypatch.setenv(REQUIRE_DATA_ENV, "1")
    absent = tmp_path / "shared" / "data" / "absent.npz"
    outcome = _outcome(absent)
    assert isinstance(outcome, pytest.fail.Exception), outcome
    assert str(absent) in str(outcome) and f"{REQUIRE_DATA_ENV}=1" in str(outcome)
    # A directory where a file is expected is missing data too.
    assert isinstance(_outcome(tmp_path), pytest.fail.Exception)


def test_present_reference_file_is_returned(monkeypatch, tmp_path):
    monkeypatch.setenv(REQUIRE_DATA_ENV, "1")
    present = tmp_path / "data.npz"
    present.write_bytes(b"x")
    assert require(present) == present
