"""Data Docs work with no network: vendored assets, local links only, and JS that runs in Chromium.

The browser tests need Chromium (Debian package ``chromium``); they skip without it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import great_expectations
import pytest

from alignops.catalog.data_docs import DataDocsDataset
from alignops.preferences.validation_docs import (
    OFFLINE_ASSETS,
    VENDOR_DIR,
    VENDORED,
    localize,
)
from tests.data.helpers import clean_frame, set_values, validate

GX_TEMPLATES = Path(great_expectations.__file__).parent / "render" / "view" / "templates"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Chromium is not installed (apt-get install chromium)"
)
MAX_VENDORED_BYTES = 3_500_000

# What makes a browser fetch: a src/href on script, link, img or iframe, and a CSS url().
# Written apart from validation_docs' own patterns so the two cannot share a blind spot.
FETCHED = re.compile(
    r"""<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)=["']?([^"'\s>]+)"""
    r"""|url\(\s*["']?([^"')]+)""",
    re.IGNORECASE,
)
# Bootstrap-table gives each body row it renders a data-index; the static HTML has none.
RENDERED_ROW = re.compile(r"""<tr\b[^>]*\bdata-index="\d+"[^>]*>(.*?)</tr>""", re.DOTALL)


def fetched_urls(text: str) -> list[str]:
    return [src or css for src, css in FETCHED.findall(text)]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A Data Docs site for one quarantine run: all_rows fails one expectation, good_rows none."""
    outcome = validate(set_values(clean_frame(), 4, chosen=""), "quarantine")
    root = tmp_path_factory.mktemp("data_docs")
    DataDocsDataset(path=str(root)).save(outcome.data_docs)
    return root, outcome


def site_files(root: Path) -> list[Path]:
    """The files GX writes and we rewrite; the vendored tree is checked on its own."""
    return [p for p in root.rglob("*") if p.suffix in {".html", ".css"} and "vendor" not in p.parts]


def test_no_page_fetches_anything_from_the_network(site):
    root, _ = site
    remote = {
        str(page.relative_to(root)): urls
        for page in site_files(root)
        if (urls := [u for u in fetched_urls(page.read_text()) if re.match(r"(?i)https?:", u)])
    }
    # A GX upgrade that adds a CDN asset lands here: vendor it and map it in VENDORED.
    assert remote == {}


def test_every_local_asset_a_page_fetches_exists(site):
    root, _ = site
    pages = site_files(root)
    checked = 0
    for page in pages:
        for url in fetched_urls(page.read_text()):
            if url.startswith(("data:", "#")):
                continue
            assert (page.parent / url.split("?")[0]).is_file(), f"{page.relative_to(root)}: {url}"
            checked += 1
    # Each of the 4 pages loads 16 vendored files plus the logo and favicon.
    assert checked >= 4 * 18


def test_vendored_stylesheets_find_their_fonts(site):
    root, _ = site
    faces = 0
    for css in (root / "static" / "vendor").rglob("*.css"):
        # The browser takes the first source it can use: woff2, listed first, is what we ship.
        for first in re.findall(r"@font-face\s*\{[^}]*?src:\s*url\(([^)]+)\)", css.read_text()):
            assert (css.parent / first.strip("'\"")).is_file(), f"{css.name}: {first}"
            faces += 1
    assert faces >= 4  # Font Awesome: solid, regular, brands, v4 compatibility


def test_localize_counts_the_depth_and_drops_integrity_of_the_local_copy():
    page = (
        '<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>'
        '<script src="https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js"'
        ' integrity="sha384-x" crossorigin="anonymous"></script>'
        '<img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/'
        'logo-long.png?d=1"/>'
        '<link rel="shortcut icon" href="../../../static/images/favicon.ico"/>'
        '<a href="https://greatexpectations.io">GX</a>'
    )
    assert localize(page, depth=4) == (
        '<script src="../../../../static/vendor/jquery-3.7.1/jquery.min.js"></script>'
        '<script src="../../../../static/vendor/bootstrap-4.3.1/js/bootstrap.min.js"></script>'
        '<img src="../../../../static/images/logo-long.png"/>'
        '<link rel="shortcut icon" href="../../../../static/images/favicon.ico"/>'
        '<a href="https://greatexpectations.io">GX</a>'
    )
    assert localize(page, depth=0).startswith('<script src="static/vendor/jquery-3.7.1/')


def test_every_cdn_asset_in_the_gx_templates_is_vendored():
    """Covers templates our site does not render too (profiling pages, minimal pages)."""
    tags = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)=["'](https?://[^"']+)""")
    in_templates = {url for t in GX_TEMPLATES.glob("*.j2") for url in tags.findall(t.read_text())}
    assert in_templates and in_templates <= set(OFFLINE_ASSETS)


def test_vendored_files_are_the_bytes_gx_pins_by_hash():
    imports = (GX_TEMPLATES / "js_script_imports.j2").read_text()
    pinned = re.findall(r'src="([^"]+)" integrity="sha384-([^"]+)"', imports)
    assert len(pinned) == 2  # popper and bootstrap JS
    for url, digest in pinned:
        data = (VENDOR_DIR / VENDORED[url]).read_bytes()
        assert base64.b64encode(hashlib.sha384(data).digest()).decode() == digest, url


def test_vendored_tree_is_small_used_and_licensed():
    files = [p for p in VENDOR_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < MAX_VENDORED_BYTES
    assets = {p.relative_to(VENDOR_DIR).as_posix() for p in files if p.suffix in {".js", ".css"}}
    assert assets == set(VENDORED.values())  # nothing shipped that no page asks for
    readme = (VENDOR_DIR / "README.md").read_text()
    for package in {Path(a).parts[0] for a in assets}:
        assert list((VENDOR_DIR / package).glob("LICENSE*")), package
        assert f"`{package}/" in readme, package


def chromium(page: Path, profile: Path, *flags: str) -> subprocess.CompletedProcess:
    """Chromium headless on ``page``, given 5 s of virtual time for scripts to run."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--enable-logging=stderr",
        "--v=0",
        *flags,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def script_errors(run: subprocess.CompletedProcess) -> list[str]:
    """Console errors: an uncaught exception, or a script blocked (as SRI on file:// is)."""
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    return [line for line in console if re.search(r"Uncaught|blocked|Failed to load", line)]


@needs_chromium
def test_index_table_is_filled_in_by_bootstrap_table(site, tmp_path):
    root, outcome = site
    run = chromium(root / "index.html", tmp_path, "--dump-dom")
    assert script_errors(run) == []
    table = re.search(r"<table[^>]*validation-results-table.*?</table>", run.stdout, re.DOTALL)
    assert table, "no validation-results table in the index page"
    rendered = [tag for tag in re.findall(r"<tr\b[^>]*>", table[0]) if "data-index=" in tag]
    rows = [re.search(r'data-href="([^"]+)"', tag)[1] for tag in rendered]
    run_names = {r["meta"]["run_id"]["run_name"] for r in outcome.data_docs["validations"]}
    assert sorted(Path(href).parts[2] for href in rows) == sorted(run_names)
    assert all((root / href).is_file() for href in rows)


@needs_chromium
def test_validation_page_renders_every_expectation_result(site, tmp_path):
    root, outcome = site
    (page,) = (root / "validations").glob("*/all_rows/*/*.html")
    run = chromium(page, tmp_path, "--dump-dom")
    assert script_errors(run) == []
    rows = RENDERED_ROW.findall(run.stdout)
    expectations = outcome.report["runs"]["all_rows"]["expectations"]
    passed = [row for row in rows if "fa-check-circle" in row]
    (failed,) = [row for row in rows if "fa-times" in row]
    assert len(passed) == sum(e["success"] for e in expectations) == len(expectations) - 1
    assert "1 unexpected values found" in re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", failed))
