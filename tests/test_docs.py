"""The documentation's links: every relative link or image in the project's Markdown names a
file of the repository (recorded figures and tables move between sessions; a stale link is a
figure the reader cannot see)."""

import os
import pathlib
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LINK = re.compile(r"\]\(([^)#\s]+)")


def relative_links(text: str) -> list[str]:
    """The targets of Markdown links and images in `text` that are paths, not URLs (anchors
    dropped)."""
    return [t for t in _LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def project_markdown() -> list[str]:
    """README.md and the Markdown under benchmarks/ and docs/, relative to the repository."""
    root = pathlib.Path(ROOT)
    found = [root / "README.md", *root.glob("benchmarks/**/*.md"), *root.glob("docs/**/*.md")]
    return sorted(str(path.relative_to(root)) for path in found)


def test_relative_links_finds_paths_not_urls():
    text = "![a](docs/x.png) [b](https://e.org/y) [c](../z.md#part) [d](mailto:a@b)"
    assert relative_links(text) == ["docs/x.png", "../z.md"]


@pytest.mark.parametrize("path", project_markdown())
def test_every_relative_link_names_a_file(path):
    with open(os.path.join(ROOT, path)) as f:
        targets = relative_links(f.read())
    folder = os.path.dirname(os.path.join(ROOT, path))
    missing = [t for t in targets if not os.path.exists(os.path.normpath(os.path.join(folder, t)))]
    assert not missing, f"{path} links to files that do not exist: {missing}"
