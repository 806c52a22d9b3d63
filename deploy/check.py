"""Checks the deployment files with what these machines have (no Docker daemon, no Helm, no
cluster): run by .ci/run as `python3 deploy/check.py target/debug/confide`.

- Dockerfile: at least two stages; the last one runs as a numeric non-root user and starts
  `confide`.
- deploy/compose/docker-compose.yml: parses; every service has a volume of its own at
  /var/lib/confide and none shares one; every command names a `confide` subcommand that exists
  and only options that its `--help` lists.
- deploy/helm/*: Chart.yaml (apiVersion v2) and values.yaml parse; every template renders with
  the chart's values (only `{{ .Values.x }}` and `{{ .Release.Name }}` are used, and nothing else
  may be left) to YAML; each StatefulSet has exactly one replica (one writer per store), runs
  as non-root, and its container's command is checked like compose's.
"""

import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIDE = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target/debug/confide")
HELP = {}


def check_command(args, where):
    """`args` (without `confide`): its subcommands exist and each --option is in their help."""
    subs = []
    for a in args:
        if a.startswith("-"):
            break
        subs.append(a)
    key = tuple(subs)
    if key not in HELP:
        out = subprocess.run([CONFIDE, *subs, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, f"{where}: `confide {' '.join(subs)}` does not exist: {out.stderr}"
        HELP[key] = out.stdout
    for a in args:
        if a.startswith("--"):
            option = a.split("=", 1)[0]
            assert re.search(rf"\s{re.escape(option)}[\s,=<]", HELP[key]), (
                f"{where}: `confide {' '.join(subs)}` has no option {option}"
            )
    return subs


def dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    stages = [l for l in text.splitlines() if l.startswith("FROM ")]
    assert len(stages) >= 2, "the Dockerfile has one stage"
    last = text[text.rindex("\nFROM "):]
    users = re.findall(r"^USER\s+(\S+)", last, re.M)
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"the runtime user is {uid}"
    assert '"confide"' in last.split("ENTRYPOINT", 1)[1].splitlines()[0], "ENTRYPOINT is not confide"
    print(f"Dockerfile: {len(stages)} stages, runtime user {uid}")


def compose():
    path = ROOT / "deploy/compose/docker-compose.yml"
    doc = yaml.safe_load(path.read_text())
    declared = set(doc["volumes"])
    used = {}
    for name, svc in doc["services"].items():
        mounts = [v.split(":") for v in svc.get("volumes", [])]
        own = [m[0] for m in mounts if m[0] in declared and m[1] == "/var/lib/confide"]
        assert len(own) == 1, f"compose service {name} has no volume of its own"
        assert own[0] not in used, f"{name} and {used.get(own[0])} share volume {own[0]}"
        used[own[0]] = name
        subs = check_command(svc["command"], f"compose service {name}")
        assert subs[-1] == "serve", f"compose service {name} runs `{' '.join(subs)}`"
    assert len(used) == len(doc["services"]) == len(declared)
    print(f"compose: {len(used)} services, one volume each, commands checked")


def render(text, values, where):
    def value(m):
        v = values
        for k in m.group(1).split("."):
            assert k in v, f"{where}: no value {m.group(1)}"
            v = v[k]
        return str(v)

    text = re.sub(r"\{\{ \.Values\.([A-Za-z0-9_.]+) \}\}", value, text)
    text = text.replace("{{ .Release.Name }}", "release")
    assert "{{" not in text, f"{where}: a template construct this check cannot render"
    return text


def helm():
    charts = sorted(p for p in (ROOT / "deploy/helm").iterdir() if p.is_dir())
    assert charts, "no charts"
    for chart in charts:
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        assert meta["apiVersion"] == "v2" and meta["name"] == chart.name, chart
        values = yaml.safe_load((chart / "values.yaml").read_text())
        kinds = []
        for t in sorted((chart / "templates").glob("*.yaml")):
            where = f"{chart.name}/{t.name}"
            for obj in yaml.safe_load_all(render(t.read_text(), values, where)):
                kinds.append(obj["kind"])
                if obj["kind"] != "StatefulSet":
                    continue
                assert obj["spec"]["replicas"] == 1, f"{where}: more than one replica"
                pod = obj["spec"]["template"]["spec"]
                assert pod["securityContext"]["runAsNonRoot"] is True, where
                for c in pod["containers"]:
                    subs = check_command(c["args"], where)
                    assert subs[-1] == "serve", f"{where} runs `{' '.join(subs)}`"
        assert "StatefulSet" in kinds, f"{chart.name} has no StatefulSet"
        print(f"helm {chart.name}: {', '.join(kinds)}")


dockerfile()
compose()
helm()
print("deployment files: ok")
