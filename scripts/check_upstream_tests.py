#!/usr/bin/env python
"""Run Detectron2's own test suite against the installed Detectron2 and compare with a list.

Usage:
    python scripts/check_upstream_tests.py path/to/detectron2/tests \\
        --expected tests/upstream/expected_failures_v0.6.txt [-- extra pytest args]

The tests folder comes from an upstream checkout (`git archive v0.6 tests`); the checkout
itself or a source tarball (../shared/detectron2/detectron2-main.tar.gz) will do too. It is
copied to a temporary directory first, so that pytest never imports the checkout's
`detectron2/` sources instead of the installed package.

The expected-failures file has one entry a line:

    <category>  <test id or fnmatch pattern>  # why it fails

with the category one of compiled-op, network, caffe2, other ("other" needs its reason spelled
out), and test ids relative to the tests folder's parent (`tests/data/test_x.py::TestX::test_y`).
A failure no entry matches, an entry whose tests now pass, or an entry that matches no test at
all is reported, and the command exits with status 1. Collection and setup errors count as
failures. The summary (passed / skipped / failed by category) is printed as a Markdown table.
pytest prints one line per traceback; add `-- --tb=short` for more.

This module is also the pytest plugin (`-p check_upstream_tests`) that records each outcome.
"""

import argparse
import collections
import fnmatch
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

CATEGORIES = ("compiled-op", "network", "caffe2", "other")
RESULTS_ENV = "CHECK_UPSTREAM_RESULTS"  # where the plugin writes, one JSON object a line


# --- pytest plugin, loaded in the child pytest process ---


def _record(nodeid, outcome):
    with open(os.environ[RESULTS_ENV], "a") as f:
        f.write(json.dumps({"id": nodeid, "outcome": outcome}) + "\n")


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            outcome = "passed" if report.passed else "skipped"
        elif report.failed:
            outcome = "failed" if report.when == "call" else "error"
        else:
            outcome = report.outcome
        _record(report.nodeid, outcome)
    elif report.when == "teardown" and report.failed:
        _record(report.nodeid, "error")


def pytest_collectreport(report):
    # A module that fails to import, or skips itself as a whole (pytest.skip at module level).
    if report.failed:
        _record(report.nodeid, "error")
    elif report.skipped:
        _record(report.nodeid, "skipped")


# --- the checker ---


class Entry:
    def __init__(self, category, pattern, reason, line):
        self.category, self.pattern, self.reason, self.line = category, pattern, reason, line

    def matches(self, test_id):
        return fnmatch.fnmatchcase(test_id, self.pattern)


def read_expected(path):
    entries = []
    for number, raw in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        fields, _, reason = text.partition("#")
        parts = fields.split()
        where = f"{path}:{number}"
        if len(parts) != 2 or parts[0] not in CATEGORIES:
            raise SystemExit(
                f"{where}: expected '<category> <test id>  # reason' with category one of "
                f"{', '.join(CATEGORIES)}, got {raw!r}"
            )
        if not reason.strip():
            raise SystemExit(f"{where}: entry {parts[1]!r} gives no reason after '#'")
        entries.append(Entry(parts[0], parts[1], reason.strip(), where))
    return entries


def copy_tests(tests_from, dest):
    """Put Detectron2's tests/ folder at `dest`: from that folder, from a checkout holding it, or
    from a source tarball (`detectron2-main/tests/...`, as `git archive` makes it)."""
    tests_from = pathlib.Path(tests_from).resolve()
    if tests_from.is_file() and tarfile.is_tarfile(tests_from):
        with tarfile.open(tests_from) as tar:
            members = [m for m in tar.getmembers() if m.name.split("/")[1:2] == ["tests"]]
            for member in members:
                member.name = member.name.split("/", 1)[1]
            tar.extractall(dest.parent, members=members, filter="data")
    else:
        if (tests_from / "tests").is_dir() and (tests_from / "setup.py").is_file():
            tests_from = tests_from / "tests"
        if tests_from.is_dir():
            shutil.copytree(tests_from, dest, ignore=shutil.ignore_patterns("__pycache__"))
    if not dest.is_dir() or not any(dest.rglob("test_*.py")):
        raise SystemExit(
            f"{tests_from}: no test_*.py files; pass Detectron2's tests/ folder, a checkout or "
            "a source tarball"
        )


def run_suite(tests_dir, pytest_args):
    """Copy the tests folder away from its checkout, run it, return {test id: outcome}."""
    with tempfile.TemporaryDirectory(prefix="d2-upstream-") as tmp:
        tmp = pathlib.Path(tmp)
        copy_tests(tests_dir, tmp / "tests")
        results = tmp / "results.jsonl"
        env = dict(os.environ)
        env[RESULTS_ENV] = str(results)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(pathlib.Path(__file__).resolve().parent)]
            + env.get("PYTHONPATH", "").split(os.pathsep)
        ).rstrip(os.pathsep)
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [sys.executable, "-m", "pytest", "tests", "-p", "check_upstream_tests",
               "-p", "no:cacheprovider", f"--rootdir={tmp}", "--continue-on-collection-errors",
               "-q", "--tb=line", "--show-capture=no", *pytest_args]  # fmt: skip
        print("running:", " ".join(cmd), f"(in {tmp})", flush=True)
        subprocess.run(cmd, cwd=tmp, env=env)  # its exit status is judged against the list
        if not results.exists():
            raise SystemExit("pytest recorded no results (see its output above)")
        outcomes = {}
        for line in results.read_text().splitlines():
            record = json.loads(line)
            # An error in teardown overrides a pass; otherwise the first report stands.
            if record["id"] not in outcomes or record["outcome"] == "error":
                outcomes[record["id"]] = record["outcome"]
        return outcomes


def compare(outcomes, entries):
    """Sort outcomes against the list: counts by category and the problems found."""
    counts = collections.Counter()
    problems = []
    matched = collections.defaultdict(list)
    for test_id, outcome in sorted(outcomes.items()):
        entry = next((e for e in entries if e.matches(test_id)), None)
        if entry is not None:
            matched[entry].append((test_id, outcome))
        if outcome in ("failed", "error"):
            if entry is None:
                counts["failed: NEW"] += 1
                problems.append(f"NEW FAILURE ({outcome}): {test_id}")
            else:
                counts[f"failed: {entry.category}"] += 1
        else:
            counts[outcome] += 1
            if entry is not None and outcome == "passed":
                problems.append(f"EXPECTED TO FAIL, NOW PASSES: {test_id} ({entry.line})")
    for entry in entries:
        if not matched[entry]:
            problems.append(f"ENTRY MATCHES NO TEST: {entry.pattern} ({entry.line})")
    return counts, problems


def markdown_table(counts):
    order = ["passed", "skipped"] + [f"failed: {c}" for c in CATEGORIES] + ["failed: NEW"]
    rows = ["| outcome | tests |", "|---|---:|"]
    rows += [f"| {key} | {counts[key]} |" for key in order if counts.get(key)]
    rows.append(f"| total | {sum(counts.values())} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "tests_dir", help="Detectron2's tests/ folder, an upstream checkout or a source tarball"
    )
    parser.add_argument("--expected", required=True, help="expected-failures list")
    parser.add_argument("pytest_args", nargs="*", help="after --: extra arguments for pytest")
    args = parser.parse_args(argv)
    entries = read_expected(args.expected)
    try:  # the Detectron2 under test: which build (ms-rcnn's answer when it is importable)
        from ms_rcnn.env import detectron2_line
    except ImportError:
        import detectron2

        print(f"detectron2 {detectron2.__version__} at {pathlib.Path(detectron2.__file__).parent}")
    else:
        print(detectron2_line())
    counts, problems = compare(run_suite(args.tests_dir, args.pytest_args), entries)
    print("\n" + markdown_table(counts) + "\n")
    for problem in problems:
        print(problem)
    if problems:
        print(f"\n{len(problems)} difference(s) from {args.expected}")
        return 1
    print(f"as expected: every failure is listed in {args.expected}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
