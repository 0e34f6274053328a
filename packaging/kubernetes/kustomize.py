"""A small kustomize: expands the kustomizations of packaging/kubernetes offline.

It knows only the features these kustomizations use, and refuses any other, so that what
check.py validates is what `kubectl apply -k` would send:

- `resources`: YAML files (several documents each) below the kustomization, and directories
  holding a kustomization (built first, with their own transformers);
- `namespace`: set on every namespaced resource (cluster-scoped kinds keep none);
- `labels` with `pairs`: added to every resource's `metadata.labels` only (the default
  `includeSelectors: false`, `includeTemplates: false`);
- `secretGenerator` / `configMapGenerator` with `literals` and `files` (`KEY=PATH` or
  `PATH`), with the name suffix hash disabled and optional `labels` (in `options` or
  `generatorOptions`).

Semantics as kustomize v5 has them; `check.py --kustomize "kubectl kustomize"` compares
this expansion with a real kustomize where one is installed.
"""

import base64
import copy
import os

import yaml

SUPPORTED = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "secretGenerator",
    "configMapGenerator",
    "generatorOptions",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


class KustomizeError(Exception):
    pass


class _StrictLoader(yaml.SafeLoader):
    """Refuses a mapping with a key twice (PyYAML keeps the last one silently)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_documents(path):
    """Every non-empty YAML document of a file, duplicate keys refused."""
    with open(path, encoding="utf-8") as f:
        try:
            return [d for d in yaml.load_all(f, Loader=_StrictLoader) if d is not None]
        except yaml.YAMLError as e:
            raise KustomizeError(f"{path}: {e}") from None


def kustomization_file(directory):
    for name in KUSTOMIZATION_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def resource_id(res):
    meta = res.get("metadata") or {}
    return (res.get("kind"), meta.get("namespace"), meta.get("name"))


_BUILT = {}


def build(directory, files_used=None):
    """The resources `kubectl kustomize DIRECTORY` prints, as dicts (order not kept).
    `files_used` (a set) collects every file read, to find manifests no one applies."""
    files_used = set() if files_used is None else files_used
    key = os.path.realpath(directory)
    if key not in _BUILT:
        used = set()
        _BUILT[key] = (_build(directory, used), used)
    resources, used = _BUILT[key]
    files_used |= used
    return copy.deepcopy(resources)


def _build(directory, files_used):
    kfile = kustomization_file(directory)
    if kfile is None:
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    files_used.add(os.path.realpath(kfile))
    docs = load_documents(kfile)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise KustomizeError(f"{kfile}: expected one mapping")
    k = docs[0]
    unknown = sorted(set(k) - SUPPORTED)
    if unknown:
        raise KustomizeError(
            f"{kfile}: {', '.join(unknown)}: not supported by this checker (kustomize.py); "
            "keep to the features it knows, or teach it the new one"
        )
    if k.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{kfile}: kind must be Kustomization")

    out = []
    root = os.path.realpath(directory)
    for entry in k.get("resources") or []:
        path = os.path.join(directory, entry)
        if os.path.isdir(path):
            out.extend(build(path, files_used))
            continue
        real = os.path.realpath(path)
        if not real.startswith(root + os.sep):
            raise KustomizeError(f"{kfile}: resource {entry} is outside the kustomization")
        if not os.path.isfile(path):
            raise KustomizeError(f"{kfile}: resource {entry} does not exist")
        files_used.add(real)
        for doc in load_documents(path):
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                raise KustomizeError(f"{path}: a document without kind or apiVersion")
            out.append(doc)

    global_opts = k.get("generatorOptions") or {}
    for kind, key in (("Secret", "secretGenerator"), ("ConfigMap", "configMapGenerator")):
        for gen in k.get(key) or []:
            out.append(_generate(kind, gen, global_opts, directory, kfile, files_used))

    namespace = k.get("namespace")
    for res in out:
        if namespace and res["kind"] not in CLUSTER_SCOPED:
            res.setdefault("metadata", {})["namespace"] = namespace
    for spec in k.get("labels") or []:
        extra = set(spec) - {"pairs", "includeSelectors", "includeTemplates"}
        if extra or spec.get("includeSelectors") or spec.get("includeTemplates"):
            raise KustomizeError(
                f"{kfile}: labels: only `pairs` (metadata labels) is supported by this checker"
            )
        for res in out:
            labels = res.setdefault("metadata", {}).setdefault("labels", {})
            labels.update({str(a): str(b) for a, b in (spec.get("pairs") or {}).items()})

    seen = set()
    for res in out:
        rid = resource_id(res)
        if rid in seen:
            raise KustomizeError(f"{kfile}: {rid[0]} {rid[2]} appears twice")
        seen.add(rid)
    return out


def _generate(kind, gen, global_opts, directory, kfile, files_used):
    extra = set(gen) - {"name", "literals", "files", "options", "type"}
    if extra:
        raise KustomizeError(f"{kfile}: generator keys not supported: {', '.join(sorted(extra))}")
    opts = dict(global_opts)
    opts.update(gen.get("options") or {})
    labels = dict(global_opts.get("labels") or {})
    labels.update((gen.get("options") or {}).get("labels") or {})
    if set(opts) - {"disableNameSuffixHash", "labels"}:
        raise KustomizeError(f"{kfile}: generator options other than disableNameSuffixHash "
                             "and labels")
    if not opts.get("disableNameSuffixHash"):
        raise KustomizeError(
            f"{kfile}: generator {gen.get('name')}: the name suffix hash is not supported by "
            "this checker (and a fixed name is what lets mounted values update in place)"
        )
    data = {}
    for lit in gen.get("literals") or []:
        name, sep, value = lit.partition("=")
        if not sep or not name:
            raise KustomizeError(f"{kfile}: literal {lit!r} is not KEY=VALUE")
        if name in data:
            raise KustomizeError(f"{kfile}: generator {gen.get('name')}: key {name} twice")
        data[name] = value.encode()
    for entry in gen.get("files") or []:
        name, sep, rel = entry.partition("=")
        if not sep:
            name, rel = os.path.basename(entry), entry
        path = os.path.join(directory, rel)
        real = os.path.realpath(path)
        if not real.startswith(os.path.realpath(directory) + os.sep) or not os.path.isfile(path):
            raise KustomizeError(f"{kfile}: generator file {rel} missing or outside")
        files_used.add(real)
        if name in data:
            raise KustomizeError(f"{kfile}: generator {gen.get('name')}: key {name} twice")
        with open(path, "rb") as f:
            data[name] = f.read()
    res = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
    if labels:
        res["metadata"]["labels"] = {str(a): str(b) for a, b in labels.items()}
    if kind == "Secret":
        res["type"] = gen.get("type", "Opaque")
        res["data"] = {n: base64.b64encode(v).decode() for n, v in data.items()}
    else:
        res["data"] = {n: v.decode() for n, v in data.items()}
    return res


def normalise(resources):
    """Resources keyed by (kind, namespace, name), Secrets' data decoded (kustomize wraps
    its base64 lines), for comparing two expansions."""
    out = {}
    for r in resources:
        r = copy.deepcopy(r)
        if r.get("kind") == "Secret":
            r["data"] = {k: base64.b64decode(v) for k, v in (r.get("data") or {}).items()}
        out[resource_id(r)] = r
    return out
