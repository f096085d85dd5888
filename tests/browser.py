"""Headless Chromium from Debian's package for the page tests: run it on a URL (a screenshot or
the DOM it built), read the screenshot's pixels, and parse a page into an element tree."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest

CHROMIUM = "/usr/bin/chromium"
WINDOW = (1280, 1600)
HEADER_RGB = (0x1F, 0x3B, 0x5A)


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def find(self, tag: str = "", cls: str = "") -> list[Node]:
        return [
            n for n in self.walk() if (not tag or n.tag == tag) and (not cls or cls in n.classes)
        ]

    def text(self) -> str:
        parts = (c if isinstance(c, str) else c.text() for c in self.children)
        return re.sub(r"\s+", " ", "".join(parts)).strip()


class TreeBuilder(HTMLParser):
    """The element tree as an HTML serialisation spells it (no repair: what is written nests)."""

    VOID = frozenset({"meta", "br", "img", "link", "input", "hr", "col", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", {}, None)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def tree(page: str) -> Node:
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    return builder.root


def sections(root: Node) -> list[Node]:
    return root.find("section", "case")


def layout(node: Node) -> list[str]:
    """The tags of a node's child elements, with their first class."""
    return [".".join([c.tag, *c.classes[:1]]) for c in node.children if isinstance(c, Node)]


def only(root: Node, tag: str = "", cls: str = "") -> Node:
    found = root.find(tag, cls)
    assert len(found) == 1, (tag, cls, [n.text() for n in found])
    return found[0]


def chromium_or_skip(path: str, env: dict[str, str]) -> str:
    """The browser's path; without it the test is skipped, except in CI (CI set), where it fails."""
    if os.access(path, os.X_OK):
        return path
    reason = f"{path} is missing: `make chromium` installs Debian's package"
    if env.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


def run_chromium(url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    browser = chromium_or_skip(CHROMIUM, dict(os.environ))
    profile = tempfile.mkdtemp(prefix="casewatch-chromium-")
    try:
        return subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                *args,
                url,
            ],
            capture_output=True,
            timeout=90,
            check=True,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def png_top(data: bytes, rows: int) -> tuple[tuple[int, int], list[list[bytes]]]:
    """The size of an 8-bit RGB or RGBA PNG, and its first `rows` rows as RGB pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) in {(8, 2), (8, 6)}, (depth, colour)
    bpp, idat, pos = 3 if colour == 2 else 4, b"", 8
    while pos < len(data):
        length, chunk = struct.unpack(">I4s", data[pos : pos + 8])
        idat += data[pos + 8 : pos + 8 + length] if chunk == b"IDAT" else b""
        pos += 12 + length
    stride = width * bpp
    raw = zlib.decompressobj().decompress(idat, (stride + 1) * rows)
    pixels, prior = [], bytearray(stride)
    for r in range(rows):
        start = r * (stride + 1)
        line = bytearray(raw[start + 1 : start + 1 + stride])
        unfilter(raw[start], line, prior, bpp)
        pixels.append([bytes(line[i : i + 3]) for i in range(0, stride, bpp)])
        prior = line
    return (width, height), pixels


def unfilter(method: int, line: bytearray, prior: bytearray, bpp: int) -> None:
    """Undoes a PNG row filter in place (None, Sub, Up, Average, Paeth)."""
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b, c = prior[i], prior[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        paeth = a if pa <= pb and pa <= pc else b if pb <= pc else c
        line[i] = (line[i] + (0, a, b, (a + b) // 2, paeth)[method]) & 0xFF
