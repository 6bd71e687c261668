"""A Kedro dataset that writes Great Expectations Data Docs, so the catalog owns where they go.

Saving takes the ``data_docs`` payload of :func:`alignops.preferences.validation.validate_preferences`
(the suite and the validation results as JSON), puts them in the stores of an
in-memory GX context whose only Data Docs site is a ``SiteBuilder`` writing to
``path``, and builds that site: ``path/index.html`` plus the suite page and one page
per validation run.

GX pages load their CSS, JavaScript and logo from CDNs, which our users cannot reach.
After GX writes the site, :func:`make_offline` copies the vendored assets
(``data_docs_vendor/``, see its README) to ``static/vendor/`` and rewrites every known
CDN URL to a path relative to the page, so the site works from ``file://`` alone.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import great_expectations as gx
from great_expectations.core.expectation_validation_result import (
    ExpectationSuiteValidationResultSchema,
)
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)

from alignops.preferences.validation_suite import ephemeral_context

logger = logging.getLogger(__name__)

SITE_NAME = "alignops"
# One batch per run: pages land at validations/<suite>/<run name>/<run time>/<batch>.html
BATCH_NAME = "preferences"

#: What a previous build left behind; only these are removed, never anything else under ``path``.
_SITE_ENTRIES = ("index.html", "expectations", "validations", "static")

VENDOR_DIR = Path(__file__).with_name("data_docs_vendor")
_SITE_VENDOR = "static/vendor/"
_GX_WEB_ASSETS = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"

#: Each CDN file GX 1.24's templates load → its copy under ``data_docs_vendor/``.
VENDORED: dict[str, str] = {
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery-3.7.1/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": (
        "popper.js-1.12.9/popper.min.js"
    ),
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": (
        "bootstrap-4.3.1/css/bootstrap.min.css"
    ),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": (
        "bootstrap-4.3.1/js/bootstrap.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": (
        "bootstrap-table-1.19.1/bootstrap-table.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": (
        "bootstrap-table-1.19.1/bootstrap-table.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.js": (
        "bootstrap-table-1.19.1/extensions/filter-control/bootstrap-table-filter-control.min.js"
    ),
    # The index page asks for the .min.css, the other pages for the full .css of the same release.
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.css": (
        "bootstrap-table-1.19.0/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.css": (
        "bootstrap-table-1.19.0/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/"
    "bootstrap-datepicker.min.css": "bootstrap-datepicker-1.9.0/css/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/"
    "bootstrap-datepicker.min.js": "bootstrap-datepicker-1.9.0/js/bootstrap-datepicker.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": (
        "fontawesome-free-6.6.0/css/all.min.css"
    ),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/"
    "bootstrap-prefers-dark.css": "bootstrap-dark-1.1.0/bootstrap-prefers-dark.min.css",
    # jsDelivr resolves these floating majors; the README says which release we pinned and why.
    "https://cdn.jsdelivr.net/npm/vega@5": "vega-5.33.1/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite-5.23.0/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed-6.29.0/vega-embed.min.js",
}
#: Every remote file GX pages load → the file, relative to the site root, that replaces it.
#: Keys are compared without their query string (GX adds ``?d=<time>`` to the logo).
OFFLINE_ASSETS: dict[str, str] = {url: _SITE_VENDOR + file for url, file in VENDORED.items()} | {
    _GX_WEB_ASSETS + "logo-long.png": "static/images/logo-long.png",
    # GX ships no dark-mode logo, so dark mode shows the light one rather than nothing.
    _GX_WEB_ASSETS + "full_logo_dark.png": "static/images/logo-long.png",
}

# The tags that make a browser fetch something, the src/href URL in one, and a CSS url().
_FETCHING_TAG = re.compile(r"<(?:script|link|img|iframe)\b[^>]*>", re.IGNORECASE)
_ATTR_URL = re.compile(r"""(?P<lead>\b(?:src|href)=["'])(?P<url>https?://[^"'\s]+)""")
_CSS_URL = re.compile(r"""(?P<lead>url\(["']?)(?P<url>https?://[^"'\s)]+)""")
# Subresource Integrity forces a CORS fetch, which Chromium refuses for file:// pages
# ("origin 'null'"), so a local copy loads without it. The tests check the copies against
# GX's hashes instead.
_SRI_ATTRS = re.compile(r"""\s+(?:integrity|crossorigin)=(?:"[^"]*"|'[^']*')""")
# A page's link into the site's own static/ folder. GX counts the depth of validation pages
# one short for the favicon (../../../static on a page four folders down), so we recount it.
_STATIC_REF = re.compile(r"""(?P<lead>\b(?:src|href)=["'])(?:\./|(?:\.\./)*)static/""")


def build_data_docs(payload: dict[str, Any], directory: Path) -> Path:
    """Render the suite and validation results of ``payload`` as a Data Docs site."""
    directory = directory.resolve()
    site = {
        "class_name": "SiteBuilder",
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(directory),
        },
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    context = ephemeral_context(data_docs_sites={SITE_NAME: site})
    context.suites.add(gx.ExpectationSuite(**payload["suite"]))
    for result_json in payload["validations"]:
        result = ExpectationSuiteValidationResultSchema().load(result_json)
        run = result.meta["run_id"]
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=result.suite_name),
            run_id=RunIdentifier(run_name=run["run_name"], run_time=run["run_time"]),
            batch_identifier=BATCH_NAME,
        )
        context.validation_results_store.set(key, result)

    # The site builder only adds pages: clear the last run's so the index shows this run only.
    for entry in _SITE_ENTRIES:
        target = directory / entry
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    context.build_data_docs(site_names=[SITE_NAME])
    make_offline(directory)
    return directory / "index.html"


def localize(text: str, depth: int) -> str:
    """Point every fetched URL of ``text`` found in ``OFFLINE_ASSETS`` at the local copy.

    ``depth`` is how many folders below the site root the file lives, so the path
    stays relative and the site works wherever it is copied or served. Links GX already
    makes into ``static/`` get the same prefix.
    """
    up = "../" * depth

    def local(match: re.Match) -> str:
        target = OFFLINE_ASSETS.get(match["url"].split("?", 1)[0])
        return match[0] if target is None else match["lead"] + up + target

    def local_tag(match: re.Match) -> str:
        tag = _ATTR_URL.sub(local, match[0])
        return tag if tag == match[0] else _SRI_ATTRS.sub("", tag)

    text = _STATIC_REF.sub(lambda match: match["lead"] + up + "static/", text)
    text = _FETCHING_TAG.sub(local_tag, text)
    return _CSS_URL.sub(local, text)


def remote_loads(text: str) -> list[str]:
    """The http(s) URLs in ``text`` that a browser would fetch: scripts, stylesheets, images."""
    in_tags = (m["url"] for tag in _FETCHING_TAG.finditer(text) for m in _ATTR_URL.finditer(tag[0]))
    return [*in_tags, *(m["url"] for m in _CSS_URL.finditer(text))]


def make_offline(directory: Path) -> None:
    """Copy the vendored assets into the site at ``directory`` and rewrite its pages to use them."""
    shutil.copytree(VENDOR_DIR, directory / _SITE_VENDOR, dirs_exist_ok=True)
    pages = [
        directory / "index.html",
        *(directory / "expectations").rglob("*.html"),
        *(directory / "validations").rglob("*.html"),
        *(directory / "static" / "styles").glob("*.css"),
    ]
    for page in pages:
        depth = len(page.relative_to(directory).parts) - 1
        text = localize(page.read_text(encoding="utf-8"), depth)
        page.write_text(text, encoding="utf-8")
        if remote := remote_loads(text):
            # Not an error: the page still renders, only that asset is missing offline.
            logger.warning("Data Docs page %s still loads from the network: %s", page, remote)
