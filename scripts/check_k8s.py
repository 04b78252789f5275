#!/usr/bin/env python3
"""Offline checks of herald's Kubernetes material; run by scripts/check-k8s.sh in its venv.

  check_k8s.py --root REPO --src SRC --versions 1.25,1.37 --deployable dev,prod \
               NAME=rendered.yaml [NAME=rendered.yaml ...]

1. Every rendered object and every k8s/**/*.example.yaml validates, strictly (unknown
   fields are errors), against the Kubernetes OpenAPI schemas bundled in the PyPI package
   kubernetes-validate. An object whose kind has no schema is an error, not a warning.
   A self-test first proves the validator rejects broken manifests.
2. Project checks: the manifests agree with the code (routes in SRC/http, env names in
   SRC/config.rs), with each other (ports, grace periods, NATS routes) and with the
   Dockerfile. Another self-test proves these checks catch seeded mistakes.
Exit status 1 on any failure.
"""
import argparse
import copy
import glob
import json
import os
import re
import sys

import yaml
import kubernetes_validate as kv
from kubernetes_validate.utils import all_versions


class Report:
    def __init__(self, quiet=False):
        self.failures = []
        self.passed = 0
        self.quiet = quiet

    def check(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failures.append(what)
        if not self.quiet:
            print(("  ok    " if cond else "  FAIL  ") + what)
        return cond


# ---------------------------------------------------------------- helpers

# After the drain window herald may take a little longer to stop: src/server.rs allows the
# drain to overrun by 5 s, flushes NATS, then gives the HTTP server 2 s. SIGKILL must not
# land inside that.
STOP_MARGIN_S = 10


# scripts/check-k8s.sh's own knobs, which docs/deploy.md names; not herald settings.
CHECK_SCRIPT_VARS = {"HERALD_SRC_DIR", "HERALD_K8S_VERSIONS", "HERALD_K8S_VENV"}


def load_yaml(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def duration_s(text):
    """Seconds in a humantime-style duration ("20s", "1m30s", "500ms")."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)\s*(ms|s|m|h|d)", str(text))
    if not parts or re.sub(r"\s|\d+\s*(ms|s|m|h|d)", "", str(text)):
        raise ValueError("unparsable duration %r" % text)
    return sum(int(n) * units[u] for n, u in parts)


def env_names_in(text):
    return set(re.findall(r"\bHERALD_[A-Z0-9_]+\b", text))


def pod_templates(docs):
    for d in docs:
        if d.get("kind") in ("Deployment", "StatefulSet"):
            yield d, d["spec"]["template"]["spec"]


def find(docs, kind, name=None):
    return [d for d in docs if d.get("kind") == kind
            and (name is None or d["metadata"]["name"] == name)]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def port_of(container, port):
    """A probe/targetPort (number or name) resolved against a container's ports."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def container_env(docs, container):
    """name -> ('value', v) | ('fieldRef', path) | ('secretKeyRef', (secret, key))."""
    env = {}
    for src in container.get("envFrom", []):
        ref = src.get("configMapRef")
        if ref:
            cms = find(docs, "ConfigMap", ref["name"])
            for k, v in (cms[0].get("data", {}) if cms else {}).items():
                env[k] = ("value", str(v))
    for e in container.get("env", []):
        vf = e.get("valueFrom") or {}
        if "value" in e:
            env[e["name"]] = ("value", str(e["value"]))
        elif "fieldRef" in vf:
            env[e["name"]] = ("fieldRef", vf["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in vf:
            env[e["name"]] = ("secretKeyRef", (vf["secretKeyRef"]["name"], vf["secretKeyRef"]["key"]))
        else:
            env[e["name"]] = ("other", None)
    return env


def secret_file(spec, container, path):
    """The Secret volume file at `path` in this container, or None:
    dict(secret, key, mode, read_only, volume)."""
    if not isinstance(path, str):
        return None
    vols = {v["name"]: v["secret"] for v in spec.get("volumes", []) if "secret" in v}
    for m in container.get("volumeMounts", []):
        src = vols.get(m["name"])
        root = m["mountPath"].rstrip("/") + "/"
        if src is None or not path.startswith(root) or "subPath" in m:
            continue
        rel = path[len(root):]
        items = src.get("items")
        item = next((i for i in items if i["path"] == rel), None) if items else {"key": rel}
        if item is None:
            return None
        return dict(secret=src["secretName"], key=item["key"], volume=m["name"],
                    mode=item.get("mode", src.get("defaultMode", 0o644)), read_only=m.get("readOnly") is True)
    return None


# Settings whose value is a path to a key file (herald reads the file at start).
KEY_FILE_VARS = ("HERALD_JWT_SECRET_FILE", "HERALD_API_KEY_FILE", "HERALD_JWT_PUBLIC_KEY")


def secret_refs(docs, spec, container):
    """(secret, key) pairs the container reads: secretKeyRef variables and key files."""
    refs = set()
    for var, (kind, v) in container_env(docs, container).items():
        if kind == "secretKeyRef":
            refs.add(v)
        elif kind == "value" and var in KEY_FILE_VARS:
            f = secret_file(spec, container, v)
            if f:
                refs.add((f["secret"], f["key"]))
    return refs


def prestop_sleep_s(container):
    pre = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre:  # native sleep action (Kubernetes >= 1.30)
        return pre["sleep"]["seconds"]
    cmd = (pre.get("exec") or {}).get("command") or []
    if len(cmd) == 2 and os.path.basename(cmd[0]) == "sleep":
        return duration_s(cmd[1] if not cmd[1].isdigit() else cmd[1] + "s")
    return None


def dockerfile(root):
    """Instructions of the Dockerfile as (KEYWORD, text), continuations joined."""
    text = open(os.path.join(root, "Dockerfile")).read()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            kw, _, rest = line.partition(" ")
            out.append((kw.upper(), rest.strip()))
    return out


# ---------------------------------------------------------------- 1. schemas

BROKEN = [
    ("unknown field spec.replica", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"replica": 1, "selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}},
                              "spec": {"containers": [{"name": "x", "image": "x"}]}}}}),
    ("containerPort given as a string", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "x", "image": "x", "ports": [{"containerPort": "http"}]}]}}),
    ("Service without spec.ports[].port", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
        "spec": {"ports": [{"targetPort": 8080}]}}),
    ("kind with no schema", {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}}),
]


def schema_error(doc, version):
    """None if the object is valid, else the first error as text."""
    try:
        kv.validate(doc, version, strict=True)
        return None
    except kv.ValidationError as e:
        return "%s: %s" % (".".join(str(p) for p in e.path), e.message)
    except (kv.SchemaNotFoundError, kv.InvalidSchemaError) as e:
        return e.message


def check_schemas(r, objects, versions):
    print("schema validation (kubernetes-validate %s, strict; schema versions %s)"
          % (kv.__version__, ", ".join(versions)))
    for what, doc in BROKEN:
        r.check(schema_error(doc, versions[-1]) is not None,
                "self-test: validator rejects a manifest with %s" % what)
    for version in versions:
        bad = []
        for origin, doc in objects:
            err = schema_error(doc, version)
            if err:
                bad.append("%s %s/%s: %s" % (origin, doc.get("kind"), doc.get("metadata", {}).get("name"), err))
        r.check(not bad, "%d objects valid against Kubernetes %s" % (len(objects), version))
        for b in bad:
            print("          " + b)


# ---------------------------------------------------------------- 2. project checks

def check_herald(r, name, docs, ctx, deployable):
    deps = [(d, s) for d, s in pod_templates(docs) if d["kind"] == "Deployment"
            and any(c["name"] == "herald" for c in s["containers"])]
    if not find(docs, "Deployment"):
        return  # e.g. the NATS-only kustomization
    if not r.check(len(deps) == 1, "%s: one herald Deployment" % name):
        return
    dep, spec = deps[0]
    c = next(c for c in spec["containers"] if c["name"] == "herald")
    env = container_env(docs, c)
    routes = ctx["routes"]

    listen = env.get("HERALD_LISTEN", ("", ""))[1]
    m = re.match(r"^(.*):(\d+)$", listen or "")
    if not r.check(bool(m), "%s: HERALD_LISTEN is host:port (%r)" % (name, listen)):
        return
    host, port = m.group(1).strip("[]"), int(m.group(2))
    r.check(host in ("0.0.0.0", "::"), "%s: HERALD_LISTEN binds all interfaces so probes and the Service reach it" % name)
    ports = [p["containerPort"] for p in c.get("ports", [])]
    r.check(ports == [port] and c["ports"][0].get("name") == "http",
            "%s: containerPort 'http' %s == HERALD_LISTEN port %d" % (name, ports, port))

    for probe, path in (("startupProbe", None), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        p = get.get("path")
        r.check(bool(get) and (path is None or p == path),
                "%s: %s is GET %s" % (name, probe, path or p))
        r.check(p in routes, "%s: %s path %s is a route in %s" % (name, probe, p, ctx["http_dir"]))
        r.check(port_of(c, get.get("port")) == port, "%s: %s port resolves to %d" % (name, probe, port))

    ann = dep["spec"]["template"]["metadata"].get("annotations", {})
    r.check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(port)
            and ann.get("prometheus.io/path") in routes,
            "%s: prometheus.io annotations scrape port %d path %s (a route)" % (name, port, ann.get("prometheus.io/path")))

    labels = dep["spec"]["template"]["metadata"]["labels"]
    svcs = [s for s in find(docs, "Service") if selects(s["spec"].get("selector"), labels)]
    r.check(bool(svcs), "%s: a Service selects the herald pods" % name)
    for s in svcs:
        for sp in s["spec"]["ports"]:
            r.check(port_of(c, sp.get("targetPort", sp["port"])) == port,
                    "%s: Service %s port %s -> targetPort %s == %d" % (name, s["metadata"]["name"], sp["port"], sp.get("targetPort"), port))

    r.check(env.get("HERALD_POD_NAME") == ("fieldRef", "metadata.name"),
            "%s: HERALD_POD_NAME comes from the downward API metadata.name" % name)
    # Bound to 0.0.0.0 herald refuses to start without a JWT key (PROTOCOL.md section 7).
    # Keys are files of a Secret volume (HERALD_*_FILE), never environment variables.
    files = {v: secret_file(spec, c, env[v][1]) for v in KEY_FILE_VARS if env.get(v, ("",))[0] == "value"}
    r.check(bool(files.get("HERALD_JWT_SECRET_FILE")) or "HERALD_JWT_PUBLIC_KEY" in env,
            "%s: a JWT key is set (HERALD_JWT_SECRET_FILE in a Secret volume, or HERALD_JWT_PUBLIC_KEY)" % name)
    r.check(bool(files.get("HERALD_API_KEY_FILE")),
            "%s: HERALD_API_KEY_FILE %s is a file of a mounted Secret" % (name, env.get("HERALD_API_KEY_FILE", ("", None))[1]))
    r.check(not any(v in env for v in ("HERALD_JWT_SECRET", "HERALD_API_KEY")),
            "%s: no JWT secret or API key in environment variables (plain or secretKeyRef)" % name)
    psc = spec.get("securityContext", {})
    uid = c.get("securityContext", {}).get("runAsUser", psc.get("runAsUser"))
    for var, f in sorted(files.items()):
        if not f:
            continue
        r.check(f["read_only"], "%s: volume %s holding %s is mounted readOnly" % (name, f["volume"], var))
        r.check(f["mode"] == 0o400, "%s: %s mode %04o is 0400 (owner read only)" % (name, var, f["mode"]))
        # Secret volume files belong to root; fsGroup makes them group-owned and adds group read.
        r.check(uid == 0 or psc.get("fsGroup") is not None,
                "%s: uid %s can read %s (pod fsGroup %s gives it group read)" % (name, uid, var, psc.get("fsGroup")))

    try:
        drain = duration_s(env.get("HERALD_DRAIN_TIMEOUT", ("value", "20s"))[1])  # default: PROTOCOL.md 8
        sleep = prestop_sleep_s(c)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        r.check(sleep is not None and grace >= sleep + drain + STOP_MARGIN_S,
                "%s: terminationGracePeriodSeconds %s >= preStop sleep %s + drain %ss + margin %ss"
                % (name, grace, sleep, drain, STOP_MARGIN_S))
    except ValueError as e:
        r.check(False, "%s: %s" % (name, e))
    ru = dep["spec"]["strategy"].get("rollingUpdate", {})
    r.check(ru.get("maxUnavailable") == 0 and ru.get("maxSurge", 0) not in (0, "0%"),
            "%s: rollingUpdate maxUnavailable 0, maxSurge %s" % (name, ru.get("maxSurge")))
    r.check(c.get("args", []) == ctx["docker_cmd"],
            "%s: container args %s match the image CMD %s" % (name, c.get("args"), ctx["docker_cmd"]))
    uid = spec.get("securityContext", {}).get("runAsUser")
    r.check(uid == ctx["docker_uid"], "%s: runAsUser %s == Dockerfile USER %s" % (name, uid, ctx["docker_uid"]))

    hpas = [h for h in find(docs, "HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
            and h["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]]
    pdbs = [p for p in find(docs, "PodDisruptionBudget") if selects(p["spec"]["selector"]["matchLabels"], labels)]
    if hpas:
        r.check("replicas" not in dep["spec"], "%s: Deployment leaves spec.replicas to the HPA" % name)
        r.check(bool(pdbs), "%s: a PodDisruptionBudget covers the autoscaled pods" % name)
    if deployable:
        nats = env.get("HERALD_NATS_URL", ("", ""))[1]
        if nats:
            for url in nats.split(","):
                um = re.match(r"^(?:nats|tls)://(?:[^@/,]+@)?([^:/,@]+):(\d+)$", url.strip())  # user:pass@ or token@ allowed
                svc = um and find(docs, "Service", um.group(1).split(".")[0])
                r.check(bool(svc) and any(p["port"] == int(um.group(2)) for p in svc[0]["spec"]["ports"]),
                        "%s: HERALD_NATS_URL %s names a Service in this overlay" % (name, url))
            r.check(min([h["spec"].get("minReplicas", 1) for h in hpas] or [dep["spec"].get("replicas", 1)]) >= 3,
                    "%s: at least 3 herald pods with a NATS bus" % name)
        else:
            r.check(dep["spec"].get("replicas") == 1 and not hpas,
                    "%s: standalone (no HERALD_NATS_URL) runs exactly one pod, no HPA" % name)


def nats_conf_value(conf, key):
    m = re.search(r"^\s*%s\s*[:=]?\s*(\S+)" % re.escape(key), conf, re.M)
    return m and m.group(1)


def check_nats(r, name, docs):
    stss = [(d, s) for d, s in pod_templates(docs) if d["kind"] == "StatefulSet"
            and any(c["name"] == "nats" for c in s["containers"])]
    if not stss:
        return
    sts, spec = stss[0]
    c = next(c for c in spec["containers"] if c["name"] == "nats")
    vol = next((v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v), None)
    cms = find(docs, "ConfigMap", vol)
    if not r.check(bool(cms) and "nats.conf" in cms[0].get("data", {}), "%s: nats.conf mounted from a ConfigMap" % name):
        return
    conf = cms[0]["data"]["nats.conf"]
    replicas = sts["spec"].get("replicas", 1)
    headless = sts["spec"]["serviceName"]
    cport = port_of(c, "cluster")
    want = {"nats://%s-%d.%s:%d" % (sts["metadata"]["name"], i, headless, cport) for i in range(replicas)}
    got = set(re.findall(r"nats://[\w.-]+:\d+", conf.split("cluster", 1)[-1]))
    r.check(replicas >= 3 and replicas % 2 == 1, "%s: NATS replicas %d is odd and >= 3 (JetStream quorum)" % (name, replicas))
    r.check(got == want, "%s: nats.conf routes are exactly %s" % (name, sorted(want)))
    hs = find(docs, "Service", headless)
    r.check(bool(hs) and hs[0]["spec"].get("clusterIP") == "None" and hs[0]["spec"].get("publishNotReadyAddresses") is True,
            "%s: Service %s is headless and publishes not-ready pods" % (name, headless))
    env = container_env(docs, c)
    r.check(nats_conf_value(conf, "server_name") == "$POD_NAME" and env.get("POD_NAME") == ("fieldRef", "metadata.name"),
            "%s: server_name is the pod name" % name)
    pid = nats_conf_value(conf, "pid_file")
    cmd = ((c.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command", [])
    r.check(bool(pid) and any(a.endswith("ldm=" + pid) for a in cmd),
            "%s: preStop enters lame-duck mode through pid_file %s" % (name, pid))
    try:
        ldm = duration_s(nats_conf_value(conf, "lame_duck_duration") or "2m")
        ldg = duration_s(nats_conf_value(conf, "lame_duck_grace_period") or "10s")
        grace = spec.get("terminationGracePeriodSeconds", 30)
        r.check(grace > ldm + ldg, "%s: NATS terminationGracePeriodSeconds %s > lame duck %ss + grace %ss"
                % (name, grace, ldm, ldg))
    except ValueError as e:
        r.check(False, "%s: %s" % (name, e))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = (c.get(probe) or {}).get("httpGet") or {}
        r.check(port_of(c, get.get("port")) == 8222 and get.get("path", "").startswith("/healthz")
                and nats_conf_value(conf, "http") == "0.0.0.0:8222",
                "%s: NATS %s is GET %s on the monitoring port 8222" % (name, probe, get.get("path")))
    labels = sts["spec"]["template"]["metadata"]["labels"]
    r.check(any(selects(p["spec"]["selector"]["matchLabels"], labels) for p in find(docs, "PodDisruptionBudget")),
            "%s: a PodDisruptionBudget covers the NATS pods" % name)


def check_security(r, name, docs):
    for d, spec in pod_templates(docs):
        psc = spec.get("securityContext", {})
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            uid = sc.get("runAsUser", psc.get("runAsUser"))
            r.check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True and isinstance(uid, int) and uid > 0
                    and sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                    and "ALL" in sc.get("capabilities", {}).get("drop", []),
                    "%s: %s/%s runs as uid %s, non-root, read-only root fs, no privilege escalation, drops ALL"
                    % (name, d["kind"], c["name"], uid))


def check_repo(r, ctx, renders, examples):
    root = ctx["root"]
    print("repository checks")
    # Every HERALD_* name in the deployment material and its guide is a real setting.
    files = sorted(glob.glob(os.path.join(root, "k8s", "**", "*"), recursive=True))
    files += [os.path.join(root, "Dockerfile"), os.path.join(root, "docs", "deploy.md")]
    used = set()
    for f in files:
        if os.path.isfile(f):
            used |= env_names_in(open(f).read())
    unknown = sorted(used - ctx["env_names"] - CHECK_SCRIPT_VARS)
    r.check(bool(used) and not unknown, "%d HERALD_* names used in k8s/, Dockerfile, docs/deploy.md all declared in %s%s"
            % (len(used), ctx["config_files"], (": unknown " + ", ".join(unknown)) if unknown else ""))

    # Examples stay out of every kustomization.
    listed = []
    for k in glob.glob(os.path.join(root, "k8s", "**", "kustomization.yaml"), recursive=True):
        kz = yaml.safe_load(open(k))
        refs = kz.get("resources", []) + kz.get("components", []) + kz.get("patchesStrategicMerge", [])
        refs += [p["path"] for p in kz.get("patches", []) if "path" in p]
        listed += ["%s lists %s" % (os.path.relpath(k, root), x) for x in refs if x.endswith(".example.yaml")]
    r.check(not listed, "no *.example.yaml listed in a kustomization%s" % (": " + ", ".join(listed) if listed else ""))
    r.check(not any(d.get("kind") == "Secret" for docs in renders.values() for d in docs),
            "no rendered kustomization carries a Secret (secrets are created by hand)")
    secrets = [(f, d) for f, docs in examples.items() for d in docs if d.get("kind") == "Secret"]
    r.check(bool(secrets), "a Secret example exists")
    for f, d in secrets:
        vals = dict(d.get("stringData", {}), **d.get("data", {}))
        r.check(bool(vals) and all(str(v).startswith("REPLACE_ME") for v in vals.values()),
                "%s: every value is a REPLACE_ME placeholder" % os.path.relpath(f, root))
        dep_keys = set()
        for docs in renders.values():
            for _, spec in pod_templates(docs):
                for c in spec["containers"]:
                    dep_keys |= {k for s, k in secret_refs(docs, spec, c) if s == d["metadata"]["name"]}
        r.check(dep_keys and dep_keys <= set(vals), "%s: holds every key the Deployment reads %s"
                % (os.path.relpath(f, root), sorted(dep_keys)))

    # Ingress examples point at the herald Service and keep WebSocket-friendly timeouts.
    prod = renders.get("prod", [])
    heartbeat = 25
    for docs in renders.values():
        for cm in find(docs, "ConfigMap"):
            if "HERALD_HEARTBEAT" in cm.get("data", {}):
                heartbeat = duration_s(cm["data"]["HERALD_HEARTBEAT"])
    for f, docs in examples.items():
        for ing in find(docs, "Ingress"):
            ann = ing["metadata"].get("annotations", {})
            rel = os.path.relpath(f, root)
            for a in ("proxy-read-timeout", "proxy-send-timeout"):
                v = ann.get("nginx.ingress.kubernetes.io/" + a, "60")
                r.check(int(v) >= 10 * heartbeat, "%s: %s %ss is far above the %ss heartbeat" % (rel, a, v, heartbeat))
            r.check(ann.get("nginx.ingress.kubernetes.io/proxy-http-version") == "1.1", "%s: proxy-http-version 1.1" % rel)
            for rule in ing["spec"]["rules"]:
                for p in rule["http"]["paths"]:
                    b = p["backend"]["service"]
                    svc = find(prod, "Service", b["name"])
                    r.check(bool(svc) and any(sp.get("name") == b["port"].get("name") or sp["port"] == b["port"].get("number")
                                              for sp in svc[0]["spec"]["ports"]),
                            "%s: %s -> Service %s port %s exists in prod" % (rel, p["path"], b["name"], b["port"]))
                    r.check(any(route == p["path"] or route.startswith(p["path"].rstrip("/") + "/") for route in ctx["routes"]),
                            "%s: path %s is served by a route in %s" % (rel, p["path"], ctx["http_dir"]))
        for h in find(docs, "HorizontalPodAutoscaler"):
            names = [m["pods"]["metric"]["name"] for m in h["spec"]["metrics"] if m["type"] == "Pods"]
            r.check(bool(names) and all(n in ctx["metrics"] for n in names), "%s: custom metrics %s are exported by %s"
                    % (os.path.relpath(f, root), names, ctx["src"]))

    # Dockerfile and build context.
    ins = ctx["docker"]
    froms = [v for k, v in ins if k == "FROM"]
    runs = " ".join(v for k, v in ins if k == "RUN")
    r.check(froms[0].startswith("rust:1-bookworm") and len(froms) >= 2, "Dockerfile: multi-stage, built on rust:1-bookworm")
    r.check(re.search(r"cargo build --release[^&]*--bin herald", runs) is not None, "Dockerfile: cargo build --release --bin herald")
    r.check(re.search(r"cargo chef cook", runs) is not None, "Dockerfile: dependency-caching layer (cargo chef cook)")
    final = froms[-1].split()[0]
    uses_sleep = any(os.path.basename(((c.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command", [""])[0]) == "sleep"
                     for docs in renders.values() for _, s in pod_templates(docs) for c in s["containers"] if c["name"] == "herald")
    r.check(not uses_sleep or final.startswith("debian:"), "Dockerfile: runtime %s has /bin/sleep for the preStop hook" % final)
    r.check(isinstance(ctx["docker_uid"], int) and ctx["docker_uid"] > 0, "Dockerfile: USER is numeric non-root (%s)" % ctx["docker_uid"])
    listen = ctx["docker_env"].get("HERALD_LISTEN", "")
    expose = [v for k, v in ins if k == "EXPOSE"]
    r.check(bool(expose) and listen.endswith(":" + expose[0]) and ctx["cm_ports"] == {int(expose[0])},
            "Dockerfile: ENV HERALD_LISTEN %s, EXPOSE %s and the ConfigMap ports %s agree" % (listen, expose, sorted(ctx["cm_ports"])))
    r.check(('ENTRYPOINT', '["/usr/local/bin/herald"]') in ins and ctx["docker_cmd"] == ["serve"],
            "Dockerfile: ENTRYPOINT /usr/local/bin/herald, CMD serve")
    ignore = {l.strip().strip("/").replace("**/", "") for l in open(os.path.join(root, ".dockerignore")) if not l.startswith("#")}
    missing = {"target", "node_modules", ".git", "artifacts"} - ignore
    r.check(not missing, ".dockerignore excludes target, node_modules, .git, artifacts%s"
            % (" (missing %s)" % sorted(missing) if missing else ""))


# ---------------------------------------------------------------- monitoring

# How Prometheus names the series of a metric family: counters get _total, histograms
# _bucket/_sum/_count (tests/monitoring.rs checks the same names against a running hub).
SERIES_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def herald_names(text):
    return set(re.findall(r"(?<![\w:])herald_\w+", text))


def unknown_metrics(exprs, metrics):
    """herald_* names in the expressions that are no series of an exported metric."""
    bad = set()
    for n in set().union(*[herald_names(e) for e in exprs]) if exprs else set():
        if n not in metrics and not any(n.endswith(x) and n[:-len(x)] in metrics for x in SERIES_SUFFIXES):
            bad.add(n)
    return sorted(bad)


def dashboard_exprs(dash):
    """Every PromQL text of a dashboard: panel targets and template-variable queries."""
    out = []
    def walk(panels):
        for p in panels:
            out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if v.get("type") == "query":
            out.append(q.get("query", "") if isinstance(q, dict) else str(q))
    return out


def check_dashboard(r, what, dash, metrics):
    """A standard Grafana dashboard model fed by a Prometheus data-source variable."""
    tvars = dash.get("templating", {}).get("list", [])
    ds = [v for v in tvars if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    r.check(bool(dash.get("uid")) and bool(dash.get("title")) and isinstance(dash.get("schemaVersion"), int)
            and "__inputs" not in dash,
            "%s: dashboard model with uid %r, schemaVersion %s, no __inputs (loadable by the sidecar)"
            % (what, dash.get("uid"), dash.get("schemaVersion")))
    if not r.check(len(ds) == 1, "%s: one Prometheus data-source variable" % what):
        return
    ref = "${%s}" % ds[0]["name"]
    panels = [p for p in dash.get("panels", []) if p.get("type") != "row"]
    uses = [p.get("datasource") for p in panels] + [t.get("datasource") for p in panels for t in p.get("targets", [])]
    uses += [v.get("datasource") for v in tvars if v.get("type") == "query"]
    r.check(bool(panels) and all(isinstance(u, dict) and u.get("type") == "prometheus" and u.get("uid") == ref for u in uses),
            "%s: every panel, target and query variable uses the data source %s" % (what, ref))
    ids = [p.get("id") for p in dash.get("panels", [])]
    r.check(len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids), "%s: panel ids are unique" % what)
    empty = [p.get("title") for p in panels if not any(t.get("expr") for t in p.get("targets", []))]
    r.check(not empty, "%s: every panel has a query%s" % (what, (": not " + ", ".join(empty)) if empty else ""))
    bad = unknown_metrics(dashboard_exprs(dash), metrics)
    r.check(not bad, "%s: every herald_* name in the queries is exported by the source%s"
            % (what, (": unknown " + ", ".join(bad)) if bad else ""))


def check_rules(r, what, rules_doc, metrics):
    """A Prometheus rules file (the `groups:` of a rule_files entry or a PrometheusRule spec)."""
    groups = (rules_doc or {}).get("groups") or []
    rules = [x for g in groups for x in g.get("rules", [])]
    alerts = [x for x in rules if "alert" in x]
    r.check(bool(alerts) and len(alerts) == len(rules), "%s: %d alerting rules in %d groups" % (what, len(alerts), len(groups)))
    names = [a["alert"] for a in alerts]
    r.check(len(names) == len(set(names)), "%s: alert names are unique" % what)
    incomplete = [a.get("alert") for a in alerts if not (a.get("expr") and a.get("labels", {}).get("severity")
                                                         and a.get("annotations", {}).get("summary"))]
    r.check(not incomplete, "%s: every alert has expr, severity and summary%s"
            % (what, (": not " + ", ".join(incomplete)) if incomplete else ""))
    bad = unknown_metrics([a.get("expr", "") for a in alerts], metrics)
    r.check(not bad, "%s: every herald_* name in the alert expressions is exported by the source%s"
            % (what, (": unknown " + ", ".join(bad)) if bad else ""))


def check_monitoring(r, ctx, renders):
    print("monitoring material (k8s/monitoring)")
    boards = [(n, cm) for n, docs in renders.items() for cm in find(docs, "ConfigMap")
              if cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    r.check(len(boards) == 1, "one ConfigMap labelled grafana_dashboard=\"1\" (%s)"
            % ", ".join("%s in %s" % (cm["metadata"]["name"], n) for n, cm in boards))
    for n, cm in boards:
        data = cm.get("data", {})
        if r.check(len(data) == 1 and next(iter(data)).endswith(".json"), "%s: %s holds one *.json file" % (n, cm["metadata"]["name"])):
            try:
                dash = json.loads(next(iter(data.values())))
            except ValueError as e:
                r.check(False, "%s: dashboard JSON parses (%s)" % (n, e))
                continue
            check_dashboard(r, "%s/%s" % (n, cm["metadata"]["name"]), dash, ctx["metrics"])
    rule_maps = [(n, cm, k, v) for n, docs in renders.items() for cm in find(docs, "ConfigMap")
                 for k, v in cm.get("data", {}).items() if k.endswith((".yaml", ".yml")) and "groups:" in v]
    r.check(len(rule_maps) == 1, "one ConfigMap carries the Prometheus rules (%s)"
            % ", ".join("%s in %s" % (cm["metadata"]["name"], n) for n, cm, _, _ in rule_maps))
    for n, cm, k, v in rule_maps:
        check_rules(r, "%s/%s %s" % (n, cm["metadata"]["name"], k), yaml.safe_load(v), ctx["metrics"])
    with open(os.path.join(ctx["root"], "k8s", "monitoring", "alerts.yaml")) as f:
        r.check(any(v == f.read() for _, _, _, v in rule_maps), "the rules ConfigMap holds k8s/monitoring/alerts.yaml as it is")


def check_render(r, name, docs, ctx, deployable):
    check_herald(r, name, docs, ctx, deployable)
    check_nats(r, name, docs)
    check_security(r, name, docs)


def self_test(r, ctx, renders):
    """The project checks must catch seeded mistakes, else they prove nothing."""
    def mutated(fn):
        docs = copy.deepcopy(renders["prod"])
        fn(docs)
        q = Report(quiet=True)
        check_render(q, "prod", docs, ctx, True)
        return q.failures

    def herald(docs):
        return next(c for d, s in pod_templates(docs) for c in s["containers"] if c["name"] == "herald")

    def dep_spec(docs):
        return next(s for d, s in pod_templates(docs) if d["kind"] == "Deployment")

    def nats_conf(docs, fn):
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and "nats.conf" in d.get("data", {}))
        cm["data"]["nats.conf"] = fn(cm["data"]["nats.conf"])

    seeds = [
        ("grace period shorter than drain + preStop", lambda d: dep_spec(d).update(terminationGracePeriodSeconds=20)),
        ("readiness probe on a path with no route", lambda d: herald(d)["readinessProbe"]["httpGet"].update(path="/ready")),
        ("containerPort differing from HERALD_LISTEN", lambda d: herald(d)["ports"][0].update(containerPort=9090)),
        ("JWT secret as a plain value", lambda d: herald(d)["env"].append({"name": "HERALD_JWT_SECRET", "value": "x"})),
        ("API key as a secretKeyRef variable", lambda d: herald(d)["env"].append(
            {"name": "HERALD_API_KEY", "valueFrom": {"secretKeyRef": {"name": "herald-secrets", "key": "api-key"}}})),
        ("API key file outside the Secret mount", lambda d: next(e for e in herald(d)["env"] if e["name"] == "HERALD_API_KEY_FILE")
         .update(value="/tmp/api-key")),
        ("Secret volume mounted read-write", lambda d: next(m for m in herald(d)["volumeMounts"] if m["mountPath"] == "/etc/herald/secrets")
         .pop("readOnly")),
        ("Secret files mode 0644", lambda d: next(v for v in dep_spec(d)["volumes"] if "secret" in v)["secret"].update(defaultMode=0o644)),
        ("no fsGroup, so uid 10001 cannot read its 0400 key files", lambda d: dep_spec(d)["securityContext"].pop("fsGroup")),
        ("writable root filesystem", lambda d: herald(d)["securityContext"].update(readOnlyRootFilesystem=False)),
        ("NATS route missing", lambda d: nats_conf(d, lambda t: t.replace("nats://nats-2.nats-headless:6222", ""))),
        ("NATS lame duck longer than its grace period", lambda d: nats_conf(d, lambda t: t.replace("lame_duck_duration: 30s", "lame_duck_duration: 2m"))),
    ]
    print("self-test of the project checks (each seeded mistake must be caught)")
    for what, fn in seeds:
        r.check(bool(mutated(fn)), "catches: %s" % what)
    r.check(unknown_metrics(["sum(rate(herald_conections_total[5m]))", "herald_delivery_latency_seconds_sum"], ctx["metrics"])
            == ["herald_conections_total"], "catches: misspelt metric herald_conections_total (and accepts a histogram _sum)")
    bad_dash = {"uid": "x", "title": "x", "schemaVersion": 39,
                "templating": {"list": [{"type": "datasource", "name": "ds", "query": "prometheus"}]},
                "panels": [{"id": 1, "type": "timeseries", "title": "p", "datasource": {"type": "prometheus", "uid": "prom-1"},
                            "targets": [{"expr": "herald_connections", "datasource": {"type": "prometheus", "uid": "prom-1"}}]}]}
    q = Report(quiet=True)
    check_dashboard(q, "seeded", bad_dash, ctx["metrics"])
    r.check(bool(q.failures), "catches: a dashboard panel on a fixed data source instead of the variable")
    r.check(bool(env_names_in("HERALD_LISTN=0.0.0.0:8080") - ctx["env_names"]), "catches: misspelt env name HERALD_LISTN")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--versions", default="")
    ap.add_argument("--deployable", default="dev,prod")
    ap.add_argument("renders", nargs="+", help="NAME=rendered.yaml")
    a = ap.parse_args()
    r = Report()
    root, src = os.path.abspath(a.root), os.path.abspath(a.src)

    bundled = all_versions()
    versions = [v for v in a.versions.split(",") if v] or [bundled[0], bundled[-1]]
    versions = [v if v.count(".") == 2 else v + ".0" for v in versions]
    renders = {n: load_yaml(p) for n, p in (x.split("=", 1) for x in a.renders)}
    examples = {f: load_yaml(f) for f in sorted(glob.glob(os.path.join(root, "k8s", "**", "*.example.yaml"), recursive=True))}

    objects = [(n, d) for n, docs in renders.items() for d in docs]
    objects += [(os.path.relpath(f, root), dict(d)) for f, docs in examples.items() for d in docs]
    check_schemas(r, objects, versions)

    # What the code declares: routes and env names, as literal strings.
    http_dir = os.path.join(src, "http")
    config_files = sorted(glob.glob(os.path.join(src, "config.rs")) + glob.glob(os.path.join(src, "config", "**", "*.rs"), recursive=True))
    http_files = sorted(glob.glob(os.path.join(http_dir, "**", "*.rs"), recursive=True))
    print("project checks (source: %s)" % src)
    r.check(bool(config_files), "config source found (%s/config.rs); set HERALD_SRC_DIR to check another tree" % src)
    r.check(bool(http_files), "route sources found (%s/*.rs)" % http_dir)
    routes = set()
    for f in http_files:
        routes |= set(re.findall(r'"(/[^"\s]*)"', open(f).read()))
    env_names = set()
    for f in config_files:
        env_names |= set(re.findall(r'"(HERALD_[A-Z0-9_]+)"', open(f).read()))
    # Metric names: literal "herald_x", or "x" registered in a registry built with_prefix("herald").
    metrics = set()
    for f in glob.glob(os.path.join(src, "**", "*.rs"), recursive=True):
        text = open(f).read()
        metrics |= set(re.findall(r'"(herald_\w+)"', text))
        if 'with_prefix("herald")' in text:
            metrics |= {"herald_" + n for n in re.findall(r'register\(\s*"(\w+)"', text)}
    ins = dockerfile(root)
    docker_env = {}
    for k, v in ins:
        if k == "ENV":
            docker_env.update(dict(re.findall(r"(\w+)=(\S+)", v)))
    users = [v for k, v in ins if k == "USER"]
    uid = users[-1].split(":")[0] if users else ""
    cmd = [v for k, v in ins if k == "CMD"]
    cm_ports = set()
    for docs in renders.values():
        for cm in find(docs, "ConfigMap"):
            lm = re.match(r".*:(\d+)$", cm.get("data", {}).get("HERALD_LISTEN", ""))
            if lm:
                cm_ports.add(int(lm.group(1)))
    ctx = dict(root=root, src=src, routes=routes, env_names=env_names, metrics=metrics,
               http_dir=os.path.relpath(http_dir, root) if http_dir.startswith(root) else http_dir,
               config_files=", ".join(os.path.relpath(f, root) if f.startswith(root) else f for f in config_files) or "config.rs",
               docker=ins, docker_env=docker_env, docker_uid=int(uid) if uid.isdigit() else uid,
               docker_cmd=yaml.safe_load(cmd[-1]) if cmd else None, cm_ports=cm_ports)

    deployable = set(a.deployable.split(","))
    for name, docs in renders.items():
        print("rendered %s (%d objects)" % (name, len(docs)))
        check_render(r, name, docs, ctx, name in deployable)
    check_repo(r, ctx, renders, examples)
    check_monitoring(r, ctx, renders)
    if "prod" in renders:
        self_test(r, ctx, renders)

    if r.failures:
        print("\nFAILED:")
        for f in r.failures:
            print("  - " + f)
    print("\nk8s checks: %d passed, %d failed" % (r.passed, len(r.failures)))
    return 1 if r.failures else 0


if __name__ == "__main__":
    sys.exit(main())
