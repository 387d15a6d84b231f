"""cmr_assets: CMR short-axis slice labelling, aggregation and classification as Dagster assets."""

__version__ = "0.1.0"
