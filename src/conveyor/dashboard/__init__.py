"""`conveyor ui`: a read-only web dashboard over the run store, the registry and the local deployment.

Server-rendered (Jinja2) pages with a JSON twin under `/api/…` each, charts
drawn as SVG on the server, and one small vendored script that refreshes the
live serving numbers. Nothing here writes: the registry is read through an
engine of its own opened read-only (`reader.py`), never through `Registry`,
which upgrades a database's schema when it opens it.
"""
