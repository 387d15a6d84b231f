"""What a person does on the ranking page, as browser-automation steps (Playwright `Page` objects).

Shared by the browser tests and `scripts/take_screenshots.py`, so both drive the page the same way.
"""

from __future__ import annotations

from typing import Any


def ranking_strip(page: Any) -> list[str]:
    """Items of the ranking strip in screen order: 'D' for a divider, else the image index."""
    return page.eval_on_selector_all(
        "#strip > li", "items => items.map(li => li.dataset.kind === 'divider' ? 'D' : li.dataset.index)")


def drag_before(page: Any, source: str, target: str) -> None:
    """Press on `source`, move in steps onto the left quarter of `target`, release: insert before it."""
    start, end = page.locator(source).bounding_box(), page.locator(target).bounding_box()
    page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 3)
    page.mouse.down()
    page.mouse.move(end["x"] + end["width"] / 4, end["y"] + end["height"] / 3, steps=12)
    page.mouse.up()
