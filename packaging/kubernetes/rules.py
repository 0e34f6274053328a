"""The properties check.py asserts of the expanded manifests, beyond the schemas: how tether
runs (native sidecar, entrypoint, node), pod hardening, labels, and that Services,
PodDisruptionBudgets and probes point at what they mean to.

Each rule appends "where: what is wrong" lines to `problems`; none raises.
"""

import base64
import fnmatch
import os
import re
import shlex
import tomllib
from urllib.parse import urlsplit

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance",
          "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by")
POD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance",
              "app.kubernetes.io/component")
NAMESPACE = "tether"
# Volume types the "restricted" Pod Security Standard admits.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
TETHER_IMAGES = re.compile(r"^ghcr\.io/example/[a-z0-9-]+:\d+\.\d+(\.\d+)?$")


class Pod:
    """A pod template of a workload, with what the rules need to look things up."""

    def __init__(self, res):
        self.res = res
        self.where = f"{res['kind']} {res['metadata'].get('namespace')}/{res['metadata']['name']}"
        self.template = res["spec"]["template"]
        self.labels = (self.template.get("metadata") or {}).get("labels") or {}
        self.spec = self.template["spec"]
        self.init = self.spec.get("initContainers") or []
        self.main = self.spec.get("containers") or []
        self.volumes = {v["name"]: v for v in self.spec.get("volumes") or []}

    def containers(self):
        return [(c, True) for c in self.init] + [(c, False) for c in self.main]

    def effective(self, c, field):
        own = (c.get("securityContext") or {}).get(field)
        return own if own is not None else (self.spec.get("securityContext") or {}).get(field)

    def mount_for(self, c, path):
        """The (mount, volume) under which `path` lies in container `c`, deepest first."""
        best = None
        for m in c.get("volumeMounts") or []:
            mp = m["mountPath"].rstrip("/")
            if path == mp or path.startswith(mp + "/"):
                if best is None or len(mp) > len(best[0]["mountPath"].rstrip("/")):
                    best = (m, self.volumes.get(m["name"]))
        return best


def pods(resources):
    return [Pod(r) for r in resources if r["kind"] in WORKLOADS]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def port_number(c, port):
    """A probe's or Service's port (number or name) as the container's port number."""
    if isinstance(port, int):
        return port
    for p in c.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    return None


def tether_argv(c):
    """tether's argv in container `c` (["tether", VERB, ...]), or None if it runs no tether.
    Our images' entrypoint is tether; an app's image with tether names it in `command`."""
    command = c.get("command") or []
    args = [str(a) for a in c.get("args") or []]
    if command:
        if os.path.basename(command[0]) != "tether":
            return None
        return ["tether"] + [str(a) for a in command[1:]] + args
    repo = c.get("image", "").rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return ["tether"] + args if repo in ("tether", "tether-agent") else None


def parse_flags(argv, where, problems):
    """{--flag: [values]} of tether's own arguments (before `--`), and the command after it.
    Flags are written --flag=value (or alone for a switch), so the manifests read plainly."""
    flags, rest = {}, []
    own = argv[2:]
    if "--" in own:
        at = own.index("--")
        own, rest = own[:at], own[at + 1:]
    for tok in own:
        if not tok.startswith("--"):
            problems.append(f"{where}: argument {tok!r}: write flags as --flag=value")
            continue
        name, _, value = tok.partition("=")
        flags.setdefault(name, []).append(value)
    return flags, rest


def one(flags, name):
    values = flags.get(name)
    return values[-1] if values else None


def host_port(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else None


def secret_or_configmap_data(resources, namespace, volume):
    """The data (name -> bytes) of the Secret or ConfigMap a volume mounts, if rendered."""
    if "secret" in volume:
        kind, name = "Secret", volume["secret"]["secretName"]
    elif "configMap" in volume:
        kind, name = "ConfigMap", volume["configMap"]["name"]
    else:
        return None
    for r in resources:
        m = r["metadata"]
        if r["kind"] == kind and m["name"] == name and m.get("namespace") == namespace:
            data = {k: base64.b64decode(v) for k, v in (r.get("data") or {}).items()}
            data.update({k: v.encode() for k, v in (r.get("stringData") or {}).items()})
            return data
    return None


def file_in_pod(resources, pod, c, path, problems, what):
    """The bytes of a file tether reads from a mounted Secret/ConfigMap (None if not
    rendered here); a problem if it is not on such a mount, or the key is missing."""
    found = pod.mount_for(c, path)
    if found is None or found[1] is None:
        problems.append(f"{pod.where}: {c['name']}: {what} {path} is on no volume")
        return None
    mount, volume = found
    if mount.get("subPath"):
        problems.append(f"{pod.where}: {c['name']}: {what} {path} is mounted with subPath: "
                        "kubelet never updates such a file, so no change or reload sees it")
    data = secret_or_configmap_data(resources, pod.res["metadata"].get("namespace"), volume)
    if data is None:
        return None
    key = os.path.relpath(path, mount["mountPath"])
    if key not in data:
        problems.append(f"{pod.where}: {c['name']}: {what} {path}: the volume has no key {key}")
        return None
    return data[key]


def check_hardening(pod, problems):
    spec = pod.spec
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{pod.where}: automountServiceAccountToken must be false "
                        "(nothing here talks to the Kubernetes API)")
    if spec.get("terminationGracePeriodSeconds") is None:
        problems.append(f"{pod.where}: terminationGracePeriodSeconds is not set")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{pod.where}: {field} is on")
    for name, v in pod.volumes.items():
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"{pod.where}: volume {name}: {kinds} not allowed by the "
                            "restricted Pod Security Standard")
    for c, _ in pod.containers():
        where = f"{pod.where}: container {c['name']}"
        sc = c.get("securityContext") or {}
        if pod.effective(c, "runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        uid = pod.effective(c, "runAsUser")
        if not isinstance(uid, int) or uid == 0:
            problems.append(f"{where}: runAsUser must be a non-zero uid")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        caps = sc.get("capabilities") or {}
        if caps.get("drop") != ["ALL"]:
            problems.append(f"{where}: capabilities.drop must be [ALL]")
        if caps.get("add"):
            # A capability added to a non-root container never reaches its process (no
            # ambient capabilities, no privilege escalation), and the restricted Pod Security
            # Standard admits none but NET_BIND_SERVICE. To signal the app, tether runs as
            # the app's user instead (same uid: no capability needed).
            problems.append(f"{where}: capabilities.add {caps['add']}: a non-root container "
                            "never gets them; run tether as the app's user instead")
        seccomp = (pod.effective(c, "seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault")
        res = c.get("resources") or {}
        for part, keys in (("requests", ("cpu", "memory")), ("limits", ("memory",))):
            for key in keys:
                if key not in (res.get(part) or {}):
                    problems.append(f"{where}: resources.{part}.{key} is not set")
        image = c.get("image", "")
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            problems.append(f"{where}: image {image} needs a fixed tag")
        if tether_argv(c) and not TETHER_IMAGES.match(image):
            problems.append(f"{where}: image {image}: tether images are the documented "
                            "placeholders ghcr.io/example/NAME:VERSION")


def check_labels(resources, problems):
    for r in resources:
        m = r["metadata"]
        where = f"{r['kind']} {m.get('namespace')}/{m['name']}"
        labels = m.get("labels") or {}
        for key in LABELS:
            if not labels.get(key):
                problems.append(f"{where}: label {key} is missing")
        if r["kind"] != "Namespace" and m.get("namespace") != NAMESPACE:
            problems.append(f"{where}: not in the namespace {NAMESPACE}")
    for pod in pods(resources):
        for key in POD_LABELS:
            if not pod.labels.get(key):
                problems.append(f"{pod.where}: pod template label {key} is missing")
        selector = (pod.res["spec"].get("selector") or {}).get("matchLabels")
        if not selects(selector, pod.labels):
            problems.append(f"{pod.where}: selector {selector} does not match its pod template")


def check_selectors(resources, problems):
    """Every Service and PodDisruptionBudget selects pods of exactly one workload."""
    all_pods = pods(resources)
    for r in resources:
        if r["kind"] not in ("Service", "PodDisruptionBudget"):
            continue
        m = r["metadata"]
        where = f"{r['kind']} {m.get('namespace')}/{m['name']}"
        sel = r["spec"].get("selector") or {}
        sel = sel.get("matchLabels", sel) if r["kind"] == "PodDisruptionBudget" else sel
        hit = [p for p in all_pods
               if p.res["metadata"].get("namespace") == m.get("namespace")
               and selects(sel, p.labels)]
        if len(hit) != 1:
            problems.append(f"{where}: selector {sel} selects {len(hit)} workloads, not 1")
            continue
        pod = hit[0]
        if r["kind"] == "Service":
            declared = {p["containerPort"] for c in pod.main for p in c.get("ports") or []}
            for port in r["spec"].get("ports") or []:
                target = port.get("targetPort", port["port"])
                if not any(port_number(c, target) in declared for c in pod.main):
                    problems.append(f"{where}: targetPort {target} is no port of {pod.where}")
        else:
            replicas = pod.res["spec"].get("replicas", 1)
            spec = r["spec"]
            n = spec.get("maxUnavailable", spec.get("minAvailable"))
            ok = isinstance(n, int) and 0 < n < replicas
            if not ok:
                problems.append(f"{where}: with {replicas} replicas it must leave one up "
                                "and still let a drain proceed")


def service_for(resources, namespace, url_host, port):
    """The Service an in-cluster host name (NAME, NAME.NS, NAME.NS.svc[.cluster.local])
    names, if rendered here, and whether it has `port`."""
    parts = url_host.split(".")
    name = parts[0]
    ns = parts[1] if len(parts) > 1 else namespace
    for r in resources:
        if r["kind"] == "Service" and r["metadata"]["name"] == name \
                and r["metadata"].get("namespace") == ns:
            return r, any(p["port"] == port for p in r["spec"].get("ports") or [])
    return None, False


def pods_behind(resources, service):
    sel = service["spec"].get("selector") or {}
    ns = service["metadata"].get("namespace")
    return [p for p in pods(resources)
            if p.res["metadata"].get("namespace") == ns and selects(sel, p.labels)]


def check_probe(pod, c, name, path, port, problems):
    probe = c.get(name)
    where = f"{pod.where}: container {c['name']}"
    if not probe:
        problems.append(f"{where}: no {name}")
        return
    http = probe.get("httpGet")
    if not http or http.get("path") != path or port_number(c, http.get("port")) != port:
        problems.append(f"{where}: {name} must be GET {path} on port {port}")


def check_tether(resources, pod, c, is_init, flags, rest, ctx, problems):
    """How one tether container runs: sidecar, entrypoint or node."""
    verb = ctx["verb"]
    where = f"{pod.where}: container {c['name']}"
    ns = pod.res["metadata"].get("namespace")
    if verb == "serve":
        check_node(resources, pod, c, flags, ctx, problems)
        return
    once = "--once" in flags
    if is_init and not once and c.get("restartPolicy") != "Always":
        problems.append(f"{where}: an init container that keeps running must be a native "
                        "sidecar (restartPolicy: Always), or the app never starts")
    if not is_init and verb == "watch":
        problems.append(f"{where}: tether watch in `containers`: nothing stops the app "
                        "starting before the first render; make it a native sidecar")
    metrics = one(flags, "--listen-metrics")
    if not once:
        if metrics is None or metrics.startswith("unix:"):
            problems.append(f"{where}: --listen-metrics=0.0.0.0:PORT is needed for its probes")
        else:
            host, port = host_port(metrics)
            if host not in ("0.0.0.0", "::", "$(POD_IP)"):
                problems.append(f"{where}: --listen-metrics={metrics}: kubelet probes the "
                                "pod's address, not loopback")
            if is_init:
                check_probe(pod, c, "startupProbe", "/readyz", port, problems)
                ctx["sidecars"] += 1
            check_probe(pod, c, "livenessProbe", "/healthz", port, problems)
            check_probe(pod, c, "readinessProbe", "/readyz", port, problems)
    if verb == "run":
        if not rest:
            problems.append(f"{where}: tether run needs the app's command after --")
        grace = pod.spec.get("terminationGracePeriodSeconds", 30)
        stop = one(flags, "--stop-timeout") or "10s"
        if stop.endswith("s") and stop[:-1].isdigit() and int(stop[:-1]) >= grace:
            problems.append(f"{where}: --stop-timeout={stop} must stay below "
                            f"terminationGracePeriodSeconds ({grace})")
    if verb == "watch":
        check_sidecar_app(pod, c, flags, problems)

    output = one(flags, "--output")
    if output:
        found = pod.mount_for(c, output)
        vol = found and found[1]
        if not vol or (vol.get("emptyDir") or {}).get("medium") != "Memory":
            problems.append(f"{where}: --output={output} must be on an emptyDir with "
                            "medium Memory (values never on a disk)")
        elif found[0].get("readOnly"):
            problems.append(f"{where}: --output={output} is on a read-only mount")
        if verb == "watch" and found:
            readers = [a for a in pod.main if any(m["name"] == found[0]["name"] and
                                                  m.get("readOnly")
                                                  for m in a.get("volumeMounts") or [])]
            if vol and not readers:
                problems.append(f"{where}: no app container mounts {found[0]['name']} "
                                "read-only to read --output")
    state = one(flags, "--state-dir")
    if state:
        found = pod.mount_for(c, state)
        if not found or not found[1] or (found[1].get("emptyDir") or {}).get("medium") != "Memory":
            problems.append(f"{where}: --state-dir={state} (secret values) must be on an "
                            "emptyDir with medium Memory")
    for src in flags.get("--source", []):
        kind, _, path = src.partition(":")
        if kind == "dir":
            found = pod.mount_for(c, path)
            if not found or not found[1] or not ({"secret", "configMap"} & set(found[1])):
                problems.append(f"{where}: --source={src} is on no Secret or ConfigMap")
            continue
        file_in_pod(resources, pod, c, path, problems, "--source")
    token_file = one(flags, "--token-file")
    token = None
    if token_file:
        token = file_in_pod(resources, pod, c, token_file, problems, "--token-file")
    for server in flags.get("--server", []):
        url = urlsplit(server)
        svc, has_port = service_for(resources, ns, url.hostname or "", url.port or 80)
        if svc is None:
            continue  # the node is in another kustomization; the full one checks this
        if not has_port:
            problems.append(f"{where}: --server={server}: Service {svc['metadata']['name']} "
                            "has no such port")
        behind = pods_behind(resources, svc)
        nodes = [p for p in behind
                 if any((tether_argv(n) or [None, None])[1] == "serve" for n in p.main)]
        if not nodes:
            problems.append(f"{where}: --server={server} reaches no tether node")
            continue
        ctx["servers_checked"] += 1
        if token is not None:
            token = token.decode(errors="replace").strip()
            ctx["tokens"].append((where, token, one(flags, "--env"), nodes))


def check_sidecar_app(pod, c, flags, problems):
    """Watch mode: the target is reachable and signalling needs no capability."""
    where = f"{pod.where}: container {c['name']}"
    targets = flags.keys() & {"--signal-process", "--signal-pidfile"}
    action = one(flags, "--on-change") or "signal:HUP"
    if action.startswith("signal") and not targets:
        problems.append(f"{where}: --on-change={action} needs --signal-process or "
                        "--signal-pidfile")
    if targets:
        if pod.spec.get("shareProcessNamespace") is not True:
            problems.append(f"{where}: {sorted(targets)} need shareProcessNamespace: true")
        mine = pod.effective(c, "runAsUser")
        for app in pod.main:
            if pod.effective(app, "runAsUser") != mine:
                problems.append(f"{where}: runs as {mine}, the app {app['name']} as "
                                f"{pod.effective(app, 'runAsUser')}: signalling needs one uid")
    for app in pod.main:
        # The app starts after the sidecar's startup probe; no hack orders it.
        words = " ".join(str(a) for a in (app.get("command") or []) + (app.get("args") or []))
        try:
            tokens = shlex.split(words)
        except ValueError:
            tokens = words.split()
        hacks = [w for w in ("sleep", "until", "while", "inotifywait") if w in tokens]
        if app.get("lifecycle") or app.get("startupProbe") or hacks:
            problems.append(f"{pod.where}: app container {app['name']} orders itself after "
                            f"tether by hand (lifecycle, startupProbe or {hacks}); the "
                            "native sidecar's startup probe already does")


def check_node(resources, pod, c, flags, ctx, problems):
    where = f"{pod.where}: container {c['name']}"
    ctx["nodes"] += 1
    replicas = pod.res["spec"].get("replicas", 1)
    if replicas < 2:
        problems.append(f"{where}: the nodes need 2 replicas or more")
    listen = one(flags, "--listen")
    if not listen:
        problems.append(f"{where}: --listen=0.0.0.0:PORT is not set")
        return
    host, port = host_port(listen)
    if host not in ("0.0.0.0", "::"):
        problems.append(f"{where}: --listen={listen} is not reachable from the Service")
    check_probe(pod, c, "livenessProbe", "/healthz", port, problems)
    check_probe(pod, c, "readinessProbe", "/readyz", port, problems)
    if not any(p.get("containerPort") == port for p in c.get("ports") or []):
        problems.append(f"{where}: no containerPort {port} (--listen)")
    services = [s for s in resources if s["kind"] == "Service"
                and any(p.res is pod.res for p in pods_behind(resources, s))]
    if not services:
        problems.append(f"{where}: no Service selects the nodes")
    pdbs = [r for r in resources if r["kind"] == "PodDisruptionBudget"
            and selects((r["spec"].get("selector") or {}).get("matchLabels"), pod.labels)]
    if not pdbs:
        problems.append(f"{where}: no PodDisruptionBudget selects the nodes")
    config = {}
    path = one(flags, "--config")
    if path:
        raw = file_in_pod(resources, pod, c, path, problems, "--config")
        if raw is not None:
            try:
                config = tomllib.loads(raw.decode())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                problems.append(f"{where}: --config={path}: {e}")
    env = {e["name"] for e in c.get("env") or []}
    redis = one(flags, "--redis") or config.get("redis")
    if not redis and "TETHER_REDIS" not in env:
        problems.append(f"{where}: not in cluster mode (--redis, TETHER_REDIS or `redis`)")
    if redis:
        url = urlsplit(redis)
        svc, has_port = service_for(resources, pod.res["metadata"].get("namespace"),
                                    url.hostname or "", url.port or 6379)
        if svc is not None and (not has_port or not pods_behind(resources, svc)):
            problems.append(f"{where}: Redis {url.hostname}:{url.port}: the Service has no "
                            "such port or selects no pod")
    ctx["node_tokens"][id(pod.res)] = config.get("token") or []


def check_tokens(ctx, hash_token, problems):
    """Each agent's token (from its Secret) is one the nodes it follows accept for its env."""
    for where, token, env, nodes in ctx["tokens"]:
        digest = hash_token(token)
        accepted = [t for p in nodes for t in ctx["node_tokens"].get(id(p.res), [])]
        ok = [t for t in accepted if t.get("hash") == digest
              and (not t.get("envs") or any(fnmatch.fnmatchcase(env or "", g)
                                            for g in t["envs"]))]
        if not ok:
            problems.append(f"{where}: its token is not one the nodes accept for env {env}")
        ctx["tokens_checked"] += 1
