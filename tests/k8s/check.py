#!/usr/bin/python3
"""tests/k8s/check.py — offline checks of deploy/k8s, deploy/prometheus and deploy/grafana.

Prints one line per check ("ok   name" or "FAIL name: why") and ends with
"N passed, N failed"; exits 1 when a check failed. Run it through tests/k8s/run, which
installs the tools it uses (python3-yaml, yamllint, promtool, the npm schemas).

usage: check.py [--root DIR] [--repo DIR]
  --root DIR  the tree whose deploy/ is checked (default: the repository; the mutation
              tests give a modified copy)
  --repo DIR  where README.md, the C sources and tests/k8s are (default: the repository)
Environment: SHOAL_K8S_PROMTOOL (path of promtool), SHOAL_K8S_NODE (node, "" = no schema
check is possible and it fails), SHOAL_K8S_KUBECTL (kubectl for `kubectl kustomize`;
optional: skipped when absent).
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

ap = argparse.ArgumentParser()
ap.add_argument("--root", default=REPO)
ap.add_argument("--repo", default=REPO)
ap.add_argument("-q", "--quiet", action="store_true", help="print only failures and the count")
args = ap.parse_args()
ROOT, REPO = os.path.abspath(args.root), os.path.abspath(args.repo)
K8S = os.path.join(ROOT, "deploy/k8s")
NAMESPACE = "shoal"
DEFAULT_DRAIN_MS = 5000  # README: SHOAL_DRAIN_TIMEOUT_MS default
DRAIN_MARGIN_S = 2

results = []


def check(name, ok, why=""):
    results.append((name, bool(ok), why))
    if not ok:
        print(f"FAIL {name}: {why}")
    elif not args.quiet:
        print(f"ok   {name}")
    return bool(ok)


def rel(path):
    return os.path.relpath(path, ROOT)


# ------------------------------------------------------------------ load the manifests

yaml_files = sorted(
    glob.glob(os.path.join(ROOT, "deploy/k8s/**/*.yaml"), recursive=True)
    + glob.glob(os.path.join(ROOT, "deploy/k8s/**/*.yml"), recursive=True)
)
check("k8s: manifests found", len(yaml_files) >= 5, f"{len(yaml_files)} files under deploy/k8s")
docs = []  # (file, doc) of every Kubernetes object (kustomizations apart)
kustomizations = {}  # dir -> doc
for path in yaml_files:
    try:
        with open(path) as f:
            loaded = [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        check(f"yaml parses: {rel(path)}", False, str(e).replace("\n", " "))
        continue
    check(f"yaml parses: {rel(path)}", True)
    for d in loaded:
        if not isinstance(d, dict):
            check(f"object is a mapping: {rel(path)}", False, repr(d)[:60])
        elif os.path.basename(path) in ("kustomization.yaml", "kustomization.yml"):
            kustomizations[os.path.dirname(path)] = d
        else:
            docs.append((path, d))


def name_of(d):
    return (d.get("metadata") or {}).get("name")


def objs(kind):
    return [d for _, d in docs if d.get("kind") == kind]


def find(kind, name):
    for d in objs(kind):
        if name_of(d) == name:
            return d
    return None


# ------------------------------------------------------------------ basic fields

for path, d in docs:
    ident = f"{rel(path)} {d.get('kind')}/{name_of(d)}"
    missing = [k for k in ("apiVersion", "kind") if not d.get(k)]
    if not name_of(d):
        missing.append("metadata.name")
    if d.get("kind") != "Namespace" and (d.get("metadata") or {}).get("namespace") != NAMESPACE:
        missing.append(f"metadata.namespace={NAMESPACE}")
    check(f"fields: {ident}", not missing, "missing or wrong: " + ", ".join(missing))
seen = {}
for path, d in docs:
    key = (d.get("kind"), name_of(d))
    check(f"unique: {key[0]}/{key[1]}", key not in seen, f"also in {seen.get(key)}")
    seen[key] = rel(path)
check("namespace: Namespace shoal defined", find("Namespace", NAMESPACE) is not None, "no Namespace")

# ------------------------------------------------------------------ kustomizations

referenced = set()
for kdir, k in sorted(kustomizations.items()):
    bad = []
    for r in k.get("resources") or []:
        target = os.path.normpath(os.path.join(kdir, r))
        if os.path.isdir(target):
            if not any(os.path.exists(os.path.join(target, n)) for n in ("kustomization.yaml", "kustomization.yml")):
                bad.append(f"{r} (directory without kustomization.yaml)")
        elif os.path.isfile(target):
            referenced.add(target)
        else:
            bad.append(f"{r} (missing)")
    check(f"kustomization resources exist: {rel(kdir)}", not bad, "; ".join(bad))
    commented = re.findall(r"^\s*#\s*-\s*(\S+\.ya?ml)\s*$", open(os.path.join(kdir, "kustomization.yaml")).read(), re.M)
    referenced.update(os.path.normpath(os.path.join(kdir, c)) for c in commented)
orphans = sorted({rel(p) for p, _ in docs if os.path.normpath(p) not in referenced})
check("kustomization: every manifest is listed (or listed commented out)", not orphans, ", ".join(orphans))
check("kustomization: deploy/k8s/kustomization.yaml exists", K8S in kustomizations, "missing")

kubectl = os.environ.get("SHOAL_K8S_KUBECTL", shutil.which("kubectl") or "")
if kubectl:
    for kdir in sorted(kustomizations):
        if any(kdir != o and kdir.startswith(o + "/") for o in kustomizations) and \
                os.path.basename(kdir) in ("app", "redis", "postgres"):
            continue  # components, built as part of their parents
        p = subprocess.run([kubectl, "kustomize", kdir], capture_output=True, text=True)
        check(f"kubectl kustomize {rel(kdir)}", p.returncode == 0, p.stderr.strip()[:300])
else:
    print("skip kubectl kustomize: no kubectl (optional; the other checks do not need it)")

# ------------------------------------------------------------------ schemas (npm kubernetes-models)

node = os.environ.get("SHOAL_K8S_NODE", shutil.which("node") or "")
schema_js = os.path.join(REPO, "tests/k8s/schema.mjs")
if node and os.path.isdir(os.path.join(REPO, "tests/k8s/node_modules/kubernetes-models")):
    p = subprocess.run([node, schema_js], input=json.dumps([{"file": rel(f), "doc": d} for f, d in docs]),
                       capture_output=True, text=True, cwd=os.path.join(REPO, "tests/k8s"))
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    check("schema: validator ran on every object", p.returncode == 0 and len(lines) == len(docs),
          f"exit {p.returncode}, {len(lines)}/{len(docs)} results; {p.stderr.strip()[:200]}")
    for r in lines:
        check(f"schema: {r['file']} {r['kind']}/{r['name']}", r["ok"], r["error"])
else:
    check("schema: validator available", False,
          "node or tests/k8s/node_modules/kubernetes-models missing (tests/k8s/run installs them)")

# ------------------------------------------------------------------ settings (README)

readme = open(os.path.join(REPO, "README.md")).read()
documented = set(re.findall(r"`(SHOAL_[A-Z0-9_]+)`", readme))
check("readme: configuration reference found", len(documented) > 20, f"{len(documented)} names")


def configmap_data(kind, name):
    d = find(kind, name)
    if d is None:
        return None
    data = dict(d.get("data") or {})
    data.update(d.get("stringData") or {})
    return data


for kind in ("ConfigMap", "Secret"):
    for d in objs(kind):
        data = configmap_data(kind, name_of(d))
        undocumented = [k for k in data if k.startswith("SHOAL_") and k not in documented]
        check(f"settings documented: {kind}/{name_of(d)}", not undocumented,
              "not in README.md: " + ", ".join(undocumented))

# ------------------------------------------------------------------ workloads

WORKLOADS = ("Deployment", "StatefulSet")
workloads = [d for _, d in docs if d.get("kind") in WORKLOADS]


def pod_labels(w):
    return ((w.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}


def selects(selector, labels):
    """matchLabels semantics (matchExpressions are not used here and fail the check)."""
    if not selector or selector.get("matchExpressions"):
        return False
    ml = selector.get("matchLabels", selector)
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


def container_env(w, c):
    """The value every variable has in container c: envFrom first (later sources win),
    then env (wins over envFrom). Values of missing sources are None."""
    env = {}
    for src in c.get("envFrom") or []:
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in src:
                data = configmap_data(kind, src[key].get("name"))
                env.update(data or {})
    for e in c.get("env") or []:
        env[e.get("name")] = e.get("value")
    return env


for w in workloads:
    ident = f"{w['kind']}/{name_of(w)}"
    spec = w.get("spec") or {}
    tspec = (spec.get("template") or {}).get("spec") or {}
    check(f"{ident}: selector matches template labels", selects(spec.get("selector"), pod_labels(w)),
          f"selector {spec.get('selector')} vs labels {pod_labels(w)}")
    containers = tspec.get("containers") or []
    check(f"{ident}: has containers", containers, "no containers")
    pod_sc = tspec.get("securityContext") or {}
    drain_s = 0
    for c in containers:
        cid = f"{ident} container {c.get('name')}"
        check(f"{cid}: image", isinstance(c.get("image"), str) and c["image"].strip(), "no image")
        res = c.get("resources") or {}
        miss = [f"{k}.{r}" for k in ("requests", "limits") for r in ("cpu", "memory")
                if not (res.get(k) or {}).get(r)]
        check(f"{cid}: resource requests and limits", not miss, "missing " + ", ".join(miss))
        ports = {p.get("name") for p in c.get("ports") or []} | {p.get("containerPort") for p in c.get("ports") or []}
        for probe in ("livenessProbe", "readinessProbe"):
            pr = c.get(probe)
            if not pr:
                check(f"{cid}: {probe}", False, "missing")
                continue
            handler = next((h for h in ("httpGet", "tcpSocket", "exec", "grpc") if h in pr), None)
            if handler in ("httpGet", "tcpSocket"):
                port = pr[handler].get("port")
                check(f"{cid}: {probe} {handler} port {port} declared", port in ports,
                      f"container declares {sorted(map(str, ports - {None}))}")
            else:
                check(f"{cid}: {probe}", handler == "exec" and pr["exec"].get("command"),
                      f"unsupported probe {list(pr)}")
        sc = c.get("securityContext") or {}
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        check(f"{cid}: runAsNonRoot", non_root is True and sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0,
              "runAsNonRoot not true (or runAsUser 0)")
        check(f"{cid}: readOnlyRootFilesystem", sc.get("readOnlyRootFilesystem") is True, "not true")
        check(f"{cid}: capabilities drop ALL", "ALL" in ((sc.get("capabilities") or {}).get("drop") or []),
              "capabilities.drop lacks ALL")
        check(f"{cid}: allowPrivilegeEscalation false", sc.get("allowPrivilegeEscalation") is False, "not false")
        # $(VAR) is expanded only from variables defined earlier in env.
        defined, bad = set(), []
        for e in c.get("env") or []:
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(e.get("value") or "")):
                if ref not in defined:
                    bad.append(f"{e.get('name')} uses $({ref})")
            defined.add(e.get("name"))
        check(f"{cid}: env $(VAR) references defined earlier", not bad, "; ".join(bad))
        # The port a service binds (and tells the registry) is the one its pod declares, so
        # probes, Services and NetworkPolicies name the port that is really served.
        declared_ports = {p.get("containerPort") for p in c.get("ports") or []}
        wrong = []
        for e in c.get("env") or []:
            if e.get("name") in ("SHOAL_BIND", "SHOAL_ADVERTISE", "SHOAL_PUB_BIND", "SHOAL_EVENTS_BIND",
                                 "SHOAL_EVENTS_ADVERTISE"):
                m = re.search(r":(\d+)$", str(e.get("value") or ""))
                if not m or int(m.group(1)) not in declared_ports:
                    wrong.append(f"{e.get('name')}={e.get('value')}")
        check(f"{cid}: bound and advertised ports are declared container ports", not wrong,
              f"{', '.join(wrong)} vs ports {sorted(p for p in declared_ports if p)}")
        undocumented = [e.get("name") for e in c.get("env") or []
                        if e.get("name", "").startswith("SHOAL_") and e.get("name") not in documented]
        check(f"{cid}: SHOAL_* env documented in README.md", not undocumented, ", ".join(undocumented))
        missing_refs = []
        for src in c.get("envFrom") or []:
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in src and find(kind, src[key].get("name")) is None:
                    missing_refs.append(f"{kind}/{src[key].get('name')}")
        for e in c.get("env") or []:
            vf = e.get("valueFrom") or {}
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if key in vf:
                    data = configmap_data(kind, vf[key].get("name"))
                    if data is None or vf[key].get("key") not in data:
                        missing_refs.append(f"{kind}/{vf[key].get('name')} key {vf[key].get('key')}")
        check(f"{cid}: referenced ConfigMaps and Secrets exist", not missing_refs, ", ".join(missing_refs))
        env = container_env(w, c)
        try:
            ms = max(int(env.get("SHOAL_DRAIN_TIMEOUT_MS") or DEFAULT_DRAIN_MS),
                     min(int(env.get("SHOAL_DRAIN_GRACE_MS") or 0),
                         int(env.get("SHOAL_DRAIN_TIMEOUT_MS") or DEFAULT_DRAIN_MS)))
        except ValueError:
            ms = 10 ** 9
        drain_s = max(drain_s, ms / 1000)
        grace = int(env.get("SHOAL_DRAIN_GRACE_MS") or 0)
        if grace:
            check(f"{cid}: SHOAL_DRAIN_GRACE_MS below SHOAL_DRAIN_TIMEOUT_MS",
                  grace < int(env.get("SHOAL_DRAIN_TIMEOUT_MS") or DEFAULT_DRAIN_MS),
                  "the edge stops at the drain timeout: no time left for in-flight calls")
    tgp = tspec.get("terminationGracePeriodSeconds", 30)
    check(f"{ident}: terminationGracePeriodSeconds {tgp} >= drain {drain_s:g} s + {DRAIN_MARGIN_S}",
          isinstance(tgp, int) and tgp >= drain_s + DRAIN_MARGIN_S, "SIGKILL would cut the drain short")
    if w["kind"] == "StatefulSet":
        svc = find("Service", spec.get("serviceName"))
        check(f"{ident}: serviceName {spec.get('serviceName')} is a Service selecting it",
              svc is not None and selects((svc.get("spec") or {}).get("selector"), pod_labels(w)),
              "missing or selects other pods")


def workload_for(component):
    return [w for w in workloads if pod_labels(w).get("app.kubernetes.io/component") == component]


for comp, kind in (("edge", "Deployment"), ("session", "Deployment"), ("query", "Deployment"),
                   ("upload", "Deployment"), ("health", "StatefulSet")):
    ws = workload_for(comp)
    check(f"topology: {comp} runs as a {kind}", len(ws) == 1 and ws[0]["kind"] == kind,
          f"found {[w['kind'] + '/' + name_of(w) for w in ws]}")
    if ws:
        args0 = (((ws[0]["spec"]["template"]["spec"].get("containers") or [{}])[0]).get("args") or [])
        check(f"topology: {comp} container runs `shoal {comp}`", args0[:1] == [comp], f"args {args0}")

# The health endpoints name StatefulSet pods through their headless Service.
for w in workloads:
    for c in w["spec"]["template"]["spec"].get("containers") or []:
        eps = container_env(w, c).get("SHOAL_HEALTH_ENDPOINTS")
        if eps is None:
            continue
        bad = []
        health = workload_for("health")
        for ep in [e for e in eps.split(",") if e]:
            m = re.fullmatch(r"tcp://([a-z0-9-]+)-(\d+)\.([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)", ep)
            if not m:
                bad.append(f"{ep}: not tcp://<statefulset>-<n>.<service>:<port>")
                continue
            sts = find("StatefulSet", m.group(1))
            svc = find("Service", m.group(3))
            if not sts or int(m.group(2)) >= sts["spec"].get("replicas", 1):
                bad.append(f"{ep}: no pod {m.group(1)}-{m.group(2)}")
            elif not svc or svc["spec"].get("clusterIP") != "None" or sts["spec"].get("serviceName") != m.group(3):
                bad.append(f"{ep}: {m.group(3)} is not the StatefulSet's headless Service")
            elif int(m.group(4)) not in [p.get("containerPort") for cc in sts["spec"]["template"]["spec"]["containers"] for p in cc.get("ports") or []]:
                bad.append(f"{ep}: port not declared")
        if health:
            n = health[0]["spec"].get("replicas", 1)
            if len([e for e in eps.split(",") if e]) != n:
                bad.append(f"lists {len(eps.split(','))} endpoints for {n} health pods")
        check(f"{w['kind']}/{name_of(w)}: SHOAL_HEALTH_ENDPOINTS name every health pod", not bad, "; ".join(bad))
        break

# ------------------------------------------------------------------ autoscalers, budgets, services

for h in objs("HorizontalPodAutoscaler"):
    ident = f"HorizontalPodAutoscaler/{name_of(h)}"
    spec = h.get("spec") or {}
    ref = spec.get("scaleTargetRef") or {}
    check(f"{ident}: targets an existing Deployment",
          ref.get("kind") == "Deployment" and find("Deployment", ref.get("name")) is not None, f"target {ref}")
    check(f"{ident}: minReplicas 2, maxReplicas 10", spec.get("minReplicas") == 2 and spec.get("maxReplicas") == 10,
          f"{spec.get('minReplicas')}..{spec.get('maxReplicas')}")
    cpu = [m for m in spec.get("metrics") or [] if m.get("type") == "Resource"
           and (m.get("resource") or {}).get("name") == "cpu"
           and (m["resource"].get("target") or {}).get("type") == "Utilization"
           and m["resource"]["target"].get("averageUtilization") == 50]
    check(f"{ident}: CPU utilization target 50 %", len(cpu) == 1, f"metrics {spec.get('metrics')}")
    target = find("Deployment", ref.get("name"))
    if target:
        c0 = target["spec"]["template"]["spec"]["containers"]
        check(f"{ident}: target containers request CPU", all(((c.get("resources") or {}).get("requests") or {}).get("cpu") for c in c0),
              "utilization needs CPU requests")
hpa_targets = {(h.get("spec") or {}).get("scaleTargetRef", {}).get("name") for h in objs("HorizontalPodAutoscaler")}
for comp in ("edge", "session", "query", "upload"):
    names = {name_of(w) for w in workload_for(comp)}
    check(f"autoscaling: {comp} has a HorizontalPodAutoscaler", names & hpa_targets, f"none targets {names}")

for p in objs("PodDisruptionBudget"):
    ident = f"PodDisruptionBudget/{name_of(p)}"
    spec = p.get("spec") or {}
    matched = [w for w in workloads if selects(spec.get("selector"), pod_labels(w))]
    check(f"{ident}: selects an existing workload", matched, f"selector {spec.get('selector')} matches no pods")
    check(f"{ident}: exactly one of minAvailable/maxUnavailable",
          ("minAvailable" in spec) != ("maxUnavailable" in spec), "both or neither")
    for w in matched:
        replicas = w["spec"].get("replicas", 1)
        if "minAvailable" in spec and isinstance(spec["minAvailable"], int):
            check(f"{ident}: minAvailable below {w['kind']}/{name_of(w)} replicas", spec["minAvailable"] < replicas,
                  "no pod could ever be evicted")
for comp in ("edge", "session", "query", "upload", "health"):
    check(f"disruption budget: {comp}",
          any(selects((p.get("spec") or {}).get("selector"), pod_labels(w))
              for p in objs("PodDisruptionBudget") for w in workload_for(comp)), "no PodDisruptionBudget selects it")

for s in objs("Service"):
    ident = f"Service/{name_of(s)}"
    spec = s.get("spec") or {}
    matched = [w for w in workloads if selects(spec.get("selector"), pod_labels(w))]
    check(f"{ident}: selects pods that exist", matched, f"selector {spec.get('selector')} matches no pods")
    declared = set()
    for w in matched:
        for c in w["spec"]["template"]["spec"].get("containers") or []:
            for pt in c.get("ports") or []:
                declared |= {pt.get("name"), pt.get("containerPort")}
    bad = [str(pt.get("targetPort", pt.get("port"))) for pt in spec.get("ports") or []
           if pt.get("targetPort", pt.get("port")) not in declared]
    check(f"{ident}: target ports declared by its pods", matched and not bad, "undeclared: " + ", ".join(bad))

for n in objs("NetworkPolicy"):
    sel = (n.get("spec") or {}).get("podSelector")
    check(f"NetworkPolicy/{name_of(n)}: selects pods that exist",
          any(selects(sel, pod_labels(w)) for w in workloads), f"podSelector {sel} matches no pods")

OPERATOR_PATHS = ("/api/cluster", "/api/load", "/metrics", "/metrics/cluster", "/health/ready")
for ing in objs("Ingress"):
    ident = f"Ingress/{name_of(ing)}"
    spec = ing.get("spec") or {}
    check(f"{ident}: TLS configured", spec.get("tls"), "no tls section")
    exposed, bad = [], []
    for rule in spec.get("rules") or []:
        for path in ((rule.get("http") or {}).get("paths") or []):
            b = ((path.get("backend") or {}).get("service") or {})
            svc = find("Service", b.get("name"))
            port = b.get("port") or {}
            if not svc or not any(pt.get("name") == port.get("name") if "name" in port else pt.get("port") == port.get("number")
                                  for pt in svc["spec"].get("ports") or []):
                bad.append(f"{path.get('path')} -> {b}")
            p, t = path.get("path", "/"), path.get("pathType")
            for op in OPERATOR_PATHS:
                if (t == "Exact" and p == op) or (t != "Exact" and (p.rstrip("/") == "" or op == p.rstrip("/") or op.startswith(p.rstrip("/") + "/"))):
                    exposed.append(f"{op} via {t} {p}")
    check(f"{ident}: backends are existing Service ports", not bad, "; ".join(bad))
    check(f"{ident}: operators' views not routed publicly", not exposed, "; ".join(exposed))

# ------------------------------------------------------------------ Postgres and the query service

def conninfo(text):
    """libpq key=value conninfo (no quoted values are used here) -> dict; None if malformed."""
    out = {}
    for word in (text or "").split():
        if "=" not in word:
            return None
        k, v = word.split("=", 1)
        out[k] = v
    return out


def env_ref(c, name):
    """(Secret name, key) a container's variable NAME comes from: env valueFrom.secretKeyRef,
    or the last envFrom Secret that has the key."""
    for e in c.get("env") or []:
        if e.get("name") == name:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            return (ref.get("name"), ref.get("key")) if ref else None
    found = None
    for src in c.get("envFrom") or []:
        if "secretRef" in src and name in (configmap_data("Secret", src["secretRef"].get("name")) or {}):
            found = (src["secretRef"]["name"], name)
    return found


def service_for(host, port, pods):
    """Why a Service named HOST with port PORT does not select PODS ('' when it does)."""
    svc = find("Service", host)
    if svc is None:
        return f"no Service {host}"
    if not pods or not all(selects(svc["spec"].get("selector"), pod_labels(w)) for w in pods):
        return f"Service {host} does not select {[name_of(w) for w in pods]}"
    other = [name_of(w) for w in workloads if selects(svc["spec"].get("selector"), pod_labels(w)) and w not in pods]
    if other:
        return f"Service {host} also selects {other}"
    if str(port) not in [str(p.get("port")) for p in svc["spec"].get("ports") or []]:
        return f"Service {host} has no port {port}"
    return ""


def policy_allows(target_pods, from_component, port):
    """Some NetworkPolicy selecting TARGET_PODS lets pods of FROM_COMPONENT in on PORT."""
    src = {"app.kubernetes.io/part-of": "shoal", "app.kubernetes.io/component": from_component}
    for n in objs("NetworkPolicy"):
        spec = n.get("spec") or {}
        if not any(selects(spec.get("podSelector"), pod_labels(w)) for w in target_pods):
            continue
        for rule in spec.get("ingress") or []:
            froms = rule.get("from") or []
            ports = [str(p.get("port")) for p in rule.get("ports") or []]
            if any(selects(f.get("podSelector"), src) for f in froms) and (not ports or str(port) in ports):
                return True
    return False


pg = workload_for("postgres")
query_ws = workload_for("query")
if pg:
    def role_of(w):
        args0 = (((w["spec"]["template"]["spec"].get("containers") or [{}])[0]).get("args") or [])
        return args0[0] if args0 else None
    primaries = [w for w in pg if role_of(w) == "primary"]
    replicas = [w for w in pg if role_of(w) == "replica"]
    check("postgres: one primary StatefulSet (args [primary]) with 1 replica",
          len(primaries) == 1 and primaries[0]["kind"] == "StatefulSet" and primaries[0]["spec"].get("replicas", 1) == 1,
          f"{[(w['kind'], name_of(w), role_of(w)) for w in pg]}")
    check("postgres: a replica StatefulSet (args [replica])", len(replicas) == 1 and replicas[0]["kind"] == "StatefulSet",
          f"{[(w['kind'], name_of(w), role_of(w)) for w in pg]}")
    check("postgres: no other Postgres workloads", len(primaries) + len(replicas) == len(pg),
          f"{[(name_of(w), role_of(w)) for w in pg]}")
    for w in pg:
        tspec = w["spec"]["template"]["spec"]
        c = (tspec.get("containers") or [{}])[0]
        claims = {(v.get("metadata") or {}).get("name") for v in w["spec"].get("volumeClaimTemplates") or []}
        mounts = {m.get("name"): m.get("mountPath") for m in c.get("volumeMounts") or []}
        check(f"postgres: {name_of(w)} keeps its data on a PersistentVolumeClaim",
              any(mounts.get(n) == "/var/lib/postgresql/data" for n in claims),
              f"claims {sorted(claims)}, mounts {mounts}")
        check(f"postgres: {name_of(w)} has a writable /var/run/postgresql (read-only root)",
              "/var/run/postgresql" in mounts.values(), f"mounts {mounts}")
    if primaries and replicas:
        pc = primaries[0]["spec"]["template"]["spec"]["containers"][0]
        rc = replicas[0]["spec"]["template"]["spec"]["containers"][0]
        penv, renv = container_env(primaries[0], pc), container_env(replicas[0], rc)
        why = service_for(renv.get("POSTGRES_PRIMARY_HOST") or "postgres-primary",
                          renv.get("POSTGRES_PRIMARY_PORT") or 5432, primaries)
        check("postgres: the replica's POSTGRES_PRIMARY_HOST is a Service of the primary", not why, why)
        a, b = env_ref(pc, "POSTGRES_REPLICATION_PASSWORD"), env_ref(rc, "POSTGRES_REPLICATION_PASSWORD")
        check("postgres: primary and replica read one replication password from a Secret", a and a == b,
              f"primary {a}, replica {b}")
        for c, role in ((pc, "primary"), (rc, "replica")):
            check(f"postgres: the {role} has a preStop fast shutdown",
                  "fast" in ((((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []),
                  "SIGTERM alone is a smart shutdown that waits for every client")
    for w in query_ws:
        c = w["spec"]["template"]["spec"]["containers"][0]
        env = container_env(w, c)
        for key, pods in (("SHOAL_PG_PRIMARY", primaries), ("SHOAL_PG_REPLICA", replicas)):
            ci = conninfo(env.get(key))
            if ci is None or "host" not in ci:
                check(f"query: {key} is a conninfo with a host", False, repr(env.get(key)))
                continue
            why = service_for(ci["host"], ci.get("port", 5432), pods)
            check(f"query: {key} names the Service of the Postgres {key[9:].lower()}", not why, why)
            if primaries:
                penv = container_env(primaries[0], primaries[0]["spec"]["template"]["spec"]["containers"][0])
                check(f"query: {key} uses the database and role the primary creates",
                      ci.get("dbname") == penv.get("POSTGRES_DB") and ci.get("user") == penv.get("POSTGRES_USER"),
                      f"dbname={ci.get('dbname')} user={ci.get('user')} vs POSTGRES_DB={penv.get('POSTGRES_DB')} "
                      f"POSTGRES_USER={penv.get('POSTGRES_USER')}")
        if primaries:
            a = env_ref(c, "PGPASSWORD")
            b = env_ref(primaries[0]["spec"]["template"]["spec"]["containers"][0], "POSTGRES_PASSWORD")
            check("query: its PGPASSWORD is the password the primary gives the role", a and a == b,
                  f"query {a}, primary {b}")
    check("network policy: query pods reach Postgres on 5432", policy_allows(pg, "query", 5432), "no policy lets them in")
    if primaries:
        check("network policy: the replica reaches the primary on 5432",
              policy_allows(primaries, "postgres", 5432), "no policy lets it in")
if query_ws:
    c = query_ws[0]["spec"]["template"]["spec"]["containers"][0]
    env = container_env(query_ws[0], c)
    check("query: PGPASSWORD or a password in the conninfos comes from a Secret",
          env_ref(c, "PGPASSWORD") or env_ref(c, "SHOAL_PG_PRIMARY"), "no Secret provides it")
    redis = workload_for("redis")
    if redis:
        check("network policy: query pods reach Redis on 6379", policy_allows(redis, "query", 6379),
              "no policy lets them in")
        why = service_for(env.get("SHOAL_REDIS_HOST") or "", env.get("SHOAL_REDIS_PORT") or 6379, redis)
        check("query: SHOAL_REDIS_HOST is the Service of the in-cluster Redis", not why, why)

# ------------------------------------------------------------------ S3 and the upload service

def egress_allows(from_pods, to_component, port, protocol="TCP"):
    """Pods FROM_PODS may open connections to pods of TO_COMPONENT on PORT: no Egress policy
    selects them (everything is allowed), or one of those policies has a rule for it."""
    policies = [n for n in objs("NetworkPolicy")
                if "Egress" in ((n.get("spec") or {}).get("policyTypes") or [])
                and any(selects((n.get("spec") or {}).get("podSelector"), pod_labels(w)) for w in from_pods)]
    if not policies:
        return True
    dst = {"app.kubernetes.io/part-of": "shoal", "app.kubernetes.io/component": to_component} \
        if not isinstance(to_component, dict) else to_component
    for n in policies:
        for rule in n["spec"].get("egress") or []:
            ports = [(str(p.get("port")), p.get("protocol", "TCP")) for p in rule.get("ports") or []]
            if ports and (str(port), protocol) not in ports:
                continue
            for t in rule.get("to") or []:
                if "ipBlock" in t and t["ipBlock"].get("cidr") == "0.0.0.0/0":
                    return True
                if t.get("podSelector") is not None and selects(t["podSelector"], dst):
                    return True
    return False


def nginx_size(text):
    """ingress-nginx size ("1024m", "10k", "1g", "0" = unlimited) -> bytes; None if malformed."""
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", str(text or "").strip())
    if not m:
        return None
    n = int(m.group(1))
    return float("inf") if n == 0 else n * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[m.group(2).lower()]


upload_ws = workload_for("upload")
s3_ws = workload_for("s3")
edge_ws = workload_for("edge")
if upload_ws:
    uc = upload_ws[0]["spec"]["template"]["spec"]["containers"][0]
    uenv = container_env(upload_ws[0], uc)
    for key in ("SHOAL_S3_ACCESS_KEY", "SHOAL_S3_SECRET_KEY"):
        check(f"upload: {key} comes from a Secret", env_ref(uc, key), "not from a Secret")
    check("network policy: the edges reach the upload pods on 7301", policy_allows(upload_ws, "edge", 7301),
          "no policy lets them in")
    for comp, port in (("health", 7001), ("health", 7002), ("query", 7201)):
        check(f"network policy: upload pods may connect to {comp} on {port}", egress_allows(upload_ws, comp, port),
              "an Egress policy selects them and no rule allows it")
    check("network policy: upload pods may query the cluster DNS (53/UDP)",
          egress_allows(upload_ws, {"k8s-app": "kube-dns"}, 53, "UDP"),
          "an Egress policy selects them and no rule allows DNS")
    # One size limit: the edge refuses bigger bodies, the upload service bigger streams.
    if edge_ws:
        ec = edge_ws[0]["spec"]["template"]["spec"]["containers"][0]
        a, b = container_env(edge_ws[0], ec).get("SHOAL_UPLOAD_MAX_BYTES"), uenv.get("SHOAL_UPLOAD_MAX_BYTES")
        check("upload: the edge and the upload pods read one SHOAL_UPLOAD_MAX_BYTES", a == b,
              f"edge {a}, upload {b}")
    # An upload holds at most 2 parts and 1 chunk: the memory limit must hold every stream.
    try:
        need = int(uenv.get("SHOAL_UPLOAD_MAX_STREAMS") or 16) * (
            2 * int(uenv.get("SHOAL_UPLOAD_PART_BYTES") or 8388608) + int(uenv.get("SHOAL_UPLOAD_CHUNK_BYTES") or 262144)) \
            + 16 * 1024 ** 2
    except ValueError:
        need = None
    lim = str(((uc.get("resources") or {}).get("limits") or {}).get("memory") or "")
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", lim)
    have = int(m.group(1)) * {"Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3}[m.group(2)] if m else None
    check("upload: memory limit holds SHOAL_UPLOAD_MAX_STREAMS x (2 parts + 1 chunk) + 16 MiB",
          need is not None and have is not None and have >= need,
          f"limit {lim}, needs {need and round(need / 1024 ** 2)} MiB")
    endpoint = uenv.get("SHOAL_S3_ENDPOINT") or ""
    m = re.fullmatch(r"(https?)://([a-z0-9.-]+)(?::(\d+))?/?", endpoint)
    if not m:
        check("upload: SHOAL_S3_ENDPOINT is a URL without a path", False, repr(endpoint))
    elif "." not in m.group(2) or re.search(r"\.svc(\.cluster\.local)?$", m.group(2)):
        # In the cluster: the Service of the S3 server, its bucket, its key pair, its volume.
        host = m.group(2).split(".")[0]
        port = m.group(3) or ("443" if m.group(1) == "https" else "80")
        why = service_for(host, port, s3_ws)
        check("upload: SHOAL_S3_ENDPOINT names the Service of the in-cluster S3 server", not why, why)
        svc = find("Service", host)
        in_default = False
        for r in (kustomizations.get(K8S) or {}).get("resources") or []:
            d = os.path.normpath(os.path.join(K8S, r))
            if svc is not None and any(os.path.normpath(p) == os.path.join(d, os.path.basename(p))
                                       and obj is svc for p, obj in docs):
                in_default = True
        check("kustomization: the default set includes the S3 server the upload pods use", in_default,
              f"no resource of deploy/k8s/kustomization.yaml holds Service/{host}")
        for w in s3_ws:
            c = w["spec"]["template"]["spec"]["containers"][0]
            a = c.get("args") or []
            opt = {a[i]: a[i + 1] for i in range(len(a) - 1) if a[i].startswith("--")}
            check("s3: the server creates the bucket the upload pods use (--bucket)",
                  opt.get("--bucket") == uenv.get("SHOAL_S3_BUCKET"),
                  f"--bucket {opt.get('--bucket')} vs SHOAL_S3_BUCKET {uenv.get('SHOAL_S3_BUCKET')}")
            check("s3: path-style addressing (the test server has no virtual-host buckets)",
                  str(uenv.get("SHOAL_S3_PATH_STYLE")).lower() == "true", f"SHOAL_S3_PATH_STYLE={uenv.get('SHOAL_S3_PATH_STYLE')}")
            for key in ("SHOAL_S3_ACCESS_KEY", "SHOAL_S3_SECRET_KEY"):
                x, y = env_ref(uc, key), env_ref(c, key)
                check(f"s3: the server and the upload pods read one {key}", x and x == y, f"upload {x}, server {y}")
            claims = {(v.get("metadata") or {}).get("name") for v in w["spec"].get("volumeClaimTemplates") or []}
            mounts = {m2.get("name"): m2.get("mountPath") for m2 in c.get("volumeMounts") or []}
            check("s3: the objects (--dir) are on a PersistentVolumeClaim",
                  opt.get("--dir") and any(mounts.get(n) == opt.get("--dir") for n in claims),
                  f"--dir {opt.get('--dir')}, claims {sorted(claims)}, mounts {mounts}")
        check("network policy: upload pods reach the S3 server on its port",
              s3_ws and policy_allows(s3_ws, "upload", port) and egress_allows(upload_ws, "s3", port),
              "no policy lets them in, or their Egress policy does not let them out")
        others = [name_of(n) for n in objs("NetworkPolicy") if s3_ws
                  and any(selects(n["spec"].get("podSelector"), pod_labels(w)) for w in s3_ws)
                  for rule in n["spec"].get("ingress") or [] for f in rule.get("from") or []
                  if not selects(f.get("podSelector"), {"app.kubernetes.io/part-of": "shoal",
                                                        "app.kubernetes.io/component": "upload"})]
        check("network policy: only the upload pods reach the S3 test server (it checks no signature)",
              s3_ws and not others, f"other sources in {others}")
    # The public entry for uploads lets 1 GiB bodies through and streams them.
    limit = uenv.get("SHOAL_UPLOAD_MAX_BYTES")
    for ing in objs("Ingress"):
        paths = [p.get("path", "") for r in ing["spec"].get("rules") or []
                 for p in ((r.get("http") or {}).get("paths") or [])]
        if not any("/api/uploads".startswith(p.rstrip("/") or "/") and p != "/" or p.startswith("/api/uploads")
                   for p in paths):
            continue
        ann = (ing.get("metadata") or {}).get("annotations") or {}
        size = nginx_size(ann.get("nginx.ingress.kubernetes.io/proxy-body-size", "1m"))
        check(f"Ingress/{name_of(ing)}: proxy-body-size lets SHOAL_UPLOAD_MAX_BYTES through",
              size is not None and limit and size >= int(limit),
              f"proxy-body-size {ann.get('nginx.ingress.kubernetes.io/proxy-body-size')} vs {limit}")
        check(f"Ingress/{name_of(ing)}: upload bodies are streamed (proxy-request-buffering off)",
              ann.get("nginx.ingress.kubernetes.io/proxy-request-buffering") == "off",
              "the controller would spool every upload to its disk first")
        finish_ms = 120000
        if edge_ws:
            ec = edge_ws[0]["spec"]["template"]["spec"]["containers"][0]
            finish_ms = int(container_env(edge_ws[0], ec).get("SHOAL_UPLOAD_FINISH_TIMEOUT_MS") or finish_ms)
        read_s = ann.get("nginx.ingress.kubernetes.io/proxy-read-timeout", "60")
        check(f"Ingress/{name_of(ing)}: proxy-read-timeout outlasts the edge's SHOAL_UPLOAD_FINISH_TIMEOUT_MS",
              str(read_s).isdigit() and int(read_s) * 1000 > finish_ms,
              f"proxy-read-timeout {read_s} s vs {finish_ms} ms: the client would get the controller's 504")

# Overlays: every JSON patch targets an object of the base and, for "replace", a key it has.
for kdir, k in sorted(kustomizations.items()):
    for patch in k.get("patches") or []:
        t = patch.get("target") or {}
        obj = find(t.get("kind"), t.get("name"))
        if obj is None:
            check(f"overlay {rel(kdir)}: patch target {t.get('kind')}/{t.get('name')} exists", False, "no such object")
            continue
        try:
            ops = yaml.safe_load(patch.get("patch") or "")
        except yaml.YAMLError as e:
            check(f"overlay {rel(kdir)}: patch of {t.get('name')} parses", False, str(e)[:100])
            continue
        if not isinstance(ops, list):
            continue
        bad = []
        for op in ops:
            parts = (op.get("path") or "").strip("/").split("/")
            if op.get("op") == "replace" and (len(parts) != 2 or parts[1] not in (obj.get(parts[0]) or {})):
                bad.append(f"{op.get('op')} {op.get('path')}: no such key")
            if op.get("op") in ("add", "replace") and parts[-1].startswith("SHOAL_") and parts[-1] not in documented:
                bad.append(f"{parts[-1]} not in README.md")
        check(f"overlay {rel(kdir)}: patch of {t.get('kind')}/{t.get('name')} fits the base", not bad, "; ".join(bad))

# ------------------------------------------------------------------ live updates (events, WebSocket)

HEX64 = re.compile(r"[0-9a-fA-F]{64}")
WS_TIMEOUT_MIN_S = 3600   # an Ingress must not end a quiet WebSocket before an hour
EDGE_BASE_MEMORY = 32 * 1024 ** 2   # the edge itself, besides the WebSocket queues


def k8s_bytes(text):
    """Kubernetes memory quantity (Ki, Mi, Gi) -> bytes; None if malformed."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", str(text or ""))
    return int(m.group(1)) * {"Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3}[m.group(2)] if m else None


# Session and query publish events on a ZeroMQ PUB socket the edges subscribe to: bound on every
# interface on a fixed, declared port, advertised with the pod IP (the default, 127.0.0.1 on a
# random port, is unreachable from the edges), the port open to the edges.
for comp in ("session", "query"):
    for w in workload_for(comp):
        c = w["spec"]["template"]["spec"]["containers"][0]
        env = {e.get("name"): e.get("value") for e in c.get("env") or []}
        bind, adv = str(env.get("SHOAL_EVENTS_BIND") or ""), str(env.get("SHOAL_EVENTS_ADVERTISE") or "")
        mb = re.fullmatch(r"tcp://(0\.0\.0\.0|\*):(\d+)", bind)
        ma = re.fullmatch(r"tcp://\$\(POD_IP\):(\d+)", adv)
        check(f"events: {comp} binds its PUB on every interface, a fixed port", mb,
              f"SHOAL_EVENTS_BIND={bind or '(unset: 127.0.0.1, random port)'}")
        check(f"events: {comp} advertises its PUB with the pod IP, the bound port",
              mb and ma and ma.group(1) == mb.group(2),
              f"SHOAL_EVENTS_BIND={bind}, SHOAL_EVENTS_ADVERTISE={adv or '(unset)'}")
        router = re.search(r":(\d+)$", str(env.get("SHOAL_BIND") or ""))
        check(f"events: {comp} PUB port is not its ROUTER port", mb and router and mb.group(2) != router.group(1),
              f"SHOAL_BIND={env.get('SHOAL_BIND')}, SHOAL_EVENTS_BIND={bind}")
        if mb:
            check(f"network policy: the edges reach {comp}'s events port {mb.group(2)}",
                  policy_allows([w], "edge", mb.group(2)) and egress_allows(edge_ws, comp, mb.group(2)),
                  "no policy lets them in, or an Egress policy of the edges does not let them out")

# The edges: one WebSocket proof key from a Secret, 64 hex characters; connection limits.
for w in edge_ws:
    c = w["spec"]["template"]["spec"]["containers"][0]
    ref = env_ref(c, "SHOAL_EDGE_SECRET")
    check("edge: SHOAL_EDGE_SECRET comes from a Secret", ref, "not from a Secret (every edge needs the same one)")
    if ref:
        value = (configmap_data("Secret", ref[0]) or {}).get(ref[1])
        check(f"edge: SHOAL_EDGE_SECRET in Secret/{ref[0]} is 64 hex characters",
              value is not None and HEX64.fullmatch(str(value)), f"{len(str(value or ''))} characters")
    env = container_env(w, c)
    try:
        ws_max = int(env.get("SHOAL_WS_MAX_CONNECTIONS") or 3000)
        conn_max = int(env.get("SHOAL_MAX_CONNECTIONS") or 4096)
        queue = int(env.get("SHOAL_WS_QUEUE_BYTES") or 65536)
    except ValueError as e:
        check("edge: WebSocket limits are numbers", False, str(e))
        continue
    check("edge: SHOAL_WS_MAX_CONNECTIONS below SHOAL_MAX_CONNECTIONS", ws_max < conn_max,
          f"{ws_max} vs {conn_max}: HTTP requests would find no connection left")
    have = k8s_bytes(((c.get("resources") or {}).get("limits") or {}).get("memory"))
    need = ws_max * queue + EDGE_BASE_MEMORY
    check("edge: memory limit holds SHOAL_WS_MAX_CONNECTIONS x SHOAL_WS_QUEUE_BYTES + 32 MiB",
          have is not None and have >= need,
          f"limit {have and round(have / 1024 ** 2)} MiB, needs {round(need / 1024 ** 2)} MiB")

# The public entry for /ws: exactly one Ingress routes it, with long read and send timeouts.
ws_ings = [ing for ing in objs("Ingress")
           if any(p.get("path", "/") == "/ws" or (p.get("pathType") != "Exact" and "/ws".startswith(p.get("path", "/")))
                  for r in ing["spec"].get("rules") or [] for p in ((r.get("http") or {}).get("paths") or []))]
ws_exact = [ing for ing in ws_ings
            if any(p.get("path") == "/ws" for r in ing["spec"].get("rules") or []
                   for p in ((r.get("http") or {}).get("paths") or []))]
if objs("Ingress"):
    check("Ingress: exactly one Ingress routes /ws", len(ws_exact) == 1 and len(ws_ings) == 1,
          f"/ws routed by {[name_of(i) for i in ws_ings]}")
ping_s = pong_s = None
if edge_ws:
    eenv = container_env(edge_ws[0], edge_ws[0]["spec"]["template"]["spec"]["containers"][0])
    ping_s, pong_s = int(eenv.get("SHOAL_WS_PING_S") or 20), int(eenv.get("SHOAL_WS_PONG_TIMEOUT_S") or 10)
for ing in ws_exact:
    ann = (ing.get("metadata") or {}).get("annotations") or {}
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        v = str(ann.get("nginx.ingress.kubernetes.io/" + key, "60"))
        check(f"Ingress/{name_of(ing)}: {key} keeps quiet WebSockets open (>= {WS_TIMEOUT_MIN_S} s)",
              v.isdigit() and int(v) >= WS_TIMEOUT_MIN_S and (ping_s is None or int(v) > ping_s + pong_s),
              f"{key} {v} s: the controller would cut live connections")

# ------------------------------------------------------------------ yamllint

yamllint = shutil.which("yamllint")
lint_targets = [os.path.join(ROOT, "deploy/k8s"), os.path.join(ROOT, "deploy/prometheus")]
if yamllint:
    p = subprocess.run([yamllint, "-f", "parsable", "-c", os.path.join(REPO, "tests/k8s/yamllint.yml")] + lint_targets,
                       capture_output=True, text=True)
    check("yamllint deploy/k8s deploy/prometheus", p.returncode == 0, (p.stdout + p.stderr).strip()[:600])
else:
    check("yamllint available", False, "yamllint missing (tests/k8s/run installs it)")

# ------------------------------------------------------------------ metric names in the C code

c_metrics = set()
for path in glob.glob(os.path.join(REPO, "common/*.c")) + glob.glob(os.path.join(REPO, "services/*/*.c")):
    c_metrics |= set(re.findall(r'"(shoal_[a-z0-9_]+)"', open(path, errors="replace").read()))
check("metrics: names found in the C code", len(c_metrics) > 10, f"{len(c_metrics)} names")


def metric_names(expr):
    names = set(re.findall(r"\b(shoal_[a-z0-9_]+)\b", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in c_metrics else n
            for n in names}


# ------------------------------------------------------------------ Prometheus

prom_path = os.path.join(ROOT, "deploy/prometheus/prometheus.yml")
try:
    prom = yaml.safe_load(open(prom_path))
    check("prometheus: prometheus.yml parses", isinstance(prom, dict), "not a mapping")
except (OSError, yaml.YAMLError) as e:
    prom = {}
    check("prometheus: prometheus.yml parses", False, str(e)[:200])
jobs = {j.get("job_name"): j for j in prom.get("scrape_configs") or []}
promtool = os.environ.get("SHOAL_K8S_PROMTOOL") or shutil.which("promtool") or ""
if promtool:
    # Debian's Prometheus is built without Kubernetes discovery: check a copy whose
    # kubernetes_sd_configs become static targets; the relabelling is simulated below.
    copy = json.loads(json.dumps(prom))
    for j in copy.get("scrape_configs") or []:
        if j.pop("kubernetes_sd_configs", None) is not None:
            j["static_configs"] = [{"targets": ["pod.invalid:8080"]}]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(copy, f)
    p = subprocess.run([promtool, "check", "config", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    check("prometheus: promtool check config", p.returncode == 0, (p.stdout + p.stderr).strip()[-400:])
else:
    check("prometheus: promtool available", False, "promtool missing (tests/k8s/run fetches it)")


def relabel(labels, rules):
    """Prometheus relabelling (keep, drop, replace); None when the target is dropped."""
    labels = dict(labels)
    for r in rules:
        value = r.get("separator", ";").join(labels.get(s, "") for s in r.get("source_labels") or [])
        m = re.fullmatch(r.get("regex", "(.*)"), value)
        action = r.get("action", "replace")
        if action == "keep" and not m:
            return None
        if action == "drop" and m:
            return None
        if action == "replace" and m:
            labels[r["target_label"]] = m.expand(r.get("replacement", "$1").replace("$", "\\"))
    return labels


def local_targets(job):
    return sorted(t for sc in (job or {}).get("static_configs") or [] for t in sc.get("targets") or [])


local_edges = [j for j in jobs.values() if j.get("metrics_path", "/metrics") == "/metrics"
               and local_targets(j) == ["127.0.0.1:8081", "127.0.0.1:8082"]]
check("prometheus: local job scrapes /metrics of edges 127.0.0.1:8081 and :8082", local_edges, f"jobs {list(jobs)}")
local_cluster = [j for j in jobs.values() if j.get("metrics_path") == "/metrics/cluster"
                 and len(local_targets(j)) == 1 and local_targets(j)[0].startswith("127.0.0.1:")]
check("prometheus: local job scrapes /metrics/cluster on one edge", local_cluster, "none")
check("prometheus: every job keeps Shoal's instance labels (honor_labels)",
      jobs and all(j.get("honor_labels") is True for j in jobs.values()),
      "without honor_labels the instance label becomes exported_instance")
sd_jobs = [j for j in jobs.values() if any(s.get("role") == "pod" for s in j.get("kubernetes_sd_configs") or [])]
check("prometheus: a kubernetes_sd_configs job with role pod", len(sd_jobs) == 1, f"{len(sd_jobs)} jobs")
if sd_jobs:
    # Simulate discovery: one target per declared container port of every pod in the manifests.
    kept = set()
    for w in workloads:
        for c in w["spec"]["template"]["spec"].get("containers") or []:
            for pt in c.get("ports") or []:
                meta = {"__address__": f"{name_of(w)}-pod:{pt.get('containerPort')}",
                        "__meta_kubernetes_namespace": NAMESPACE,
                        "__meta_kubernetes_pod_name": f"{name_of(w)}-0",
                        "__meta_kubernetes_pod_phase": "Running",
                        "__meta_kubernetes_pod_container_port_number": str(pt.get("containerPort")),
                        "__meta_kubernetes_pod_container_port_name": pt.get("name", "")}
                for k, v in pod_labels(w).items():
                    meta["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k)] = v
                out = relabel(meta, sd_jobs[0].get("relabel_configs") or [])
                if out is not None:
                    kept.add((pod_labels(w).get("app.kubernetes.io/component"), out.get("__address__", "")))
    check("prometheus: pod discovery keeps exactly the edge pods' port 8080",
          kept and all(c == "edge" and a.endswith(":8080") for c, a in kept) and len(kept) == 1,
          f"kept {sorted(kept)}")
cluster_jobs = [j for j in jobs.values() if j.get("metrics_path") == "/metrics/cluster"
                and any(".svc" in t for t in local_targets(j))]
ok_svc, why = False, "no /metrics/cluster job with a Service target"
for j in cluster_jobs:
    for t in local_targets(j):
        m = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?:(\d+)", t)
        svc = find("Service", m.group(1)) if m else None
        edge_pods = workload_for("edge")
        if svc and m.group(2) == NAMESPACE and int(m.group(3)) in [p.get("port") for p in svc["spec"].get("ports") or []] \
                and edge_pods and selects(svc["spec"].get("selector"), pod_labels(edge_pods[0])):
            ok_svc, why = True, ""
        else:
            why = f"{t}: not a port of a Service selecting the edge pods"
check("prometheus: /metrics/cluster scraped through the edge Service", ok_svc, why)
# ------------------------------------------------------------------ Grafana

dash_path = os.path.join(ROOT, "deploy/grafana/shoal-dashboard.json")
try:
    dash = json.load(open(dash_path))
    check("grafana: dashboard JSON parses", isinstance(dash, dict) and dash.get("panels"), "no panels")
except (OSError, ValueError) as e:
    dash = {}
    check("grafana: dashboard JSON parses", False, str(e)[:200])


def all_panels(ps):
    for p in ps or []:
        yield p
        yield from all_panels(p.get("panels"))


exprs = [(p.get("title"), t.get("expr")) for p in all_panels(dash.get("panels")) for t in p.get("targets") or []]
variables = {v.get("name") for v in (dash.get("templating") or {}).get("list") or []}
for v in (dash.get("templating") or {}).get("list") or []:
    q = v.get("query")
    q = q.get("query") if isinstance(q, dict) else q
    if v.get("type") == "query":
        exprs.append((f"variable {v.get('name')}", re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q or "")))
check("grafana: panels have queries", len(exprs) >= 10, f"{len(exprs)} queries")
ids = [p.get("id") for p in all_panels(dash.get("panels"))]
check("grafana: panel ids unique", len(ids) == len(set(ids)) and None not in ids, f"ids {ids}")
used = set()
for title, e in exprs:
    names = metric_names(e or "")
    used |= names
    unknown = sorted(n for n in names if n not in c_metrics)
    check(f"grafana: metrics exist in the C code: {title}", names and not unknown, f"unknown {unknown}" if unknown else "no shoal_ metric")
    refs = set(re.findall(r"\$\{?([a-zA-Z_]\w*)", e or "")) - {"__rate_interval", "__interval", "__range"}
    check(f"grafana: variables defined: {title}", refs <= variables, f"undefined {sorted(refs - variables)}")
required = ["shoal_requests_total", "shoal_http_requests_total", "shoal_request_errors_total",
            "shoal_http_responses_total", "shoal_request_seconds", "shoal_http_request_seconds", "shoal_in_flight",
            "shoal_rss_bytes", "shoal_calls_retries_total", "shoal_calls_late_replies_total", "shoal_health_dead_total"]
missing = [m for m in required if m not in used]
check("grafana: dashboard covers the required metrics", not missing, "missing " + ", ".join(missing))
for hist in ("shoal_http_request_seconds", "shoal_request_seconds"):
    panels_q = []
    for p in all_panels(dash.get("panels")):
        targets = [t.get("expr") or "" for t in p.get("targets") or []]
        if targets and all(hist + "_bucket" in e for e in targets):
            panels_q.append({q for e in targets for q in re.findall(r"histogram_quantile\(\s*(0\.\d+)", e)})
    check(f"grafana: a panel with p50, p95, p99 of {hist}", {"0.5", "0.95", "0.99"} in panels_q,
          f"quantiles per panel {[sorted(q) for q in panels_q]}")
if promtool and exprs:
    # PromQL syntax: every query as a recording rule, Grafana's variables filled in.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"shoal:dashboard_query_{i}",
         "expr": re.sub(r"\$\{?(service|instance)\}?", ".*", re.sub(r"\$__(rate_)?interval|\$__range", "1m", e))}
        for i, (_, e) in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(rules, f)
    p = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    check("grafana: every query is valid PromQL (promtool)", p.returncode == 0, (p.stdout + p.stderr).strip()[-400:])

# ------------------------------------------------------------------ deploy/README.md

guide = os.path.join(ROOT, "deploy/README.md")
text = open(guide).read() if os.path.exists(guide) else ""
for needle in ("kubectl apply -k deploy/k8s", "Containers (Docker / podman compose)", "deploy/compose/README.md",
               "prometheus.yml", "shoal-dashboard.json", "/metrics/cluster", "/api/cluster"):
    check(f"deploy/README.md mentions {needle}", needle in text, "missing")

failed = sum(1 for _, ok, _ in results if not ok)
print(f"{len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
