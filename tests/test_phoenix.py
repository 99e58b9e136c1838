"""PHOENIX naming, the paper's grid subset, the local-mirror reader and the resumable downloader.

Everything runs on tiny PHOENIX-layout FITS files in ``tmp_path``; the downloader talks to an
HTTP server on 127.0.0.1 that serves such a tree.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from jblase.cli import main
from jblase.grids.base import GridPoint
from jblase.grids.phoenix import (
    LIBRARY,
    PAPER_SUBSET,
    PHOENIX_BASE_URL,
    WAVELENGTH_FILENAME,
    DownloadError,
    GridFileError,
    GridSelection,
    PhoenixGrid,
    download,
    parse_phoenix_filename,
    phoenix_relpath,
    url_for,
)

N_PIX = 300
WL = np.linspace(5000.0, 5030.0, N_PIX)


def _flux(point: GridPoint) -> np.ndarray:
    """A deterministic float32 spectrum that differs between points."""
    x = np.arange(N_PIX)
    return (point.teff + 100.0 * point.logg + 10.0 * point.feh + np.sin(x / 7.0)).astype(np.float32)


def write_wavelength(root: Path, wl: np.ndarray = WL) -> Path:
    path = root / WAVELENGTH_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(np.asarray(wl, dtype=np.float64)).writeto(path)
    return path


def write_spectrum(
    root: Path,
    point: GridPoint,
    alpha: float = 0.0,
    flux: np.ndarray | None = None,
    **header_overrides: float,
) -> Path:
    path = root / phoenix_relpath(*point, alpha=alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    hdu = fits.PrimaryHDU(_flux(point) if flux is None else flux)
    keys = {"PHXTEFF": point.teff, "PHXLOGG": point.logg, "PHXM_H": point.feh, "PHXALPHA": alpha}
    keys.update(header_overrides)
    for key, value in keys.items():
        hdu.header[key] = value
    hdu.writeto(path)
    return path


MIRROR_POINTS = [
    GridPoint(t, g, z) for t in (4250.0, 5800.0, 6000.0) for g in (4.0, 4.5) for z in (-0.5, 0.0)
] + [GridPoint(5800.0, 4.5, 0.5)]


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    write_wavelength(root)
    for p in MIRROR_POINTS:
        write_spectrum(root, p)
    write_spectrum(root, GridPoint(5800.0, 4.5, 0.0), alpha=0.2)
    (root / LIBRARY / "Z-0.0" / "README.txt").write_text("not a spectrum")
    return root


# --------------------------------------------------------------------------------------------
# Naming and selections


@pytest.mark.parametrize(
    ("point", "alpha"),
    [
        (GridPoint(5800.0, 4.5, 0.0), 0.0),
        (GridPoint(2300.0, 6.0, -0.5), 0.0),
        (GridPoint(12000.0, 2.0, 0.5), 0.0),
        (GridPoint(4250.0, 3.75, -1.0), 0.2),
        (GridPoint(3000.0, 0.0, -4.0), -0.2),
    ],
)
def test_filename_round_trip(point: GridPoint, alpha: float) -> None:
    rel = phoenix_relpath(*point, alpha=alpha)
    assert parse_phoenix_filename(rel) == (point, alpha)
    assert parse_phoenix_filename(Path(rel).name) == (point, alpha)
    assert url_for(point, "http://host/x/", alpha) == f"http://host/x/{rel}"
    assert url_for(point, "http://host/x", alpha) == f"http://host/x/{rel}"


def test_known_names() -> None:
    assert phoenix_relpath(5800, 4.5, 0.0, alpha=0.2) == (
        f"{LIBRARY}/Z-0.0.Alpha=+0.20/lte05800-4.50-0.0.Alpha=+0.20.{LIBRARY}-HiRes.fits"
    )
    point, alpha = parse_phoenix_filename(f"lte05800-4.50-0.0.{LIBRARY}-HiRes.fits")
    assert point == GridPoint(5800.0, 4.5, 0.0) and alpha == 0.0
    assert np.copysign(1.0, point.feh) == 1.0  # PHOENIX's "-0.0" is solar, not negative zero


@pytest.mark.parametrize(
    "name",
    [
        "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits",
        "lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits.part",
        "lte5800-4.5-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits",
        "lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-MedRes.fits",
    ],
)
def test_parse_rejects_other_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a PHOENIX"):
        parse_phoenix_filename(name)


def test_paper_subset_matches_table_1() -> None:
    teffs = np.array(PAPER_SUBSET.teffs)
    assert len(teffs) == 73 and len(PAPER_SUBSET.loggs) == 9 and PAPER_SUBSET.fehs == (-0.5, 0.0)
    assert teffs[0] == 2300 and teffs[-1] == 12000
    cool, hot = teffs[teffs <= 7000], teffs[teffs > 7000]
    assert len(cool) == 48 and np.all(np.diff(cool) == 100)
    assert hot[0] == 7200 and np.all(np.diff(hot) == 200)
    np.testing.assert_array_equal(PAPER_SUBSET.loggs, np.arange(2.0, 6.01, 0.5))
    points = PAPER_SUBSET.points()
    assert len(points) == len(PAPER_SUBSET) == 73 * 9 * 2 == 1314
    assert points == sorted(set(points))
    assert all(isinstance(p, GridPoint) for p in points)


def test_selection_from_ranges() -> None:
    sel = GridSelection.from_ranges(teff=(5000, 6000), logg=(4.0, 4.5), feh=(0.0, 0.0))
    assert sel.teffs == tuple(float(t) for t in range(5000, 6001, 100))
    assert sel.loggs == (4.0, 4.5) and sel.fehs == (0.0,)
    assert len(sel.points()) == 11 * 2
    hot = GridSelection.from_ranges(teff=(7000, 7400))
    assert hot.teffs == (7000.0, 7200.0, 7400.0) and len(hot) == 3 * 9 * 2
    assert GridSelection.from_ranges() == PAPER_SUBSET
    custom = GridSelection((4250, 5800), (4.5,), (0.0, 0.5))
    assert GridSelection.from_ranges(teff=(4000, 5000), base=custom).teffs == (4250.0,)


def test_selection_empty_names_ranges_and_values() -> None:
    with pytest.raises(ValueError, match=r"teff=\(7010, 7190\).*teff values \[2300, 2400"):
        GridSelection.from_ranges(teff=(7010, 7190))
    with pytest.raises(ValueError, match=r"feh values \[-0.5, 0\]"):
        GridSelection.from_ranges(feh=(0.1, 0.4))
    with pytest.raises(ValueError, match="lo <= hi"):
        GridSelection.from_ranges(logg=(5.0, 4.0))


# --------------------------------------------------------------------------------------------
# Reader


def test_reader_scans_and_sorts(mirror: Path) -> None:
    grid = PhoenixGrid(mirror)
    assert grid.points() == sorted(MIRROR_POINTS)
    teffs, loggs, fehs = grid.axes()
    np.testing.assert_array_equal(teffs, [4250.0, 5800.0, 6000.0])
    np.testing.assert_array_equal(loggs, [4.0, 4.5])
    np.testing.assert_array_equal(fehs, [-0.5, 0.0, 0.5])
    wl = grid.wavelength()
    assert wl.dtype == np.float64 and wl.shape == (N_PIX,)
    np.testing.assert_array_equal(wl, WL)
    p = GridPoint(4250.0, 4.0, -0.5)
    flux = grid.load_flux(p)
    assert flux.dtype == np.float64 and flux.shape == (N_PIX,)
    np.testing.assert_array_equal(flux, _flux(p).astype(np.float64))
    assert grid.path((4250, 4, -0.5)) == mirror / phoenix_relpath(*p)
    assert grid.header(p) == {"PHXTEFF": 4250.0, "PHXLOGG": 4.0, "PHXM_H": -0.5, "PHXALPHA": 0.0}


def test_reader_selection_and_crop(mirror: Path) -> None:
    grid = PhoenixGrid(
        mirror, wl_range=(5010.0, 5020.0), teff_range=(5000, 5900), feh_range=(-0.5, 0.0)
    )
    assert grid.points() == sorted(GridPoint(5800.0, g, z) for g in (4.0, 4.5) for z in (-0.5, 0.0))
    keep = (WL >= 5010.0) & (WL <= 5020.0)
    wl = grid.wavelength()
    np.testing.assert_array_equal(wl, WL[keep])
    assert grid.wavelength() is wl  # cached
    for p in grid.points():
        np.testing.assert_array_equal(grid.load_flux(p), _flux(p)[keep].astype(np.float64))
    # Inclusive ends: a range that starts exactly on a pixel keeps it.
    edge = PhoenixGrid(mirror, wl_range=(WL[10], WL[20]))
    np.testing.assert_array_equal(edge.wavelength(), WL[10:21])


def test_reader_alpha_subgrid(mirror: Path) -> None:
    grid = PhoenixGrid(mirror, alpha=0.2)
    p = GridPoint(5800.0, 4.5, 0.0)
    assert grid.points() == [p]
    assert grid.path(p).parent.name == "Z-0.0.Alpha=+0.20"
    assert grid.header(p)["PHXALPHA"] == pytest.approx(0.2)


def test_reader_missing_root_and_wavelength(tmp_path: Path, mirror: Path) -> None:
    with pytest.raises(GridFileError, match="nowhere"):
        PhoenixGrid(tmp_path / "nowhere")
    with pytest.raises(GridFileError, match="no PHOENIX-ACES-AGSS-COND-2011 HiRes files"):
        PhoenixGrid(tmp_path)
    (mirror / WAVELENGTH_FILENAME).unlink()
    grid = PhoenixGrid(mirror)
    with pytest.raises(GridFileError, match=re.escape(str(mirror / WAVELENGTH_FILENAME))):
        grid.wavelength()
    with pytest.raises(GridFileError, match="wavelength file not found"):
        grid.load_flux(grid.points()[0])


def test_reader_empty_selection_names_what_is_available(mirror: Path) -> None:
    with pytest.raises(
        GridFileError, match=r"teff_range=\(7000, 8000\).*teff \[4250, 5800, 6000\]"
    ):
        PhoenixGrid(mirror, teff_range=(7000, 8000))


def test_reader_point_not_in_grid(mirror: Path) -> None:
    grid = PhoenixGrid(mirror, feh_range=(0.0, 0.0))
    with pytest.raises(GridFileError, match=r"not in the selected grid.*lte05800-4.50\+0.5"):
        grid.load_flux(GridPoint(5800.0, 4.5, 0.5))
    with pytest.raises(GridFileError, match="not in the selected grid"):
        grid.path(GridPoint(5900.0, 4.5, 0.0))


@pytest.mark.parametrize("cut", [100, 600, 3000])
def test_reader_truncated_fits(mirror: Path, cut: int) -> None:
    """Cut bytes off the end: padding only (100), into the data (600) or into the header."""
    p = GridPoint(6000.0, 4.5, 0.0)
    path = mirror / phoenix_relpath(*p)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut])
    grid = PhoenixGrid(mirror)
    with pytest.raises(GridFileError, match=re.escape(path.name)):
        grid.load_flux(p)
    np.testing.assert_array_equal(grid.load_flux(GridPoint(6000.0, 4.0, 0.0)).size, N_PIX)


def test_reader_truncated_wavelength(mirror: Path) -> None:
    path = mirror / WAVELENGTH_FILENAME
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(GridFileError, match=WAVELENGTH_FILENAME):
        PhoenixGrid(mirror).wavelength()


@pytest.mark.parametrize(
    ("key", "value"), [("PHXTEFF", 5900.0), ("PHXLOGG", 4.0), ("PHXM_H", -0.5), ("PHXALPHA", 0.4)]
)
def test_reader_header_mismatch(tmp_path: Path, key: str, value: float) -> None:
    write_wavelength(tmp_path)
    p = GridPoint(5800.0, 4.5, 0.0)
    write_spectrum(tmp_path, p, **{key: value})
    grid = PhoenixGrid(tmp_path)
    with pytest.raises(GridFileError, match=rf"header disagrees.*{key}"):
        grid.load_flux(p)
    with pytest.raises(GridFileError, match=rf"{re.escape(grid.path(p).name)}.*{key}"):
        grid.header(p)


def test_reader_flux_length_mismatch(tmp_path: Path) -> None:
    write_wavelength(tmp_path)
    p = GridPoint(5800.0, 4.5, 0.0)
    write_spectrum(tmp_path, p, flux=np.ones(N_PIX - 1, dtype=np.float32))
    with pytest.raises(GridFileError, match=rf"{N_PIX - 1} pixels but .* has {N_PIX}"):
        PhoenixGrid(tmp_path).load_flux(p)


def test_reader_wl_range_without_pixels(mirror: Path) -> None:
    for wl_range in [(6000.0, 7000.0), (5010.001, 5010.002)]:
        with pytest.raises(GridFileError, match=r"selects [01] pixel.*5000.0000-5030.0000"):
            PhoenixGrid(mirror, wl_range=wl_range).wavelength()
    with pytest.raises(ValueError, match="lo <= hi"):
        PhoenixGrid(mirror, wl_range=(5020.0, 5010.0))


# --------------------------------------------------------------------------------------------
# Downloader against a local server


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.root`` with ``Range: bytes=N-`` support and scripted failures."""

    server: _PhoenixServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        rng = self.headers.get("Range")
        rel = urllib.parse.unquote(self.path.lstrip("/"))
        srv.log.append((rel, rng))
        path = srv.root / rel
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if rel in srv.stall_before_headers:
            srv.release.wait(30.0)  # accept the request, then say nothing
            return
        if rel in srv.drop_once:
            # Promise the whole file, send half, hang up.
            srv.drop_once.discard(rel)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if rel in srv.stall_mid_body:
            # Promise the whole file, send half, then keep the connection open in silence.
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            srv.release.wait(30.0)
            return
        start = 0
        if rng and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


class _PhoenixServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.log: list[tuple[str, str | None]] = []
        self.drop_once: set[str] = set()
        self.stall_before_headers: set[str] = set()
        self.stall_mid_body: set[str] = set()
        self.release = threading.Event()  # ends every stall (set when the test is over)
        self.ignore_range = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


@pytest.fixture
def server(mirror: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_PhoenixServer]:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = _PhoenixServer(mirror)
    thread = threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join()


WANT = [GridPoint(5800.0, 4.5, 0.0), GridPoint(4250.0, 4.0, -0.5)]
FAST = {"progress": False, "timeout": 5.0, "backoff": 0.0}


def _same_files(a: Path, b: Path, rels: list[str]) -> None:
    for rel in rels:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_download_fetches_exactly_what_is_asked(server: _PhoenixServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    paths = download(WANT + [WANT[0]], cache, base_url=server.url, **FAST)
    rels = [WAVELENGTH_FILENAME] + [phoenix_relpath(*p) for p in WANT]
    assert paths == [cache / rel for rel in rels]
    assert sorted(rel for rel, _ in server.log) == sorted(rels)
    assert all(rng is None for _, rng in server.log)
    _same_files(server.root, cache, rels)
    fetched = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())
    assert fetched == sorted(rels)  # no .part left behind, nothing extra
    # The downloaded tree is a mirror the reader accepts.
    grid = PhoenixGrid(cache)
    assert grid.points() == sorted(WANT)
    np.testing.assert_array_equal(grid.load_flux(WANT[1]), _flux(WANT[1]).astype(np.float64))

    server.log.clear()
    assert download(WANT, cache, base_url=server.url, **FAST) == paths
    assert server.log == []  # complete files make no request


def test_download_alpha_and_progress(server: _PhoenixServer, tmp_path: Path) -> None:
    p = GridPoint(5800.0, 4.5, 0.0)
    paths = download([p], tmp_path, base_url=server.url, alpha=0.2, progress=True, timeout=5.0)
    assert paths[1] == tmp_path / phoenix_relpath(*p, alpha=0.2)
    _same_files(server.root, tmp_path, [phoenix_relpath(*p, alpha=0.2)])


def test_download_resumes_after_dropped_connection(server: _PhoenixServer, tmp_path: Path) -> None:
    rel = phoenix_relpath(*WANT[0])
    size = (server.root / rel).stat().st_size
    server.drop_once.add(rel)
    with pytest.raises(DownloadError, match=re.escape(server.url + rel) + r".*\.part"):
        download(WANT[:1], tmp_path, base_url=server.url, retries=0, **FAST)
    final = tmp_path / rel
    part = final.with_name(final.name + ".part")
    assert not final.exists()
    assert part.stat().st_size == size // 2

    server.log.clear()
    download(WANT[:1], tmp_path, base_url=server.url, retries=0, **FAST)
    assert server.log == [(rel, f"bytes={size // 2}-")]
    assert not part.exists()
    _same_files(server.root, tmp_path, [WAVELENGTH_FILENAME, rel])


def test_download_retries_within_one_call(server: _PhoenixServer, tmp_path: Path) -> None:
    rels = [WAVELENGTH_FILENAME, phoenix_relpath(*WANT[1])]
    server.drop_once.update(rels)
    download(WANT[1:], tmp_path, base_url=server.url, retries=2, **FAST)
    for rel in rels:
        size = (server.root / rel).stat().st_size
        assert [r for r in server.log if r[0] == rel] == [(rel, None), (rel, f"bytes={size // 2}-")]
    _same_files(server.root, tmp_path, rels)


def test_download_restarts_when_server_ignores_range(
    server: _PhoenixServer, tmp_path: Path
) -> None:
    server.ignore_range = True
    rel = phoenix_relpath(*WANT[0])
    part = tmp_path / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that must not survive" * 10)
    download(WANT[:1], tmp_path, base_url=server.url, retries=0, **FAST)
    assert (rel, f"bytes={len(b'garbage that must not survive') * 10}-") in server.log
    assert not part.exists()
    _same_files(server.root, tmp_path, [rel])


def test_download_complete_part_gets_416(server: _PhoenixServer, tmp_path: Path) -> None:
    rel = phoenix_relpath(*WANT[0])
    part = tmp_path / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes((server.root / rel).read_bytes())
    download(WANT[:1], tmp_path, base_url=server.url, retries=0, **FAST)
    assert (rel, f"bytes={part.with_suffix('').stat().st_size}-") in server.log
    assert not part.exists()
    _same_files(server.root, tmp_path, [rel])


def test_download_missing_file_names_url(server: _PhoenixServer, tmp_path: Path) -> None:
    p = GridPoint(9000.0, 4.5, 0.0)
    with pytest.raises(DownloadError, match=re.escape(url_for(p, server.url)) + ".*404"):
        download([p], tmp_path, base_url=server.url, retries=3, **FAST)
    assert server.log.count((phoenix_relpath(*p), None)) == 1  # a 404 is not retried


def test_download_rejects_non_fits(server: _PhoenixServer, tmp_path: Path) -> None:
    rel = phoenix_relpath(*WANT[0])
    (server.root / rel).write_bytes(b"<html>not found</html>")
    with pytest.raises(DownloadError, match="not a readable FITS"):
        download(WANT[:1], tmp_path, base_url=server.url, retries=0, **FAST)
    assert not (tmp_path / rel).exists()
    assert not (tmp_path / (rel + ".part")).exists()


@pytest.mark.parametrize("where", ["stall_before_headers", "stall_mid_body"])
def test_download_from_a_stalled_server_times_out(
    server: _PhoenixServer, tmp_path: Path, where: str
) -> None:
    """A server that keeps the connection open but sends nothing fails each attempt after
    ``timeout`` seconds (not never), with an error naming the URL and the timeout."""
    rel = phoenix_relpath(*WANT[0])
    getattr(server, where).add(rel)
    pattern = re.escape(server.url + rel) + r" after 2 attempt\(s\): timed out.* 0\.4 s"
    with pytest.raises(DownloadError, match=pattern):
        download(WANT[:1], tmp_path, base_url=server.url, timeout=0.4, retries=1, backoff=0.0)
    assert [r for r, _ in server.log].count(rel) == 2
    assert not (tmp_path / rel).exists()
    if where == "stall_mid_body":  # what arrived is kept for a later call to resume
        part = tmp_path / (rel + ".part")
        assert part.stat().st_size == (server.root / rel).stat().st_size // 2


def test_fetch_command_downloads_the_selection(
    server: _PhoenixServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`jblase fetch` selects from the paper's grid (here one point) and mirrors it."""
    out = tmp_path / "fetched"  # (tmp_path / "mirror" is what the server serves)
    argv = ["fetch", "--out", str(out), "--teff", "5750", "5850", "--logg", "4.5", "4.5"]
    argv += ["--feh", "0", "0", "--base-url", server.url, "--quiet"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(
        f"fetching 1 PHOENIX spectra (+ wavelength file) into {out}"
    )
    rels = [WAVELENGTH_FILENAME, phoenix_relpath(5800.0, 4.5, 0.0)]
    assert sorted(rel for rel, _ in server.log) == sorted(rels)
    _same_files(server.root, out, rels)
    assert PhoenixGrid(out).points() == [GridPoint(5800.0, 4.5, 0.0)]


def test_fetch_command_reports_a_failed_download(
    server: _PhoenixServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A point the server lacks (Teff 5700 K is in the paper's grid, not in this mirror):
    exit status 2 and one line naming the URL, no traceback."""
    argv = ["fetch", "--out", str(tmp_path), "--teff", "5700", "5700", "--logg", "4.5", "4.5"]
    argv += ["--feh", "0", "0", "--base-url", server.url, "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    url = url_for(GridPoint(5700.0, 4.5, 0.0), server.url)
    assert err == f"jblase fetch: error: cannot download {url}: HTTP 404 Not Found\n"


def test_fetch_command_defaults_to_the_official_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = {}

    def fake_download(points, cache_dir, base_url=PHOENIX_BASE_URL, **kwargs):
        seen.update(points=list(points), base_url=base_url)
        return []

    monkeypatch.setattr("jblase.grids.phoenix.download", fake_download)
    argv = ["fetch", "--out", str(tmp_path), "--teff", "5800", "5800", "--logg", "4.5", "4.5"]
    assert main([*argv, "--quiet"]) == 0
    assert seen["base_url"] == PHOENIX_BASE_URL
    assert seen["points"] == [GridPoint(5800.0, 4.5, -0.5), GridPoint(5800.0, 4.5, 0.0)]
