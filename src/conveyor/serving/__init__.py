"""Serving: the prediction API (`app`) and the process that runs it (`server`).

Importing this package is cheap; Starlette, uvicorn and the model load when
`conveyor.serving.app` or `conveyor.serving.server` is imported.
"""
