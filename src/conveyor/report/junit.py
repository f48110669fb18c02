"""The run's steps as JUnit XML, so Jenkins' `junit` and GitLab's test reports show them."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from conveyor.runs import Run


def junit_xml(run: Run) -> str:
    """One testcase per step and one per gate; a failed one carries its summary as the failure."""
    suite = ET.Element("testsuite", name=f"conveyor run {run.id}")
    failures = skipped = 0
    cases: list[tuple[str, str, float, str, str]] = []  # classname, name, seconds, status, message
    for step in run.steps:
        if step.kind == "gates" and step.data.get("results"):
            for gate in step.data["results"]:
                cases.append(("gates", str(gate["gate"]), 0.0, "passed" if gate["passed"] else "failed",
                              str(gate.get("detail", ""))))
        else:
            cases.append((step.kind, step.name, step.duration_s or 0.0, step.status, step.summary))
    for classname, name, seconds, status, message in cases:
        case = ET.SubElement(suite, "testcase", classname=classname, name=name, time=f"{seconds:.3f}")
        if status in ("failed", "interrupted"):
            failures += 1
            ET.SubElement(case, "failure", message=message[:500]).text = message
        elif status == "skipped":
            skipped += 1
            ET.SubElement(case, "skipped", message=message[:500])
    total = sum(step.duration_s or 0.0 for step in run.steps)
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(skipped))
    suite.set("time", f"{total:.3f}")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
