"""The whole book builds in smoke mode with warnings as errors, and every chapter executed."""

from __future__ import annotations

import re

from test_book_structure import CHAPTERS, toc_files


def test_every_toc_page_is_built(smoke_site):
    for page in toc_files():
        assert (smoke_site / f"{page}.html").is_file(), f"{page} was not built"


def test_every_chapter_shows_executed_outputs(smoke_site):
    for chapter in CHAPTERS:
        html = (smoke_site / f"{chapter}.html").read_text()
        outputs = len(re.findall(r'class="cell_output', html))
        assert outputs >= 1, f"{chapter}: no cell output in the built page (was it executed?)"
        assert "Traceback (most recent call last)" not in html, f"{chapter}: a traceback is shown"
