"""Static checks of the container recipe (packaging/container/Containerfile) and the
repository's .dockerignore, which no engine here can build: the images the manifests run
are non-root, on a distroless or scratch base, built by packaging/release/build.sh, and
the build context keeps every file the build needs.
"""

import fnmatch
import json
import os
import re

# What `packaging/release/build.sh` needs from the build context.
BUILD_NEEDS = ["Cargo.toml", "Cargo.lock", "src/main.rs", "crates/core/Cargo.toml",
               "crates/agent/src/lib.rs", "crates/node/src/lib.rs",
               "packaging/release/build.sh"]
# What the context must leave out: build output (GiBs) and history.
CONTEXT_EXCLUDES = ["target/debug/tether", ".git/HEAD"]
BASES = re.compile(r"^(gcr\.io/distroless/static(-debian\d+)?(:[\w.-]+)?|scratch)$")
BUILD_BASE = re.compile(r"^(docker\.io/library/)?rust:1-bookworm$")


def stages(text):
    """[(name, base, [(instruction, rest)])] of a Containerfile, continuation lines joined."""
    out = []
    lines = re.sub(r"\\\n", " ", text).splitlines()
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            out.append((name, words[0], []))
        elif out:
            out[-1][2].append((instr, rest.strip()))
    return out


def exec_form(rest):
    try:
        value = json.loads(rest)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


def built_by(all_stages, stage, kind):
    """Whether `stage` copies tether from a stage that runs `build.sh ... KIND`."""
    names = {s[0]: s for s in all_stages if s[0]}
    for instr, rest in stage[2]:
        if instr != "COPY":
            continue
        m = re.search(r"--from=(\S+)", rest)
        src = names.get(m.group(1)) if m else None
        if src is None:
            continue
        chain = [src]
        while chain[-1][1] in names:  # FROM another stage
            chain.append(names[chain[-1][1]])
        runs = " ".join(r for s in chain for i, r in s[2] if i == "RUN")
        if re.search(rf"packaging/release/build\.sh(\s+--check)?\s+{kind}\b", runs):
            if any(BUILD_BASE.match(s[1]) for s in chain):
                return True
    return False


def check_final(all_stages, stage, kind, problems):
    where = f"Containerfile stage {stage[0] or '(last)'}"
    if not BASES.match(stage[1]):
        problems.append(f"{where}: base {stage[1]} is not distroless static or scratch")
    users = [r for i, r in stage[2] if i == "USER"]
    if not users:
        problems.append(f"{where}: no USER: the image would run as root")
    else:
        uid, _, gid = users[-1].partition(":")
        if not uid.isdigit() or int(uid) == 0 or (gid and (not gid.isdigit() or int(gid) == 0)):
            problems.append(f"{where}: USER {users[-1]}: a numeric non-root uid:gid "
                            "(runAsNonRoot can check only a number)")
    entry = [r for i, r in stage[2] if i == "ENTRYPOINT"]
    argv = exec_form(entry[-1]) if entry else None
    if not argv or argv[0] != "/usr/local/bin/tether":
        problems.append(f"{where}: ENTRYPOINT must be [\"/usr/local/bin/tether\", ...] "
                        "(exec form: there is no shell)")
    if any(i == "RUN" for i, _ in stage[2]):
        problems.append(f"{where}: RUN in the final stage (it has no shell)")
    if not built_by(all_stages, stage, kind):
        problems.append(f"{where}: tether is not copied from a rust:1-bookworm stage that "
                        f"runs packaging/release/build.sh {kind}")


def ignored(patterns, path):
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    result = False
    for negate, pat in patterns:
        for i in range(1, len(parts) + 1):
            if fnmatch.fnmatchcase("/".join(parts[:i]), pat) or \
                    (pat.startswith("**/") and fnmatch.fnmatchcase("/".join(parts[:i]), pat[3:])):
                result = not negate
                break
    return result


def check(repo, problems):
    path = os.path.join(repo, "packaging/container/Containerfile")
    try:
        with open(path, encoding="utf-8") as f:
            all_stages = stages(f.read())
    except OSError as e:
        problems.append(f"Containerfile: {e}")
        return
    if not all_stages:
        problems.append("Containerfile: no FROM")
        return
    # The last stage is what a plain `build` makes: the agent.
    check_final(all_stages, all_stages[-1], "agent", problems)
    nodes = [s for s in all_stages if s[0] == "node"]
    if not nodes:
        problems.append("Containerfile: no stage `node` (the full build, for tether serve)")
    else:
        check_final(all_stages, nodes[0], "full", problems)

    ignore = os.path.join(repo, ".dockerignore")
    try:
        with open(ignore, encoding="utf-8") as f:
            raw = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    except OSError as e:
        problems.append(f".dockerignore: {e}")
        return
    patterns = []
    for p in raw:
        negate = p.startswith("!")
        p = p.lstrip("!").strip("/")
        patterns.append((negate, os.path.normpath(p)))
    for need in BUILD_NEEDS:
        if ignored(patterns, need):
            problems.append(f".dockerignore leaves out {need}, which the build needs")
    for junk in CONTEXT_EXCLUDES:
        if not ignored(patterns, junk):
            problems.append(f".dockerignore keeps {junk} in the build context")
