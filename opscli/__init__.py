"""ftcancel, the operator's command line for the cancel function app: enqueue, results, cancel."""
