"""The README is a front door: short, and every link in it leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_LINES = 200
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_is_at_most_200_lines() -> None:
    assert len(README.read_text().splitlines()) <= MAX_LINES


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    broken = []
    for page in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+://|^mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
            elif anchor and resolved.suffix == ".md":
                headings = {
                    re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                    for line in resolved.read_text().splitlines()
                    if line.startswith("#")
                }
                if anchor not in headings:
                    broken.append(f"{page.relative_to(REPO)} -> {target} (no such heading)")
    assert not broken
