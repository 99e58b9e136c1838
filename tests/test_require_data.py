"""The real-data guard of the test suite (tests/conftest.py ``require``): skip, or fail in CI."""

import pytest

from .conftest import REQUIRE_DATA_ENV, require


def test_missing_reference_file_skips_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv(REQUIRE_DATA_ENV, raising=False)
    absent = tmp_path / "shared" / "data" / "absent.npz"
    with pytest.raises(pytest.skip.Exception, match=str(absent)):
        require(absent)
    monkeypatch.setenv(REQUIRE_DATA_ENV, "0")
    with pytest.raises(pytest.skip.Exception, match=str(absent)):
        require(absent)


def test_missing_reference_file_fails_when_required(monkeypatch, tmp_path):
    monkeypatch.setenv(REQUIRE_DATA_ENV, "1")
    absent = tmp_path / "shared" / "data" / "absent.npz"
    with pytest.raises(pytest.fail.Exception, match=f"{absent}.*{REQUIRE_DATA_ENV}=1"):
        require(absent)
    # A directory where a file is expected is missing data too.
    with pytest.raises(pytest.fail.Exception, match=str(tmp_path)):
        require(tmp_path)


def test_present_reference_file_is_returned(monkeypatch, tmp_path):
    monkeypatch.setenv(REQUIRE_DATA_ENV, "1")
    present = tmp_path / "data.npz"
    present.write_bytes(b"x")
    assert require(present) == present
