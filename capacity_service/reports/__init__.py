"""Reports of stored results: plots (matplotlib, imported only by them) and CSV export
(imported by the API, so nothing here may pull in matplotlib or torch)."""
