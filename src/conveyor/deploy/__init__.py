"""Deployment targets: where a model version goes live.

`local` runs the model server as a background process of this machine; other
targets (container, Kubernetes) get a module each beside it.
"""
