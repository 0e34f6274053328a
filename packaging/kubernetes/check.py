#!/usr/bin/env python3
"""Checks packaging/kubernetes offline, as tests/it/kubernetes.rs runs it:

1. expands every kustomization (kustomize.py: the features they use, nothing else) and
   finds no manifest that none of them applies;
2. validates every resource against the Kubernetes JSON schemas of the versions below
   (strict: unknown fields are errors), with the `kubernetes-validate` package;
3. checks what matters beyond the schemas (rules.py): tether as a native sidecar with a
   startup probe on its /readyz, as an entrypoint, the nodes with their Service, PDB and
   probes, every container hardened, consistent labels;
4. checks every tether flag and TETHER_* variable a manifest uses against the real binary's
   --help, and that the agents' token is one the nodes accept (`tether serve hash-token`);
5. checks the container recipe and .dockerignore (container.py).

    python3 packaging/kubernetes/check.py --tether target/debug/tether
        [--repo DIR]... [--kustomize "kubectl kustomize"]

Exit 0 when all is well, 1 with every problem listed, 2 when a tool is missing.
"""

import argparse
import json
import os
import re
import subprocess
import sys

# Kubernetes 1.29 turned native sidecars (init containers with restartPolicy: Always) on by
# default: the oldest these manifests support. Also checked against the newest schemas the
# pinned kubernetes-validate ships.
OLDEST = "1.29"
INSTALL = "python3 -m pip install kubernetes-validate==1.37.0 PyYAML==6.0.3"

if sys.version_info < (3, 11):
    print("check.py: needs Python 3.11 or later (tomllib)", file=sys.stderr)
    sys.exit(2)
try:
    import yaml  # noqa: F401
    import kubernetes_validate
    from kubernetes_validate.utils import all_versions
except ImportError as e:
    print(f"check.py: {e.name} is not installed: {INSTALL} (.ci/run does)", file=sys.stderr)
    sys.exit(2)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, HERE)
import container  # noqa: E402
import kustomize  # noqa: E402
import rules  # noqa: E402


def kustomizations(root):
    """Every directory under root with a kustomization, root first."""
    found = []
    for d, dirs, _ in os.walk(root):
        dirs.sort()
        if kustomize.kustomization_file(d):
            found.append(d)
    return found


def manifests(root):
    return {os.path.realpath(os.path.join(d, f))
            for d, _, files in os.walk(root) for f in files
            if f.endswith((".yaml", ".yml")) or f == "Kustomization"}


class Tether:
    """The real binary: its --help per verb, and hash-token."""

    def __init__(self, path):
        self.path = path
        self.helps = {}

    def help(self, verb):
        if verb not in self.helps:
            out = subprocess.run([self.path, verb, "--help"], capture_output=True, text=True)
            self.helps[verb] = out.stdout if out.returncode == 0 else None
        return self.helps[verb]

    def hash_token(self, token):
        out = subprocess.run([self.path, "serve", "hash-token"], input=token,
                             capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None


def check_flags(tether, where, verb, flags, env, notes, problems):
    text = tether.help(verb)
    if text is None:
        problems.append(f"{where}: `tether {verb} --help` failed: no such verb in this binary")
        return
    known = set(re.findall(r"--[a-z][a-z0-9-]*", text))
    for flag in flags:
        if flag in known:
            continue
        problems.append(f"{where}: {flag}: `tether {verb}` has no such flag")
    for name in env:
        if name.startswith("TETHER_") and name not in text:
            problems.append(f"{where}: env {name}: `tether {verb}` reads no such variable")


_VALID = set()


def validate(resources, versions, where, problems):
    for res in resources:
        key = json.dumps(res, sort_keys=True)
        if key in _VALID:
            continue  # the same resource in another kustomization passed already
        rid = f"{res['kind']} {res['metadata'].get('namespace')}/{res['metadata']['name']}"
        for version in versions:
            try:
                kubernetes_validate.validate(res, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{where}: {rid}: Kubernetes {version} schema: {path}: "
                                f"{e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{where}: {rid}: {e.message}")
            else:
                continue
            break
        else:
            _VALID.add(key)


def check_render(name, resources, tether, notes, all_problems):
    problems = []
    ctx = {"sidecars": 0, "nodes": 0, "servers_checked": 0, "tokens": [],
           "node_tokens": {}, "tokens_checked": 0}
    rules.check_labels(resources, problems)
    rules.check_selectors(resources, problems)
    for pod in rules.pods(resources):
        rules.check_hardening(pod, problems)
        for c, is_init in pod.containers():
            argv = rules.tether_argv(c)
            if argv is None:
                continue
            where = f"{pod.where}: container {c['name']}"
            if len(argv) < 2:
                problems.append(f"{where}: tether without a verb")
                continue
            flags, rest = rules.parse_flags(argv, where, problems)
            env = [e["name"] for e in c.get("env") or []]
            check_flags(tether, where, argv[1], flags, env, notes, problems)
            ctx["verb"] = argv[1]
            rules.check_tether(resources, pod, c, is_init, flags, rest, ctx, problems)
    rules.check_tokens(ctx, tether.hash_token, problems)
    all_problems.extend(p if p.startswith(name + ":") else f"{name}: {p}" for p in problems)
    return ctx


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tether", help="the tether binary (full build); needed but with "
                    "--container-args")
    ap.add_argument("--repo", action="append",
                    help="the repository's root (default: this file's); repeatable, each "
                    "checked on its own under a `== REPO` line")
    ap.add_argument("--kustomize", help="also compare with a real kustomize, e.g. "
                    "\"kubectl kustomize\" (not needed, not in CI)")
    ap.add_argument("--container-args", nargs=3, metavar=("DIR", "WORKLOAD", "CONTAINER"),
                    help="print the args of one container of the kustomization DIR as JSON "
                    "(for tests that run them), and check nothing")
    args = ap.parse_args()
    repos = args.repo or [os.path.dirname(os.path.dirname(HERE))]
    if args.container_args:
        return print_args(repos[0], *args.container_args)
    if not args.tether:
        ap.error("--tether BIN is needed")
    tether = Tether(args.tether)
    failed = False
    for repo in repos:
        if len(repos) > 1:
            print(f"== {repo}")
        failed |= check_repo(repo, tether, args.kustomize)
    return 1 if failed else 0


def check_repo(repo, tether, kustomize_cmd):
    """Check one repository's packaging; print what was found. True if any problem."""
    root = os.path.join(repo, "packaging", "kubernetes")
    versions = [OLDEST, all_versions()[-1].rsplit(".", 1)[0]]
    problems, notes = [], set()
    used, used_by_root = set(), set()
    totals = {"resources": 0, "sidecars": 0, "nodes": 0, "servers_checked": 0,
              "tokens_checked": 0}
    dirs = kustomizations(root)
    if not dirs:
        problems.append(f"{root}: no kustomization")
    for d in dirs:
        name = os.path.relpath(d, repo)
        try:
            resources = kustomize.build(d, used if d != root else used_by_root)
        except kustomize.KustomizeError as e:
            problems.append(f"{name}: {e}")
            continue
        if kustomize_cmd:
            compare(kustomize_cmd, d, resources, name, problems)
        invalid = []
        validate(resources, versions, name, invalid)
        problems.extend(invalid)
        if invalid:
            continue  # the rules read the resources as the schemas describe them
        try:
            ctx = check_render(name, resources, tether, notes, problems)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            problems.append(f"{name}: the checks failed on an unexpected shape: {e!r}")
            continue
        if d == root:
            # The whole set: every cross-reference must resolve here.
            totals.update({k: ctx[k] for k in ("sidecars", "nodes", "servers_checked",
                                               "tokens_checked")})
        totals["resources"] += len(resources)
    for orphan in sorted(manifests(root) - used - used_by_root):
        problems.append(f"{os.path.relpath(orphan, repo)}: no kustomization applies it")
    if used_by_root:
        for left in sorted(manifests(root) - used_by_root):
            problems.append(f"{os.path.relpath(left, repo)}: the full kustomization "
                            "(packaging/kubernetes) leaves it out")
    for what in ("sidecars", "nodes", "servers_checked", "tokens_checked"):
        if dirs and totals[what] == 0:
            problems.append(f"packaging/kubernetes: the full kustomization has no {what}")
    container.check(repo, problems)

    for n in sorted(notes):
        print(f"note: {n}")
    for p in problems:
        print(f"problem: {p}")
    print(f"{len(dirs)} kustomizations, {totals['resources']} resources, schemas of "
          f"Kubernetes {' and '.join(versions)}; the full set has {totals['sidecars']} "
          f"native sidecars, {totals['nodes']} node workloads, {totals['servers_checked']} "
          f"--server resolved to the nodes, {totals['tokens_checked']} agent tokens the "
          f"nodes accept: {len(problems)} problems")
    return bool(problems)


def print_args(repo, directory, workload, container_name):
    resources = kustomize.build(os.path.join(repo, "packaging", "kubernetes", directory))
    for pod in rules.pods(resources):
        if pod.res["metadata"]["name"] != workload:
            continue
        for c, _ in pod.containers():
            if c["name"] == container_name:
                print(json.dumps([str(a) for a in c.get("args") or []]))
                return 0
    print(f"check.py: no container {container_name} in {workload} of {directory}",
          file=sys.stderr)
    return 1


def compare(command, directory, mine, name, problems):
    out = subprocess.run(command.split() + [directory], capture_output=True, text=True)
    if out.returncode != 0:
        problems.append(f"{name}: {command} failed: {out.stderr.strip()}")
        return
    import yaml as _yaml
    theirs = kustomize.normalise(d for d in _yaml.safe_load_all(out.stdout) if d)
    ours = kustomize.normalise(mine)
    for rid in sorted(set(theirs) | set(ours), key=str):
        if theirs.get(rid) != ours.get(rid):
            problems.append(f"{name}: {rid}: kustomize.py and `{command}` disagree")


if __name__ == "__main__":
    sys.exit(main())
