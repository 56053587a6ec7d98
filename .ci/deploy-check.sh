#!/usr/bin/env bash
# Offline checks of the deployment kit in deploy/ (no Docker engine, no
# cluster, no systemd PID 1 needed):
#   1. systemd units: `systemd-analyze verify` on copies whose ExecStart
#      points at stub executables (verify insists the binaries exist), with
#      any diagnostic that names one of our units counted as a failure
#      (systemd prints "Unknown key ..., ignoring" and may still exit 0);
#      then `systemd-analyze security --offline` against an exposure ceiling,
#      so hardening cannot silently disappear.
#   2. Kubernetes manifests: kubernetes-validate --strict (bundled JSON
#      schemas, works offline) against an old and a new API version, with
#      WARN lines (unknown kind/apiVersion) counted as failures; the
#      kustomize build (if kubectl is on PATH) validated the same way; and
#      cross-references between the manifests (selectors, labels, Secret,
#      the plan in the ConfigMap parses as TOML).
#   3. Containerfile: known instructions, and every `--bin` it builds is a
#      binary of this workspace (hadolint too, if it happens to be on PATH).
#   4. Grafana dashboard: valid JSON, the datasource a variable everywhere
#      (the Rust test service_metrics checks its PromQL against /metrics).
#
# Usage: bash .ci/deploy-check.sh
#   BARRAGE_DEPLOY_DIR=/path/to/copy  check another copy of deploy/
#   BARRAGE_CI_CACHE=/path             where the kubernetes-validate venv lives
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY=${BARRAGE_DEPLOY_DIR:-$ROOT/deploy}
KV_VERSION=1.37.0                    # kubernetes-validate on PyPI (bundles schemas 1.25..1.37)
K8S_VERSIONS=(1.29.0 1.37.0)         # oldest we claim to support, newest bundled
AGENT_EXPOSURE_MAX=20                # systemd-analyze security: 2.0 shown as "2.0"
CONTROLLER_EXPOSURE_MAX=20
EXPORTER_EXPOSURE_MAX=25
CACHE=${BARRAGE_CI_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/barrage-ci}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
ko() { echo "FAIL $*"; failed=$((failed + 1)); }
say() { echo; echo "== $*"; }

[[ -d $DEPLOY/systemd && -d $DEPLOY/k8s ]] || { echo "no deploy kit at $DEPLOY" >&2; exit 1; }

# ---------------------------------------------------------------------------
say "systemd units"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "systemd-analyze missing: installing Debian's systemd package"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
    fi
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
    ko "systemd-analyze not available (and could not install it)"
else
    systemd-analyze --version | sed -n 1p
    mkdir -p "$WORK/bin" "$WORK/units"
    units=()
    for unit in "$DEPLOY"/systemd/*.service; do
        name=$(basename "$unit")
        units+=("$name")
        # Stubs for every absolute executable an Exec*= line names.
        # shellcheck disable=SC2013 # paths without spaces, one per word
        for exe in $(grep -oE '^Exec[A-Za-z]*=[-@:+!]*/[^ ]+' "$unit" | sed -E 's/^[^=]*=[-@:+!]*//'); do
            stub="$WORK/bin/$(basename "$exe")"
            printf '#!/bin/sh\nexit 0\n' >"$stub"
            chmod 0755 "$stub"
        done
        sed -E "s#^(Exec[A-Za-z]*=[-@:+!]*)/[^ ]*/([^/ ]+)#\1$WORK/bin/\2#" "$unit" >"$WORK/units/$name"
    done

    # One unit at a time, so an error is pinned on the right file.
    # --recursive-errors=no: judge our unit, not the distribution's units.
    for name in "${units[@]}"; do
        set +e
        out=$(cd "$WORK/units" && systemd-analyze verify --man=no --recursive-errors=no "./$name" 2>&1)
        rc=$?
        set -e
        [[ -n $out ]] && printf '%s\n' "$out" | sed 's/^/    /'
        # Any diagnostic naming the unit is an error, even with exit status 0
        # ("Unknown key ..., ignoring", "Failed to parse ..., ignoring").
        # Diagnostics naming only other units are shown, not counted.
        if grep -F -- "$name" <<<"$out" >/dev/null; then
            ko "verify $name: $(grep -F -- "$name" <<<"$out" | sed -n 1p)"
        elif [[ $rc -ne 0 ]]; then
            ko "verify $name: systemd-analyze verify exited $rc"
        else
            ok "verify $name"
        fi
    done

    if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
        for name in "${units[@]}"; do
            case $name in
                *gpu-exporter*) max=$EXPORTER_EXPOSURE_MAX ;;
                *controller*) max=$CONTROLLER_EXPOSURE_MAX ;;
                *) max=$AGENT_EXPOSURE_MAX ;;
            esac
            set +e
            sec=$(cd "$WORK/units" && systemd-analyze security --offline=yes --threshold="$max" "./$name" 2>&1)
            rc=$?
            set -e
            level=$(grep 'Overall exposure level' <<<"$sec" | grep -oE '[0-9]+\.[0-9]+ [A-Z]+' | tail -n1)
            if [[ $rc -eq 0 ]]; then
                ok "security $name (exposure ${level:-?}, ceiling $((max / 10)).$((max % 10)))"
            else
                ko "security $name: exposure ${level:-$(tail -n1 <<<"$sec")} exceeds $((max / 10)).$((max % 10))"
            fi
        done
    else
        echo "    systemd-analyze security --offline unsupported here (systemd < 250): skipped"
    fi
fi

# Every EnvironmentFile= has an example beside the unit that sets BARRAGE_TOKEN.
for unit in "$DEPLOY"/systemd/*.service; do
    name=$(basename "$unit")
    # shellcheck disable=SC2013
    for envfile in $(grep -oE '^EnvironmentFile=-?/[^ ]+' "$unit" | sed -E 's/^EnvironmentFile=-?//'); do
        example="$DEPLOY/systemd/$(basename "$envfile").example"
        if [[ -f $example ]] && grep -qE '^BARRAGE_TOKEN=' "$example"; then
            ok "env example for $name ($(basename "$example"))"
        else
            ko "$name: EnvironmentFile=$envfile has no $(basename "$example") with BARRAGE_TOKEN= beside it"
        fi
    done
done

# `serve` units: the --token-env variable is set in the env example (the
# service refuses a non-loopback --listen without it), and --data lies in
# the unit's StateDirectory= (the only writable place under ProtectSystem=strict).
for unit in "$DEPLOY"/systemd/*.service; do
    name=$(basename "$unit")
    exec_line=$(grep -E '^ExecStart=' "$unit" | tail -n1)
    grep -qE ' serve( |$)' <<<"$exec_line" || continue
    var=$(grep -oE -- '--token-env [A-Za-z_][A-Za-z0-9_]*' <<<"$exec_line" | awk '{print $2}' || true)
    envfile=$(grep -oE '^EnvironmentFile=-?/[^ ]+' "$unit" | sed -E 's/^EnvironmentFile=-?//' | head -n1 || true)
    example="$DEPLOY/systemd/$(basename "${envfile:-none}").example"
    if [[ -n $var && -f $example ]] && grep -qE "^$var=" "$example"; then
        ok "$name: --token-env $var is set in $(basename "$example")"
    else
        ko "$name: serve without --token-env, or ${var:-its variable} not set in ${envfile:-an EnvironmentFile}'s example"
    fi
    data=$(grep -oE -- '--data [^ ]+' <<<"$exec_line" | awk '{print $2}' || true)
    if [[ -z $data ]]; then
        continue # agents and exporters keep no data
    fi
    state=$(grep -oE '^StateDirectory=[^ ]+' "$unit" | sed 's/^StateDirectory=//' | head -n1 || true)
    if [[ -n $state && ( $data == "%S/$state" || $data == "/var/lib/$state" ) ]]; then
        ok "$name: --data $data is its StateDirectory=$state"
    else
        ko "$name: --data ${data} is not the unit's StateDirectory= (${state:-none}): not writable under ProtectSystem=strict"
    fi
done

# ---------------------------------------------------------------------------
say "Kubernetes manifests"

venv="$CACHE/kubernetes-validate-$KV_VERSION"
if [[ ! -x $venv/bin/kubernetes-validate ]]; then
    echo "installing kubernetes-validate==$KV_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --disable-pip-version-check -q "kubernetes-validate==$KV_VERSION"
fi
echo "kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>&1 | tail -n1)"

manifests=()
for f in "$DEPLOY"/k8s/*.yaml "$DEPLOY"/k8s/*.yml; do
    [[ -e $f ]] || continue
    [[ $(basename "$f") == kustomization.y*ml ]] && continue # not a Kubernetes kind
    manifests+=("$f")
done

# kubernetes-validate exits 0 on "Couldn't find schema for kind ..." (a typo'd
# kind or apiVersion): WARN and ERROR lines both count as failures.
validate() { # label, files...
    local label=$1
    shift
    local v out rc
    for v in "${K8S_VERSIONS[@]}"; do
        set +e
        out=$("$venv/bin/kubernetes-validate" --strict -k "$v" "$@" 2>&1)
        rc=$?
        set -e
        if [[ $rc -ne 0 ]] || grep -qE '^(WARN|ERROR)|Couldn.t' <<<"$out"; then
            printf '%s\n' "$out" | grep -vE '^INFO' | sed 's/^/    /'
            ko "$label (Kubernetes $v)"
        else
            ok "$label (Kubernetes $v: $(grep -c '^INFO' <<<"$out") resources)"
        fi
    done
}
for f in "${manifests[@]}"; do
    validate "schema $(basename "$f")" "$f"
done

if [[ -f $DEPLOY/k8s/kustomization.yaml ]]; then
    if command -v kubectl >/dev/null 2>&1; then
        if kubectl kustomize "$DEPLOY/k8s" >"$WORK/kustomized.yaml" 2>"$WORK/kustomize.err"; then
            validate "schema of kubectl kustomize output" "$WORK/kustomized.yaml"
        else
            sed 's/^/    /' "$WORK/kustomize.err"
            ko "kubectl kustomize deploy/k8s"
        fi
    else
        echo "    kubectl not on PATH: kustomize build skipped (resources still cross-checked below)"
    fi
fi

# Cross-references that no schema can see.
cat >"$WORK/xref.py" <<'PY'
import pathlib, sys, tomllib, yaml

k8s = pathlib.Path(sys.argv[1])
docs = {}
for f in sorted(k8s.glob("*.y*ml")):
    if f.name.startswith("kustomization."):
        continue
    for d in yaml.safe_load_all(f.read_text()):
        if d:
            docs[(d["kind"], d["metadata"]["name"])] = (f.name, d)

results = []
def check(label, cond, why=""):
    results.append((label, bool(cond), why))

def get(kind, name):
    v = docs.get((kind, name))
    return v[1] if v else None

def pod_labels(obj):
    return obj["spec"]["template"]["metadata"].get("labels", {})

def subset(sel, labels):
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())

kust = k8s / "kustomization.yaml"
if kust.exists():
    listed = yaml.safe_load(kust.read_text()).get("resources", [])
    missing = [r for r in listed if not (k8s / r).exists()]
    check("kustomization resources exist", not missing, f"missing: {missing}")
    secrets = [r for r in listed if any(
        d["kind"] == "Secret" for d in yaml.safe_load_all((k8s / r).read_text()) if d
    )] if not missing else []
    check("kustomization lists no Secret", not secrets, f"lists {secrets}")

dep, svc = get("Deployment", "barrage-agent"), get("Service", "agents")
job, cm = get("Job", "barrage-controller"), get("ConfigMap", "barrage-plan")
check("agents Deployment, headless Service, Job, ConfigMap present", dep and svc and job and cm)
if dep and svc:
    check("Service agents is headless", svc["spec"].get("clusterIP") == "None")
    check("Service agents selects the agent pods", subset(svc["spec"]["selector"], pod_labels(dep)))
    check("Service agents exposes 7000", any(p["port"] == 7000 for p in svc["spec"]["ports"]))
pols = [d for (kind, _), (_, d) in docs.items() if kind == "NetworkPolicy"]
if dep and job:
    agent_pol = [p for p in pols if subset(p["spec"]["podSelector"].get("matchLabels", {}), pod_labels(dep))]
    check("a NetworkPolicy selects the agent pods", agent_pol)
    for p in agent_pol:
        froms = [f.get("podSelector", {}).get("matchLabels", {}) for r in p["spec"].get("ingress", [])
                 for f in r.get("from", [])]
        check(f"NetworkPolicy {p['metadata']['name']} admits the controller Job's pods",
              any(subset(sel, pod_labels(job)) for sel in froms))
        check(f"NetworkPolicy {p['metadata']['name']} admits nothing else",
              all(subset(sel, pod_labels(job)) for sel in froms))
if cm:
    try:
        plan = tomllib.loads(cm["data"]["plan.toml"])
        cl = plan.get("cluster", {})
        check("plan.toml in ConfigMap parses; [cluster] agents and token_env set",
              cl.get("agents") and cl.get("token_env"), f"[cluster] = {cl}")
    except (KeyError, tomllib.TOMLDecodeError) as e:
        check("plan.toml in ConfigMap parses", False, repr(e))

# controller serve: Deployment + Service + PVC (controller-service.yaml).
srv, srv_svc = get("Deployment", "barrage-controller"), get("Service", "barrage-controller")
pvc = get("PersistentVolumeClaim", "barrage-controller-data")
check("controller serve Deployment, Service and PersistentVolumeClaim present", srv and srv_svc and pvc)
if srv and srv_svc and pvc:
    spec = srv["spec"]
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    argv = c.get("command", []) + c.get("args", [])
    flag = lambda f: argv[argv.index(f) + 1] if f in argv and argv.index(f) + 1 < len(argv) else None
    check("controller Deployment runs `controller serve`", argv[:2] == ["controller", "serve"], f"{argv}")
    check("controller Deployment: one replica, strategy Recreate (one SQLite queue on a ReadWriteOnce volume)",
          spec.get("replicas") == 1 and spec.get("strategy", {}).get("type") == "Recreate"
          and pvc["spec"]["accessModes"] == ["ReadWriteOnce"])
    listen = flag("--listen") or ""
    check("controller serve listens beyond loopback (else the Service cannot reach it)",
          listen and not listen.startswith(("127.", "localhost", "[::1]")), f"--listen {listen!r}")
    token_var = flag("--token-env")
    envs = {e["name"]: e for e in c.get("env", [])}
    check("controller serve --token-env names a variable set from a Secret",
          token_var in envs and "secretKeyRef" in envs[token_var].get("valueFrom", {}),
          f"--token-env {token_var!r}")
    data = flag("--data")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    claim = vols.get(mounts.get(data), {}).get("persistentVolumeClaim", {}).get("claimName")
    check("controller serve --data is mounted from the PersistentVolumeClaim",
          claim == pvc["metadata"]["name"], f"--data {data!r} → claim {claim!r}")
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    port_of = lambda p: ports.get(p) if isinstance(p, str) else p
    listen_port = int(listen.rsplit(":", 1)[-1]) if ":" in listen else None
    check("controller container port is the --listen port", listen_port in ports.values(), f"{ports} vs {listen}")
    for probe in ("readinessProbe", "livenessProbe"):
        g = c.get(probe, {}).get("httpGet", {})
        check(f"controller {probe}: GET /healthz (no token) on the listen port",
              g.get("path") == "/healthz" and port_of(g.get("port")) == listen_port, f"{g}")
    check("Service barrage-controller selects the serve pods",
          subset(srv_svc["spec"]["selector"], pod_labels(srv)))
    if job:
        check("Service barrage-controller does not select the controller Job's pods",
              not subset(srv_svc["spec"]["selector"], pod_labels(job)))
    check("Service barrage-controller targets the container's port",
          all(port_of(p.get("targetPort", p["port"])) == listen_port for p in srv_svc["spec"]["ports"]))
    if dep:
        agent_pol = [p for p in pols if subset(p["spec"]["podSelector"].get("matchLabels", {}), pod_labels(dep))]
        froms = [f.get("podSelector", {}).get("matchLabels", {}) for p in agent_pol
                 for r in p["spec"].get("ingress", []) for f in r.get("from", [])]
        check("a NetworkPolicy admits the serve pods to the agents",
              any(subset(sel, pod_labels(srv)) for sel in froms))

secret_names = {d["metadata"]["name"]: set(d.get("stringData", {}) | d.get("data", {}))
                for (kind, _), (_, d) in docs.items() if kind == "Secret"}
for (kind, name), (fname, d) in docs.items():
    if kind not in ("Deployment", "Job", "DaemonSet"):
        continue
    spec = d["spec"]["template"]["spec"]
    psc = spec.get("securityContext", {})
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        check(f"{kind}/{name}: non-root, read-only root fs, no privilege escalation, ALL caps dropped",
              (psc.get("runAsNonRoot") or sc.get("runAsNonRoot")) and sc.get("readOnlyRootFilesystem")
              and sc.get("allowPrivilegeEscalation") is False
              and "ALL" in sc.get("capabilities", {}).get("drop", []))
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                check(f"{kind}/{name}: Secret {ref['name']}/{ref['key']} is defined (secret example)",
                      ref["key"] in secret_names.get(ref["name"], set()))

bad = 0
for label, good, why in results:
    print(("ok   " if good else "FAIL ") + label + ("" if good or not why else f": {why}"))
    bad += not good
sys.exit(min(bad, 100))
PY
set +e
xout=$("$venv/bin/python" "$WORK/xref.py" "$DEPLOY/k8s" 2>&1)
rc=$?
set -e
printf '%s\n' "$xout"
passed=$((passed + $(grep -c '^ok ' <<<"$xout" || true)))
nbad=$(grep -c '^FAIL ' <<<"$xout" || true)
if [[ $rc -ne 0 && $nbad -eq 0 ]]; then nbad=1; echo "FAIL cross-reference script crashed"; fi
failed=$((failed + nbad))

# ---------------------------------------------------------------------------
say "Containerfile"

cf=$DEPLOY/Containerfile
if [[ ! -f $cf ]]; then
    ko "no $cf"
else
    # Instruction names of logical lines (continuations joined, comments dropped).
    unknown=$(sed -e 's/\r$//' "$cf" | awk '
        /^[[:space:]]*#/ { next }
        cont { cont = ($0 ~ /\\$/); next }
        /^[[:space:]]*$/ { next }
        { print $1; cont = ($0 ~ /\\$/) }' |
        grep -viE '^(FROM|RUN|CMD|LABEL|EXPOSE|ENV|ADD|COPY|ENTRYPOINT|VOLUME|USER|WORKDIR|ARG|ONBUILD|STOPSIGNAL|HEALTHCHECK|SHELL)$' || true)
    if [[ -z $unknown ]]; then ok "Containerfile instructions"; else ko "Containerfile: unknown instructions: $unknown"; fi
    first=$(grep -vE '^[[:space:]]*(#|$)' "$cf" | sed -n 1p | awk '{print toupper($1)}')
    if [[ $first == FROM || $first == ARG ]]; then ok "Containerfile starts with FROM/ARG"; else ko "Containerfile starts with $first"; fi
    # Binaries the workspace declares ([[bin]] name = "...").
    declared=$(awk '/^\[\[bin\]\]/ { inbin = 1; next } /^\[/ { inbin = 0 }
        inbin && /^name[[:space:]]*=/ { gsub(/[" ]/, "", $0); sub(/^name=/, ""); print }' "$ROOT"/*/Cargo.toml | sort -u)
    # shellcheck disable=SC2013
    for b in $(grep -oE -- '--bin [A-Za-z0-9_-]+' "$cf" | awk '{print $2}' | sort -u); do
        if grep -qx -- "$b" <<<"$declared"; then ok "Containerfile builds --bin $b (declared in the workspace)"
        else ko "Containerfile builds --bin $b, which no */Cargo.toml declares"; fi
    done
    if command -v hadolint >/dev/null 2>&1; then
        if hadolint "$cf"; then ok "hadolint"; else ko "hadolint"; fi
    else
        echo "    hadolint not on PATH: skipped (docker builds need an engine, which CI has not)"
    fi
fi

# ---------------------------------------------------------------------------
say "Grafana dashboard"

for dash in "$DEPLOY"/grafana/*.json; do
    [[ -e $dash ]] || continue
    set +e
    gout=$(python3 - "$dash" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
bad = []
vars_ = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
if vars_.get("datasource", {}).get("type") != "datasource":
    bad.append("no `datasource` variable of type datasource")
if not d.get("uid"):
    bad.append("no uid")
def walk(v, path):
    if isinstance(v, dict):
        ds = v.get("datasource")
        if isinstance(ds, dict) and ds.get("uid") != "${datasource}":
            bad.append(f"{path}: datasource {ds} is not ${{datasource}}")
        for k, x in v.items():
            walk(x, f"{path}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            walk(x, f"{path}[{i}]")
walk(d.get("panels", []), "panels")
walk(d.get("templating", {}), "templating")
exprs = [t.get("expr", "") for p in d.get("panels", []) for t in p.get("targets", [])]
if not exprs or not all(exprs):
    bad.append("a panel target without expr")
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
)
    rc=$?
    set -e
    if [[ $rc -eq 0 ]]; then ok "dashboard $(basename "$dash"): JSON, datasource variable everywhere"
    else printf '%s\n' "$gout" | sed 's/^/    /'; ko "dashboard $(basename "$dash")"; fi
done

echo
echo "deploy-check: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
