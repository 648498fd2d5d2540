"""`make deploy-check`: the deploy artefacts, checked offline, as a bank's platform team
would before letting them near a cluster.

- **helm**: the chart renders (through the Helm library in `helm-python-sdk`, no `helm`
  binary) with its defaults plus the required values (`values-required.yaml`) and with
  `values-production.yaml`, and lints clean; the defaults alone are refused with the
  message that names what is missing.
- **kubernetes**: every rendered manifest validates against the Kubernetes API's schemas
  (`kubernetes-validate`, strict: an unknown field fails) for the cluster version given;
  the ServiceMonitor against `servicemonitor.schema.json` beside this file.
- **checkov**: over the rendered chart, `deploy/terraform` and `deploy/Dockerfile`; every
  check failed on purpose is skipped inline with its reason, so any failure here is new.
- **prometheus**: `promtool check rules`, `promtool test rules` and `promtool check config`
  on `deploy/prometheus`.
- **compose**: `deploy/compose.yaml` against the Compose specification's JSON schema (the
  copy `check-jsonschema` ships).

Nothing is downloaded: the schemas come with the packages, checkov runs with
`--skip-download`. Exit 0 when every check passes, 1 otherwise (each failure printed), 2
when a tool is missing (named, with how to install it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DEPLOY = HERE.parent
ROOT = DEPLOY.parent
CHART = DEPLOY / "helm" / "vigil"
VALUES = {
    "required": HERE / "values-required.yaml",
    "production": CHART / "values-production.yaml",
}
SERVICE_MONITOR_SCHEMA = HERE / "servicemonitor.schema.json"
KUBE_VERSION = "1.31"  # the EKS version the chart is written for
RELEASE, NAMESPACE = "vigil", "vigil"
REQUIRED_MESSAGE = "secrets.existingSecret is required"
TOOL_TIMEOUT_S = 600
STEPS = ("helm", "kubernetes", "checkov", "prometheus", "compose")


class ToolMissing(Exception):
    """A tool this check needs is not installed; the message says how to get it."""


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    rendered: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # values -> docs

    def fail(self, what: str) -> None:
        self.failures.append(what)
        print(f"    FAIL {what}", flush=True)

    def ok(self, what: str) -> None:
        print(f"    ok   {what}", flush=True)


# Helm --------------------------------------------------------------------------------------


def _helm() -> Any:
    try:
        import helm_python
    except ImportError as error:  # the package is there but its library would not load
        raise ToolMissing(
            f"the Helm library cannot be loaded ({error}): `make install` installs "
            "helm-python-sdk; it bundles Helm as a shared library for Linux x86_64/arm64"
        ) from error
    return helm_python


def render(values_file: Path | None) -> dict[str, str]:
    """The chart's manifests, rendered as `helm install` would, by template path."""
    helm = _helm()
    chart = helm.Chart.load(str(CHART))
    values = helm.values_from_yaml(values_file.read_text()) if values_file else None
    rendered: dict[str, str] = chart.render(
        values, name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    return rendered


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def check_helm(report: Report) -> None:
    helm = _helm()
    try:
        render(None)
    except helm.HelmError as error:
        if REQUIRED_MESSAGE in str(error):
            report.ok("the defaults alone are refused, naming what is missing")
        else:
            report.fail(f"the defaults alone are refused, but not for the Secret: {error}")
    else:
        report.fail("the defaults alone rendered: the chart must require its Secret")
    for name, path in VALUES.items():
        try:
            docs = documents(render(path))
        except helm.HelmError as error:
            report.fail(f"render with {path.name}: {error}")
            continue
        report.rendered[name] = docs
        kinds = sorted({d["kind"] for d in docs})
        report.ok(f"render with {path.name}: {len(docs)} manifests ({', '.join(kinds)})")
        values = helm.values_from_yaml(path.read_text())
        lint = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}.0")
        # Severity 3 is an error, 2 a warning; 1 (info: "icon is recommended") is not ours.
        found = [m for m in lint.get("messages", []) if int(m.get("severity", 0)) >= 2]
        found += [{"error": e} for e in lint.get("errors") or []]
        if found:
            report.fail(f"helm lint --strict with {path.name}: {found}")
        else:
            report.ok(f"helm lint --strict with {path.name}")


# Kubernetes schemas -------------------------------------------------------------------------


def validate_manifest(doc: dict[str, Any], kube_version: str = KUBE_VERSION) -> str | None:
    """Why `doc` is not a valid object of the Kubernetes API (or of the ServiceMonitor
    CRD), or None when it is."""
    import jsonschema
    import kubernetes_validate

    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if doc.get("kind") == "ServiceMonitor":
        schema = json.loads(SERVICE_MONITOR_SCHEMA.read_text())
        errors = sorted(
            jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: e.path
        )
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path)
            return f"{name}: {where}: {errors[0].message}"
        return None
    try:
        kubernetes_validate.validate(doc, kube_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"{name}: {error.message}"
    except kubernetes_validate.SchemaNotFoundError as error:
        return f"{name}: no schema for {doc.get('apiVersion')} {doc.get('kind')} ({error})"
    return None


def check_kubernetes(report: Report) -> None:
    if not report.rendered:
        report.fail("nothing rendered to validate (see helm above)")
        return
    for values, docs in report.rendered.items():
        problems = [p for p in (validate_manifest(d) for d in docs) if p]
        for problem in problems:
            report.fail(f"{values}: {problem}")
        if not problems:
            report.ok(
                f"{values}: {len(docs)} manifests valid for Kubernetes {KUBE_VERSION} (strict)"
            )


# checkov ----------------------------------------------------------------------------------------


def checkov_binary(given: str | None) -> str:
    candidates = [given] if given else [str(ROOT / ".venv-checkov" / "bin" / "checkov")]
    candidates.append(shutil.which("checkov") or "")
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ToolMissing(
        "checkov is not installed: `make deploy-check` installs it into .venv-checkov "
        "(its pinned dependencies clash with Vigil's, so it has a venv of its own)"
    )


def _checkov(binary: str, *args: str) -> tuple[int, dict[str, Any] | list[Any], str]:
    env = os.environ | {
        "BC_SKIP_MAPPING": "TRUE",  # no download of the platform's check mappings
        "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
        "LOG_LEVEL": "ERROR",
    }
    result = subprocess.run(
        [binary, *args, "--skip-download", "--output", "json", "--compact", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    try:
        parsed = json.loads(result.stdout) if result.stdout.strip() else {}
    except json.JSONDecodeError:
        parsed = {}
    return result.returncode, parsed, result.stderr[-2000:]


def _checkov_results(parsed: dict[str, Any] | list[Any]) -> Iterator[dict[str, Any]]:
    """checkov prints one object per framework, or a list of them."""
    yield from parsed if isinstance(parsed, list) else [parsed]


def check_checkov(report: Report, binary: str) -> None:
    with tempfile.TemporaryDirectory(prefix="vigil-deploy-check-") as tmp:
        targets: list[tuple[str, list[str]]] = []
        for values, docs in report.rendered.items():
            folder = Path(tmp) / values
            folder.mkdir()
            for number, doc in enumerate(docs):
                (folder / f"{number:02d}-{doc['kind'].lower()}.yaml").write_text(
                    yaml.safe_dump(doc, sort_keys=False)
                )
            targets.append((f"chart ({values})", ["-d", str(folder), "--framework", "kubernetes"]))
        targets.append(("terraform", ["-d", str(DEPLOY / "terraform"), "--framework", "terraform"]))
        targets.append(
            ("Dockerfile", ["-f", str(DEPLOY / "Dockerfile"), "--framework", "dockerfile"])
        )
        for what, args in targets:
            code, parsed, stderr = _checkov(binary, *args)
            summary = {"passed": 0, "failed": 0, "skipped": 0}
            failed: list[str] = []
            for block in _checkov_results(parsed):
                block_summary = block.get("summary", {})
                for key in summary:
                    summary[key] += int(block_summary.get(key, 0))
                for check in block.get("results", {}).get("failed_checks", []):
                    failed.append(
                        f"{check.get('check_id')} {check.get('check_name')} "
                        f"({check.get('resource')}, {Path(check.get('file_path', '')).name})"
                    )
            if not parsed:
                report.fail(f"checkov {what}: no result (exit {code}): {stderr}")
            elif failed or summary["passed"] == 0:
                for line in failed or ["no check ran"]:
                    report.fail(f"checkov {what}: {line}")
            else:
                report.ok(
                    f"checkov {what}: {summary['passed']} passed, "
                    f"{summary['skipped']} skipped inline with a reason"
                )


# Prometheus ---------------------------------------------------------------------------------


def promtool_binary(given: str | None) -> str:
    binary = given or shutil.which("promtool")
    if not binary:
        raise ToolMissing(
            "promtool is not installed: `apt-get install prometheus` (Debian's package has "
            "it; CI's .ci/run installs it when missing)"
        )
    return binary


def check_prometheus(report: Report, promtool: str) -> None:
    folder = DEPLOY / "prometheus"
    for args in (
        ("check", "rules", "rules.yaml"),
        ("test", "rules", "rules.test.yaml"),
        # Syntax only: the files it names exist in the Prometheus container, not here.
        ("check", "config", "--syntax-only", "prometheus.yml"),
    ):
        result = subprocess.run(
            [promtool, *args],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_S,
            check=False,
        )
        what = f"promtool {' '.join(args)}"
        if result.returncode != 0:
            report.fail(f"{what}: {(result.stdout + result.stderr).strip()[-3000:]}")
        else:
            report.ok(what)


# Compose ------------------------------------------------------------------------------------


def check_compose(report: Report) -> None:
    compose = DEPLOY / "compose.yaml"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "check_jsonschema"),
            *("--builtin-schema", "vendor.compose-spec", str(compose)),
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        report.fail(f"compose.yaml: {(result.stdout + result.stderr).strip()[-3000:]}")
    else:
        report.ok("compose.yaml valid against the Compose specification's schema")


# The run ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", action="append", choices=STEPS, help="run only this step (repeatable)"
    )
    parser.add_argument("--checkov", help="the checkov program (default: .venv-checkov's)")
    parser.add_argument("--promtool", help="the promtool program (default: on PATH)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = args.only or list(STEPS)
    report = Report()
    started = time.monotonic()
    try:
        # Every tool first: a missing one is said before anything runs.
        runners: dict[str, Callable[[], None]] = {
            "helm": lambda: check_helm(report),
            "kubernetes": lambda: check_kubernetes(report),
            "compose": lambda: check_compose(report),
        }
        if "checkov" in steps:
            binary = checkov_binary(args.checkov)
            runners["checkov"] = lambda: check_checkov(report, binary)
        if "prometheus" in steps:
            promtool = promtool_binary(args.promtool)
            runners["prometheus"] = lambda: check_prometheus(report, promtool)
        if {"kubernetes", "checkov"} & set(steps) and "helm" not in steps:
            steps.insert(0, "helm")  # they check what it renders
        _helm()
        for step in STEPS:
            if step in steps:
                print(f"deploy-check: {step}", flush=True)
                runners[step]()
    except ToolMissing as missing:
        print(f"deploy-check: {missing}", file=sys.stderr)
        return 2
    seconds = time.monotonic() - started
    if report.failures:
        print(f"deploy-check: {len(report.failures)} failed ({seconds:.0f} s):", file=sys.stderr)
        for failure in report.failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print(f"deploy-check: every check passed ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
