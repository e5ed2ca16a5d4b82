"""The domain package of the cancel function app: settings, records, api-key, upstream, cancel."""

__version__ = "1.0.0"
