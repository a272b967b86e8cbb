"""The built site's launch buttons (Colab, Binder) and download buttons lead to files that exist.

Builds the smoke site once per session into _build/test-site (the same folder as conftest's
`smoke_site`), reusing a build that is newer than every source.
"""

from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import nbformat
import pytest

from tools.chapters import ROOT, chapter_sources, load_config, repository
from tools.notebooks import notebook_from_myst

COLAB = "https://colab.research.google.com"
BINDER = "https://mybinder.org"


@pytest.fixture(scope="session")
def launch_site(smoke_site) -> Path:
    return smoke_site


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def links(html_path: Path) -> list[str]:
    parser = _Links()
    parser.feed(html_path.read_text())
    return parser.hrefs


def _is_git_ignored(path: Path) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode == 0


def repo_file_of_launch_link(url: str) -> Path:
    """The repository file a Colab or Binder link opens (asserting org, repo and branch)."""
    repo = repository()
    parsed = urlparse(url)
    if url.startswith(COLAB):
        prefix = f"/github/{repo.org}/{repo.name}/blob/{repo.branch}/"
        assert parsed.path.startswith(prefix), f"{url} does not open {repo.url} at {repo.branch}"
        rel = parsed.path[len(prefix):]
    elif url.startswith(BINDER):
        assert parsed.path == f"/v2/gh/{repo.org}/{repo.name}/{repo.branch}", url
        (urlpath,) = parse_qs(parsed.query)["urlpath"]
        ui = {"classic": "tree/", "jupyterlab": "lab/tree/"}[load_config()["launch_buttons"]["notebook_interface"]]
        assert urlpath.startswith(ui), url
        rel = urlpath[len(ui):]
    else:
        raise AssertionError(f"not a launch link: {url}")
    return ROOT / rel


CHAPTERS = chapter_sources()


@pytest.mark.slow
@pytest.mark.parametrize("md_path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_launch_buttons_open_its_committed_notebook(launch_site: Path, md_path: Path):
    page = launch_site / md_path.relative_to(ROOT).with_suffix(".html")
    hrefs = links(page)
    colab = [h for h in hrefs if h.startswith(COLAB)]
    binder = [h for h in hrefs if h.startswith(BINDER)]
    assert len(colab) == 1 and len(binder) == 1, f"{page.name}: expected one Colab and one Binder link, got {colab + binder}"
    for url in colab + binder:
        target = repo_file_of_launch_link(url)
        assert target == md_path.with_suffix(".ipynb"), f"{url} opens {target}, not the chapter's notebook"
        assert target.is_file(), f"{url} opens {target.relative_to(ROOT)}, which does not exist: run `make notebooks`"
        assert not _is_git_ignored(target), f"{target.relative_to(ROOT)} is git-ignored, so not on GitHub"
        nbformat.validate(nbformat.read(target, as_version=4))


@pytest.mark.slow
def test_every_launch_link_on_the_site_resolves(launch_site: Path):
    found = 0
    for page in launch_site.rglob("*.html"):
        for url in links(page):
            if url.startswith((COLAB, BINDER)):
                found += 1
                assert repo_file_of_launch_link(url).is_file(), f"{page.name}: {url} opens a missing file"
    assert found >= 2 * len(CHAPTERS)


@pytest.mark.slow
@pytest.mark.parametrize("md_path", CHAPTERS, ids=lambda p: p.stem)
def test_download_button_offers_the_notebook(launch_site: Path, md_path: Path):
    rel = md_path.relative_to(ROOT)
    page = launch_site / rel.with_suffix(".html")
    hrefs = links(page)
    depth = len(rel.parts) - 1
    expected = "../" * depth + f"_sources/{rel.with_suffix('.ipynb').as_posix()}"
    assert expected in hrefs, f"{page.name}: no download link {expected}"
    downloaded = nbformat.read(launch_site / "_sources" / rel.with_suffix(".ipynb"), as_version=4)
    # The download holds the chapter's cells, the Colab set-up cell included, so it runs where it
    # is uploaded. (With execute_notebooks: cache, myst-nb writes it without outputs.)
    source = notebook_from_myst(md_path.read_text())
    assert [(c.cell_type, c.source) for c in downloaded.cells] == [(c.cell_type, c.source) for c in source.cells]


@pytest.mark.slow
def test_repository_and_issue_buttons(launch_site: Path):
    hrefs = links(launch_site / "book" / "first_vae.html")
    repo = repository()
    assert repo.url in hrefs
    assert any(h.startswith(f"{repo.url}/issues/new") for h in hrefs)


def test_binder_configuration():
    binder = ROOT / "binder"
    requirements = (binder / "requirements.txt").read_text().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    for line in requirements:
        if line.startswith("-r "):
            assert (binder / line[3:].strip()).is_file(), line
    post_build = binder / "postBuild"
    assert os.access(post_build, os.X_OK), "binder/postBuild must be executable"
    assert "pip install --no-deps -e ." in post_build.read_text()
    runtime = (binder / "runtime.txt").read_text().strip()
    assert runtime == f"python-{sys.version_info.major}.{sys.version_info.minor}", (
        f"binder/runtime.txt says {runtime}; the toolchain is tested on {sys.version.split()[0]}")
