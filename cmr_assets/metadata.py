"""Asset metadata helpers: pictures and tables the Dagster UI can show."""

from __future__ import annotations

import base64

import dagster as dg
import pandas as pd


def picture(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG shown inline on the asset page (markdown with a data URI)."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def table(frame: pd.DataFrame, max_rows: int = 50) -> dg.MetadataValue:
    """A small DataFrame as a markdown table."""
    return dg.MetadataValue.md(frame.head(max_rows).to_markdown(index=False))
