"""Reports of a run: what a reviewer needs to accept a model, as Markdown, HTML, JUnit XML or a PR comment.

`build` gathers the facts (run record, registry); `render` formats them;
`plots` draws PNGs; `junit` lets CI engines show the steps as tests; `github`
keeps one comment per pull request up to date.
"""
