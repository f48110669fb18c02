"""CI engines: files for GitHub Actions, GitLab CI and Jenkins that run the line, and their checks.

The generated files call `conveyor` and pip only; what the line does stays in
the line, so a team that moves engines changes one generated file.
"""
