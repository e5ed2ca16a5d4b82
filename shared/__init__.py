"""The domain package of the cancel function app: settings, records, api-key, upstream, cancel."""
