"""Packaging: a model version as an OCI image (build context, Dockerfile, build, push).

`context` writes the build context and Dockerfile, `runtime_deps` prepares the
Python packages on the host (no network inside the build), `builder` drives
podman/buildah/docker, `runtime` is what the image runs, and `package` ties
them together and records the image on the version's lineage.
"""
