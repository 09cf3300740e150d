#!/usr/bin/env python3
"""Validates tickflow's deployment artefacts offline: the Kubernetes manifests in k8s/, the
Prometheus configuration and the Grafana dashboard in deploy/.

Run it through scripts/validate-k8s.sh, which provides a virtualenv with kubernetes-validate,
jsonschema and PyYAML. Nothing here needs a cluster or the network:

  * every kustomization.yaml is checked for references that do not exist (resources, patch files,
    patch targets) and for YAML files beside it that it forgets to list;
  * every kustomization is rendered with `kustomize build` or `kubectl kustomize` when one of them
    is installed (without either, a simplified rendering in Python stands in: resources, delete
    patches, namespace and images);
  * every manifest, as written and as rendered, is validated against the Kubernetes JSON schemas
    bundled in kubernetes-validate (strict: unknown fields are errors), for each Kubernetes
    version asked for; the custom resources (KEDA ScaledObject and TriggerAuthentication, Strimzi
    KafkaTopic) against the JSON schemas in k8s/schemas/;
  * the rendered objects are cross-checked: selectors select pods, named ports exist, referenced
    ConfigMaps, Secrets and keys exist (Secrets from *.example.yaml), `$(VAR)` references resolve,
    autoscalers target existing Deployments, and the security settings and resources required of
    every tickflow container are there;
  * the Grafana dashboard is valid JSON of the expected shape whose queries parse as PromQL
    (promql-parser) and only use metrics that tickflow exports; prometheus.yml is valid YAML of
    the expected shape. With a `promtool` on the PATH, both are also checked by it.

Exits 1 if anything is invalid, naming each file and object that is.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import kubernetes_validate
import promql_parser
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
SCHEMAS = K8S / "schemas"
DASHBOARD = ROOT / "deploy" / "grafana" / "tickflow-dashboard.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# Kubernetes versions whose schemas the manifests must satisfy: the oldest supported one and the
# newest bundled in the pinned kubernetes-validate (catches APIs removed since).
DEFAULT_K8S_VERSIONS = "1.30,1.37"

# The binaries in the image (deploy/Dockerfile) and the uid they run as.
BINARIES = {"ingest", "router", "indicators", "persister", "replayer", "tickflow"}
IMAGE_UID = 10001

# The metrics the binaries export (histograms also as _bucket, _sum and _count): the dashboard
# may query no other. Keep in step with the metrics!() calls in crates/.
METRICS = {
    "tickflow_ingest_ticks_received_total",
    "tickflow_ingest_publish_failed_total",
    "tickflow_ingest_spool_depth",
    "tickflow_router_ticks_total",
    "tickflow_router_rejects_total",
    "tickflow_indicators_ticks_total",
    "tickflow_indicators_tick_to_update_seconds",
    "tickflow_indicators_subscribers",
    "tickflow_indicators_events_dropped_total",
    "tickflow_indicators_snapshot_errors_total",
    "tickflow_persister_rows_stored_total",
    "tickflow_persister_duplicates_total",
    "tickflow_persister_batch_rows",
    "tickflow_persister_commit_seconds",
    "tickflow_persister_breaker_open",
    "tickflow_consumer_lag",
}

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "resources", "components", "patches", "patchesStrategicMerge",
    "patchesJson6902", "namespace", "namePrefix", "nameSuffix", "labels", "commonLabels",
    "commonAnnotations", "images", "replicas", "configMapGenerator", "secretGenerator",
    "generatorOptions", "replacements", "buildMetadata", "openapi", "crds", "sortOptions",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


# ---------------------------------------------------------------------------------------------
# Reporting


@dataclass
class Report:
    passed: int = 0
    failures: list[str] = field(default_factory=list)

    seen: set[str] = field(default_factory=set)

    def ok(self, what: str) -> None:
        if what in self.seen:  # a base is checked again under each overlay
            return
        self.seen.add(what)
        self.passed += 1
        print(f"ok    {what}")

    def fail(self, what: str) -> None:
        if what in self.seen:
            return
        self.seen.add(what)
        self.failures.append(what)
        print(f"FAIL  {what}")

    def note(self, what: str) -> None:
        print(f"note  {what}")


def rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def ident(doc: dict) -> str:
    md = doc.get("metadata") or {}
    name = md.get("name") or (md.get("generateName", "") + "*")
    return f"{doc.get('kind', '?')}/{name}"


# ---------------------------------------------------------------------------------------------
# YAML loading (duplicate keys are errors: PyYAML would silently keep the last one)


class StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r}", key_node.start_mark)
        seen[key] = key_node
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_docs(path: Path, report: Report) -> list[Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return [d for d in yaml.load_all(f, Loader=StrictLoader) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        report.fail(f"{rel(path)}: not valid YAML: {e}")
        return None


# ---------------------------------------------------------------------------------------------
# Schema validation


class SchemaValidator:
    def __init__(self, versions: list[str], report: Report):
        self.versions = versions
        self.report = report
        self.crds: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
        for path in sorted(SCHEMAS.glob("*.json")):
            try:
                schema = json.loads(path.read_text())
                jsonschema.Draft202012Validator.check_schema(schema)
                key = (schema["properties"]["apiVersion"]["const"], schema["properties"]["kind"]["const"])
            except (ValueError, KeyError, jsonschema.SchemaError) as e:
                report.fail(f"{rel(path)}: not a usable schema: {e}")
                continue
            self.crds[key] = jsonschema.Draft202012Validator(schema)
        supported = kubernetes_validate.utils.all_versions()
        for v in versions:
            if not any(s.startswith(v + ".") or s == v for s in supported):
                report.fail(f"kubernetes-validate {kubernetes_validate.__version__} bundles no schemas "
                            f"for Kubernetes {v} (it has {supported[0]} to {supported[-1]})")

    def validate(self, doc: Any, origin: str) -> bool:
        """Validates one object; reports and returns whether it is valid."""
        if not isinstance(doc, dict):
            self.report.fail(f"{origin}: a YAML document that is not an object")
            return False
        missing = [k for k in ("apiVersion", "kind", "metadata") if k not in doc]
        md = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        if not (md.get("name") or md.get("generateName")):
            missing.append("metadata.name")
        if missing:
            self.report.fail(f"{origin}: {ident(doc)}: missing {', '.join(missing)}")
            return False
        what = f"{origin}: {ident(doc)}"
        crd = self.crds.get((doc["apiVersion"], doc["kind"]))
        if crd is not None:
            errors = sorted(crd.iter_errors(doc), key=lambda e: list(e.absolute_path))
            if errors:
                for e in errors:
                    path = ".".join(str(p) for p in e.absolute_path) or "(root)"
                    self.report.fail(f"{what}: {path}: {e.message}")
                return False
            self.report.ok(f"{what} (k8s/schemas)")
            return True
        ok = True
        for v in self.versions:
            try:
                kubernetes_validate.validate(doc, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(root)"
                self.report.fail(f"{what}: Kubernetes {v}: {path}: {e.message}")
                ok = False
            except kubernetes_validate.SchemaNotFoundError:
                self.report.fail(f"{what}: no schema for {doc['apiVersion']} {doc['kind']} in "
                                 f"Kubernetes {v}, nor in k8s/schemas/")
                return False
            except Exception as e:  # noqa: BLE001 - any other failure is a failed check too
                self.report.fail(f"{what}: could not be validated: {e}")
                return False
        if ok:
            self.report.ok(f"{what} (Kubernetes {', '.join(self.versions)})")
        return ok


# ---------------------------------------------------------------------------------------------
# Kustomizations: references, orphans, rendering


def kustomization_file(d: Path) -> Path | None:
    for n in KUSTOMIZATION_NAMES:
        if (d / n).is_file():
            return d / n
    return None


def group_of(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


@dataclass
class Kustomization:
    dir: Path
    spec: dict
    patch_files: set[Path]
    listed: set[Path]


def load_kustomization(d: Path, report: Report) -> Kustomization | None:
    kf = kustomization_file(d)
    docs = load_yaml_docs(kf, report)
    if docs is None:
        return None
    if len(docs) != 1 or not isinstance(docs[0], dict):
        report.fail(f"{rel(kf)}: must hold exactly one object")
        return None
    spec = docs[0]
    unknown = set(spec) - KUSTOMIZATION_FIELDS
    if unknown:
        report.fail(f"{rel(kf)}: unknown fields {sorted(unknown)}")
    patch_files, listed = set(), set()
    for entry in spec.get("resources") or []:
        listed.add((d / str(entry)).resolve())
    for entry in spec.get("components") or []:
        listed.add((d / str(entry)).resolve())
    for p in spec.get("patches") or []:
        if isinstance(p, dict) and "path" in p:
            patch_files.add((d / str(p["path"])).resolve())
    for p in spec.get("patchesStrategicMerge") or []:
        if isinstance(p, str) and "\n" not in p:
            patch_files.add((d / p).resolve())
    for p in spec.get("patchesJson6902") or []:
        if isinstance(p, dict) and "path" in p:
            patch_files.add((d / str(p["path"])).resolve())
    return Kustomization(d, spec, patch_files, listed | patch_files)


def matches_target(doc: dict, target: dict) -> bool:
    md = doc.get("metadata") or {}
    api = doc.get("apiVersion", "")
    checks = [
        ("kind", doc.get("kind", "")),
        ("name", md.get("name", "")),
        ("namespace", md.get("namespace", "")),
        ("group", group_of(api)),
        ("version", api.split("/")[-1]),
    ]
    for key, value in checks:
        if key in target and not re.fullmatch(str(target[key]), value or ""):
            return False
    for key, field_name in (("labelSelector", "labels"), ("annotationSelector", "annotations")):
        if key in target:
            have = md.get(field_name) or {}
            for term in str(target[key]).split(","):
                k, _, v = term.partition("=")
                if have.get(k.strip()) != v.strip():
                    return False
    return True


def collect(d: Path, report: Report, seen: tuple[Path, ...] = ()) -> list[dict] | None:
    """Checks a kustomization's references and returns its objects, rendered the simple way:
    resources (recursively), delete patches, namespace and images. Reports what it cannot find."""
    d = d.resolve()
    if d in seen:
        report.fail(f"{rel(d)}: kustomization cycle through {' -> '.join(rel(s) for s in seen)}")
        return None
    k = load_kustomization(d, report)
    if k is None:
        return None
    where = rel(kustomization_file(d))
    objects: list[dict] = []
    ok = True
    for entry in k.spec.get("resources") or []:
        entry = str(entry)
        if "://" in entry or entry.startswith(("github.com/", "git@")):
            report.fail(f"{where}: resource {entry!r} is remote; everything must be in the repository")
            ok = False
            continue
        target = (d / entry).resolve()
        if target.is_dir():
            if kustomization_file(target) is None:
                report.fail(f"{where}: resource {entry!r} is a directory without a kustomization.yaml")
                ok = False
                continue
            sub = collect(target, report, seen + (d,))
            if sub is None:
                ok = False
            else:
                objects.extend(sub)
        elif target.is_file():
            docs = load_yaml_docs(target, report)
            if docs is None:
                ok = False
            else:
                objects.extend(copy.deepcopy(x) for x in docs if isinstance(x, dict))
        else:
            report.fail(f"{where}: resource {entry!r} does not exist")
            ok = False

    def patch_docs(p: dict | str, label: str) -> list[Any] | None:
        if isinstance(p, str):  # patchesStrategicMerge: a file or an inline patch
            if "\n" in p:
                return [x for x in yaml.load_all(p, Loader=StrictLoader) if x is not None]
            p = {"path": p}
        if "path" in p:
            path = (d / str(p["path"])).resolve()
            if not path.is_file():
                report.fail(f"{where}: {label} file {p['path']!r} does not exist")
                return None
            return load_yaml_docs(path, report)
        if "patch" in p:
            try:
                return [x for x in yaml.load_all(str(p["patch"]), Loader=StrictLoader) if x is not None]
            except yaml.YAMLError as e:
                report.fail(f"{where}: {label} is not valid YAML: {e}")
                return None
        report.fail(f"{where}: {label} has neither path nor patch")
        return None

    patches: list[tuple[str, Any]] = [(f"patches[{i}]", p) for i, p in enumerate(k.spec.get("patches") or [])]
    patches += [(f"patchesStrategicMerge[{i}]", p) for i, p in enumerate(k.spec.get("patchesStrategicMerge") or [])]
    patches += [(f"patchesJson6902[{i}]", p) for i, p in enumerate(k.spec.get("patchesJson6902") or [])]
    for label, p in patches:
        docs = patch_docs(p, label)
        if docs is None:
            ok = False
            continue
        target = p.get("target") if isinstance(p, dict) else None
        if target is not None:
            if not any(matches_target(o, target) for o in objects):
                report.fail(f"{where}: {label} targets {target}, which matches no resource")
                ok = False
            continue
        for pd in docs:
            if isinstance(pd, list):
                report.fail(f"{where}: {label} is a JSON patch without a target")
                ok = False
                continue
            if not isinstance(pd, dict) or "kind" not in pd or not (pd.get("metadata") or {}).get("name"):
                report.fail(f"{where}: {label} names no kind and metadata.name to patch")
                ok = False
                continue
            hits = [o for o in objects
                    if o.get("kind") == pd["kind"]
                    and (o.get("metadata") or {}).get("name") == pd["metadata"]["name"]
                    and group_of(o.get("apiVersion", "")) == group_of(pd.get("apiVersion", ""))]
            if not hits:
                report.fail(f"{where}: {label} patches {ident(pd)}, which is not among the resources")
                ok = False
            elif pd.get("$patch") == "delete":
                objects = [o for o in objects if all(o is not h for h in hits)]
    if k.spec.get("namespace"):
        for o in objects:
            o.setdefault("metadata", {})["namespace"] = k.spec["namespace"]
    for img in k.spec.get("images") or []:
        for o in objects:
            for c in pod_containers(o):
                image = c.get("image", "")
                name = re.split(r"[:@]", image, maxsplit=1)[0]
                if name == img.get("name"):
                    new = img.get("newName", name)
                    tag = img.get("newTag")
                    c["image"] = f"{new}:{tag}" if tag else f"{new}{image[len(name):]}"
    if ok:
        report.ok(f"{where}: every resource and patch it references exists")
    return objects


def render(d: Path, report: Report) -> tuple[list[dict], str] | None:
    if shutil.which("kustomize"):
        cmd, tool = ["kustomize", "build", str(d)], "kustomize build"
    elif shutil.which("kubectl"):
        cmd, tool = ["kubectl", "kustomize", str(d)], "kubectl kustomize"
    else:
        return None
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        report.fail(f"{rel(d)}: {tool} failed: {r.stderr.strip()}")
        return [], tool
    try:
        docs = [x for x in yaml.load_all(r.stdout, Loader=StrictLoader) if x is not None]
    except yaml.YAMLError as e:
        report.fail(f"{rel(d)}: {tool} printed invalid YAML: {e}")
        return [], tool
    report.ok(f"{rel(d)}: rendered by {tool} ({len(docs)} objects)")
    return docs, tool


# ---------------------------------------------------------------------------------------------
# Cross-checks of rendered objects


def pod_template(doc: dict) -> dict | None:
    if doc.get("kind") in WORKLOAD_KINDS:
        return ((doc.get("spec") or {}).get("template")) or {}
    if doc.get("kind") == "CronJob":
        return (((doc.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    return None


def pod_containers(doc: dict, init: bool = True) -> list[dict]:
    t = pod_template(doc)
    if t is None:
        return []
    spec = t.get("spec") or {}
    return list(spec.get("containers") or []) + (list(spec.get("initContainers") or []) if init else [])


def labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@dataclass
class Context:
    """The objects a set of manifests may refer to."""
    objects: list[dict]
    external_secrets: dict[str, dict]  # name -> example Secret (not applied by kustomize)

    def find(self, kind: str, name: str) -> dict | None:
        for o in self.objects:
            if o.get("kind") == kind and (o.get("metadata") or {}).get("name") == name:
                return o
        if kind == "Secret":
            return self.external_secrets.get(name)
        return None


def data_keys(obj: dict) -> set[str]:
    return set((obj.get("data") or {})) | set((obj.get("stringData") or {})) | set((obj.get("binaryData") or {}))


def container_env_names(c: dict, ctx: Context) -> set[str]:
    names: set[str] = set()
    for ef in c.get("envFrom") or []:
        prefix = ef.get("prefix", "")
        for kind, ref in (("ConfigMap", ef.get("configMapRef")), ("Secret", ef.get("secretRef"))):
            if ref:
                obj = ctx.find(kind, ref.get("name", ""))
                if obj:
                    names |= {prefix + k for k in data_keys(obj)}
    names |= {e.get("name") for e in c.get("env") or []}
    return names


VAR_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def check_workload(doc: dict, origin: str, ctx: Context, report: Report) -> None:
    what = f"{origin}: {ident(doc)}"
    problems: list[str] = []
    tmpl = pod_template(doc) or {}
    tlabels = (tmpl.get("metadata") or {}).get("labels") or {}
    annotations = (tmpl.get("metadata") or {}).get("annotations") or {}
    pspec = tmpl.get("spec") or {}
    if doc["kind"] == "Deployment":
        sel = ((doc.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not labels_match(sel, tlabels):
            problems.append(f"selector {sel} does not match the pod template's labels {tlabels}")
    psc = pspec.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        problems.append("pod securityContext.runAsNonRoot is not true")
    if psc.get("runAsUser") != IMAGE_UID:
        problems.append(f"pod securityContext.runAsUser is not {IMAGE_UID} (the image's user)")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("pod securityContext.seccompProfile.type is not RuntimeDefault")
    volumes = {v.get("name") for v in pspec.get("volumes") or []}
    for c in pod_containers(doc):
        cname = c.get("name", "?")
        cmd = c.get("command") or []
        if not cmd or cmd[0] not in BINARIES:
            problems.append(f"container {cname}: command {cmd} does not start with one of the image's "
                            f"binaries {sorted(BINARIES)}")
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {cname}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"container {cname}: readOnlyRootFilesystem is not true")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"container {cname}: capabilities.drop does not include ALL")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(part) or {}):
                    problems.append(f"container {cname}: no resources.{part}.{r}")
        ports = c.get("ports") or []
        port_names = {p.get("name") for p in ports if p.get("name")}
        port_numbers = {p.get("containerPort") for p in ports}
        probes = ["livenessProbe"] + (["readinessProbe"] if doc["kind"] == "Deployment" else [])
        for probe in probes:
            if probe not in c:
                problems.append(f"container {cname}: no {probe}")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            pr = c.get(probe) or {}
            for handler in ("httpGet", "tcpSocket", "grpc"):
                port = (pr.get(handler) or {}).get("port")
                if port is None:
                    continue
                if isinstance(port, str) and port not in port_names:
                    problems.append(f"container {cname}: {probe} uses port {port!r}, which no container port is named")
                if isinstance(port, int) and port not in port_numbers:
                    problems.append(f"container {cname}: {probe} uses port {port}, which is not a container port")
        scrape_port = annotations.get("prometheus.io/port")
        if annotations.get("prometheus.io/scrape") == "true":
            if not scrape_port or not scrape_port.isdigit() or int(scrape_port) not in port_numbers:
                problems.append(f"container {cname}: prometheus.io/port {scrape_port!r} is not a container port")
            env_values = {e.get("name"): e.get("value") for e in c.get("env") or []}
            maddr = env_values.get("TICKFLOW_METRICS_ADDR")
            if maddr and scrape_port and not maddr.endswith(":" + scrape_port):
                problems.append(f"container {cname}: TICKFLOW_METRICS_ADDR {maddr} is not on the scraped port {scrape_port}")
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                problems.append(f"container {cname}: volumeMount {m.get('name')!r} has no volume")
        # References to ConfigMaps, Secrets, their keys, and $(VAR) expansions.
        defined: set[str] = set()
        for ef in c.get("envFrom") or []:
            for kind, ref in (("ConfigMap", ef.get("configMapRef")), ("Secret", ef.get("secretRef"))):
                if ref and not ref.get("optional") and ctx.find(kind, ref.get("name", "")) is None:
                    problems.append(f"container {cname}: envFrom {kind} {ref.get('name')!r} does not exist")
        defined |= container_env_names({"envFrom": c.get("envFrom")}, ctx)
        for e in c.get("env") or []:
            vf = e.get("valueFrom") or {}
            for kind, ref in (("ConfigMap", vf.get("configMapKeyRef")), ("Secret", vf.get("secretKeyRef"))):
                if not ref or ref.get("optional"):
                    continue
                obj = ctx.find(kind, ref.get("name", ""))
                if obj is None:
                    problems.append(f"container {cname}: env {e.get('name')} refers to {kind} {ref.get('name')!r}, which does not exist")
                elif ref.get("key") not in data_keys(obj):
                    problems.append(f"container {cname}: env {e.get('name')} refers to key {ref.get('key')!r}, "
                                    f"which {kind} {ref.get('name')!r} does not have")
            for var in VAR_REF.findall(str(e.get("value", ""))):
                if var not in defined:
                    problems.append(f"container {cname}: env {e.get('name')} uses $({var}), which is not defined before it")
            defined.add(e.get("name"))
        for part in ("command", "args"):
            for arg in c.get(part) or []:
                for var in VAR_REF.findall(str(arg)):
                    if var not in defined:
                        problems.append(f"container {cname}: {part} uses $({var}), which is not defined")
    if problems:
        for p in problems:
            report.fail(f"{what}: {p}")
    else:
        report.ok(f"{what}: references, probes, ports, security context and resources")


def check_cross(objects: list[dict], origin: str, ctx: Context, report: Report) -> None:
    workloads = [o for o in objects if pod_template(o) is not None]
    for o in workloads:
        check_workload(o, origin, ctx, report)
    deployments = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "Deployment"}
    scaled: dict[str, str] = {}
    for o in objects:
        kind, what = o.get("kind"), f"{origin}: {ident(o)}"
        spec = o.get("spec") or {}
        problems: list[str] = []
        if kind == "Service":
            sel = spec.get("selector") or {}
            pods = [w for w in workloads if labels_match(sel, ((pod_template(w) or {}).get("metadata") or {}).get("labels") or {})]
            if not pods:
                problems.append(f"selector {sel} selects no pod template")
            for p in spec.get("ports") or []:
                tp = p.get("targetPort")
                if isinstance(tp, str) and pods and not any(
                        tp in {cp.get("name") for c in pod_containers(w) for cp in c.get("ports") or []} for w in pods):
                    problems.append(f"port {p.get('name')}: targetPort {tp!r} is no container port of the selected pods")
        elif kind == "PodDisruptionBudget":
            sel = (spec.get("selector") or {}).get("matchLabels") or {}
            if not any(labels_match(sel, ((pod_template(w) or {}).get("metadata") or {}).get("labels") or {}) for w in workloads):
                problems.append(f"selector {sel} selects no pod template")
        elif kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            ref = spec.get("scaleTargetRef") or {}
            name = ref.get("name", "")
            target = deployments.get(name) if ref.get("kind", "Deployment") == "Deployment" else None
            if target is None:
                problems.append(f"scaleTargetRef {ref} is not a Deployment here")
            else:
                if name in scaled:
                    problems.append(f"Deployment {name} is already scaled by {scaled[name]}")
                scaled[name] = ident(o)
                if "replicas" in (target.get("spec") or {}):
                    problems.append(f"Deployment {name} sets spec.replicas, which every apply would reset "
                                    f"under the autoscaler")
                containers = pod_containers(target, init=False)
                needs_cpu = kind == "HorizontalPodAutoscaler" or any(
                    t.get("type") == "cpu" for t in spec.get("triggers") or [])
                if needs_cpu and not all("cpu" in ((c.get("resources") or {}).get("requests") or {}) for c in containers):
                    problems.append(f"scales on CPU utilisation but Deployment {name} has a container without a CPU request")
                if kind == "ScaledObject":
                    cname = ref.get("envSourceContainerName")
                    source = next((c for c in containers if c.get("name") == cname), None) if cname else (containers or [None])[0]
                    env = container_env_names(source, ctx) if source else set()
                    for i, t in enumerate(spec.get("triggers") or []):
                        for key, value in (t.get("metadata") or {}).items():
                            if key.endswith("FromEnv") and value not in env:
                                problems.append(f"triggers[{i}].metadata.{key}: {value} is not in the environment "
                                                f"of Deployment {name}'s container")
                        auth = (t.get("authenticationRef") or {}).get("name")
                        if auth and ctx.find("TriggerAuthentication", auth) is None:
                            problems.append(f"triggers[{i}].authenticationRef: TriggerAuthentication {auth!r} does not exist")
        elif kind == "TriggerAuthentication":
            for ref in spec.get("secretTargetRef") or []:
                secret = ctx.find("Secret", ref.get("name", ""))
                if secret is None:
                    problems.append(f"secretTargetRef {ref.get('parameter')}: Secret {ref.get('name')!r} does not exist")
                elif ref.get("key") not in data_keys(secret):
                    problems.append(f"secretTargetRef {ref.get('parameter')}: Secret {ref.get('name')!r} has no key {ref.get('key')!r}")
        else:
            continue
        if problems:
            for p in problems:
                report.fail(f"{what}: {p}")
        else:
            report.ok(f"{what}: references")


# ---------------------------------------------------------------------------------------------
# Prometheus and Grafana


def promtool() -> str | None:
    return shutil.which("promtool")


def check_prometheus(report: Report) -> None:
    docs = load_yaml_docs(PROMETHEUS, report)
    if docs is None:
        return
    where = rel(PROMETHEUS)
    problems = []
    if len(docs) != 1 or not isinstance(docs[0], dict):
        problems.append("must hold exactly one YAML object")
    else:
        jobs = docs[0].get("scrape_configs")
        if not isinstance(jobs, list) or not jobs:
            problems.append("has no scrape_configs")
        else:
            names = [j.get("job_name") for j in jobs if isinstance(j, dict)]
            if len(names) != len(jobs) or None in names:
                problems.append("a scrape config has no job_name")
            if len(set(names)) != len(names):
                problems.append(f"duplicate job_name in {names}")
            if not any("kubernetes_sd_configs" in j for j in jobs):
                problems.append("no kubernetes_sd_configs job")
            if not any("static_configs" in j for j in jobs):
                problems.append("no static_configs job")
    for p in problems:
        report.fail(f"{where}: {p}")
    if not problems:
        report.ok(f"{where}: valid YAML with {len(docs[0]['scrape_configs'])} scrape configs")
    if promtool():
        r = subprocess.run([promtool(), "check", "config", "--syntax-only", str(PROMETHEUS)],
                           capture_output=True, text=True)
        if r.returncode:
            report.fail(f"{where}: promtool check config: {(r.stdout + r.stderr).strip()}")
        else:
            report.ok(f"{where}: promtool check config")


METRIC_NAME = re.compile(r"\btickflow_[a-z0-9_]+")


def dashboard_exprs(panels: list[dict]) -> Iterable[tuple[dict, dict]]:
    for p in panels:
        yield from ((p, t) for t in p.get("targets") or [])
        yield from dashboard_exprs(p.get("panels") or [])


def grafana_to_promql(expr: str) -> str:
    """Replaces Grafana's interval variables with durations, as Grafana does before querying."""
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "1h")


def check_dashboard(report: Report) -> None:
    where = rel(DASHBOARD)
    try:
        dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        report.fail(f"{where}: not valid JSON: {e}")
        return
    problems = []
    for key in ("title", "uid", "panels", "schemaVersion", "templating"):
        if key not in dash:
            problems.append(f"no {key}")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    if (variables.get("DS_PROMETHEUS") or {}).get("type") != "datasource":
        problems.append("no datasource variable DS_PROMETHEUS")
    panels = dash.get("panels") or []
    ids = []
    all_panels = list(panels) + [c for p in panels for c in p.get("panels") or []]
    for p in all_panels:
        ids.append(p.get("id"))
        if "gridPos" not in p or "type" not in p:
            problems.append(f"panel {p.get('title')!r} has no gridPos or type")
    if len(set(ids)) != len(ids) or None in ids:
        problems.append(f"panel ids are missing or not unique: {ids}")
    cells: dict[tuple[int, int], str] = {}
    for p in all_panels:
        g = p.get("gridPos") or {}
        if g.get("x", 0) + g.get("w", 0) > 24:
            problems.append(f"panel {p.get('title')!r} is wider than the 24-column grid")
        for cy in range(g.get("y", 0), g.get("y", 0) + g.get("h", 0)):
            for cx in range(g.get("x", 0), g.get("x", 0) + g.get("w", 0)):
                if (cx, cy) in cells:
                    problems.append(f"panel {p.get('title')!r} overlaps panel {cells[(cx, cy)]!r}")
                    break
                cells[(cx, cy)] = p.get("title")
            else:
                continue
            break
    exprs = []
    for p, t in dashboard_exprs(panels):
        title = p.get("title")
        ds = t.get("datasource") or p.get("datasource") or {}
        if ds.get("uid") != "${DS_PROMETHEUS}":
            problems.append(f"panel {title!r}: a query's datasource is not ${{DS_PROMETHEUS}}")
        expr = t.get("expr", "")
        if not expr:
            problems.append(f"panel {title!r}: a query has no expr")
        exprs.append((title, expr))
        try:
            promql_parser.parse(grafana_to_promql(expr))
        except ValueError as e:
            problems.append(f"panel {title!r}: not valid PromQL ({e}): {expr}")
        for name in METRIC_NAME.findall(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in METRICS and base not in METRICS:
                problems.append(f"panel {title!r}: {name} is not a metric tickflow exports")
            if name.endswith("_bucket") and "histogram_quantile" not in expr:
                problems.append(f"panel {title!r}: {name} outside histogram_quantile")
            if name.endswith("_total") and not re.search(r"\b(rate|irate|increase)\s*\(", expr):
                problems.append(f"panel {title!r}: counter {name} without rate()/increase()")
    if not exprs:
        problems.append("no queries")
    for p in problems:
        report.fail(f"{where}: {p}")
    if not problems:
        report.ok(f"{where}: valid dashboard, {len(all_panels)} panels, {len(exprs)} PromQL queries on known metrics")
    if promtool() and exprs:
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query:{i}", "expr": grafana_to_promql(e)}
            for i, (_, e) in enumerate(exprs)]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            yaml.safe_dump(rules, f)
        try:
            r = subprocess.run([promtool(), "check", "rules", f.name], capture_output=True, text=True)
        finally:
            os.unlink(f.name)
        if r.returncode:
            report.fail(f"{where}: promtool rejects a query: {(r.stdout + r.stderr).strip()}")
        else:
            report.ok(f"{where}: every query parses (promtool)")


def check_dockerfile(report: Report) -> None:
    where = rel(DOCKERFILE)
    try:
        text = DOCKERFILE.read_text()
    except OSError as e:
        report.fail(f"{where}: {e}")
        return
    problems = [f"does not build/copy the binary {b}" for b in sorted(BINARIES) if not re.search(rf"\b{b}\b", text)]
    if not re.search(rf"^USER {IMAGE_UID}\b", text, re.M):
        problems.append(f"does not switch to USER {IMAGE_UID}")
    for p in problems:
        report.fail(f"{where}: {p}")
    if not problems:
        report.ok(f"{where}: the six binaries and USER {IMAGE_UID}, as the manifests expect")


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k8s-versions", default=os.environ.get("TICKFLOW_K8S_VERSIONS", DEFAULT_K8S_VERSIONS),
                    help="comma-separated Kubernetes versions to validate against (default %(default)s)")
    args = ap.parse_args()
    versions = [v.strip().lstrip("v") for v in args.k8s_versions.split(",") if v.strip()]
    report = Report()
    print(f"kubernetes-validate {kubernetes_validate.__version__} (schemas for Kubernetes "
          f"{', '.join(versions)}), jsonschema {version('jsonschema')}, PyYAML {yaml.__version__}, "
          f"promql-parser {version('promql-parser')}")
    validator = SchemaValidator(versions, report)

    files = sorted(p for ext in ("*.yaml", "*.yml") for p in K8S.rglob(ext))
    kdirs = sorted({p.parent for p in files if p.name in KUSTOMIZATION_NAMES})
    kustomizations = {d: load_kustomization(d, report) for d in kdirs}
    patch_files = set().union(*(k.patch_files for k in kustomizations.values() if k)) if kustomizations else set()

    # Files a kustomization forgets: every manifest beside a kustomization.yaml must be listed
    # (examples, which are applied by hand, excepted).
    for d, k in kustomizations.items():
        if k is None:
            continue
        for p in files:
            if p.parent == d and p.name not in KUSTOMIZATION_NAMES and not p.name.endswith(".example.yaml") \
                    and p.resolve() not in k.listed:
                report.fail(f"{rel(p)}: not listed in {rel(kustomization_file(d))} (resources or patches)")

    # 1. Every manifest as written.
    external_secrets: dict[str, dict] = {}
    standalone: list[tuple[Path, list[dict]]] = []
    for p in files:
        if p.name in KUSTOMIZATION_NAMES:
            continue
        docs = load_yaml_docs(p, report)
        if docs is None:
            continue
        if p.resolve() in patch_files:
            report.ok(f"{rel(p)}: valid YAML (a patch)")
            continue
        if not docs:
            report.fail(f"{rel(p)}: holds no manifest")
        for doc in docs:
            validator.validate(doc, rel(p))
            if isinstance(doc, dict) and doc.get("kind") == "Secret" and p.name.endswith(".example.yaml"):
                external_secrets[(doc.get("metadata") or {}).get("name", "")] = doc
        if not any(p.parent == d or d in p.parents for d in kdirs):
            standalone.append((p, [d for d in docs if isinstance(d, dict)]))

    # 2. Every kustomization as rendered, then the cross-checks.
    rendered_base: list[dict] = []
    for d in kdirs:
        simple = collect(d, report)
        out = render(d, report)
        if out is None:
            report.note(f"{rel(d)}: neither kustomize nor kubectl is installed; checking the simplified rendering")
            objects = simple or []
        elif not out[0]:
            objects = simple or []  # rendering failed (reported): cross-check what can be
        else:
            objects = out[0]
        for o in objects:
            validator.validate(o, f"{rel(d)} (rendered)")
        ctx = Context(objects, external_secrets)
        check_cross(objects, f"{rel(d)} (rendered)", ctx, report)
        if d == K8S / "base":
            rendered_base = objects

    # 3. Manifests outside any kustomization (the replayer Job) refer to the base's objects.
    for p, docs in standalone:
        check_cross(docs, rel(p), Context(rendered_base + docs, external_secrets), report)

    # 4. Monitoring and the image.
    check_prometheus(report)
    check_dashboard(report)
    check_dockerfile(report)

    print()
    if report.failures:
        print(f"{len(report.failures)} problem(s):")
        for f in report.failures:
            print(f"  {f}")
    print(f"validate-k8s: {report.passed} passed, {len(report.failures)} failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
