#!/usr/bin/env bash
# Multi-host test: the simulator and two agents each in their own network
# namespace (veth pairs on a bridge), the controller in the root namespace.
# Proves the cluster path across real network interfaces: exact counts, the
# agents' target allow-list, and a wrong token refused before any traffic.
# Needs the right to create network namespaces; otherwise it says why and
# exits 0. Only the namespaces it creates are ever targeted.
set -euo pipefail
cd "$(dirname "$0")/.."

probe="bnp$$"
if ! ip netns add "$probe" 2>/dev/null; then
    echo "netns test skipped: cannot create network namespaces here (needs root / CAP_SYS_ADMIN and iproute2)"
    exit 0
fi
ip netns del "$probe"

cargo build --quiet --bin agent --bin controller --bin llm-sim
bin=target/debug
work=$(mktemp -d)
br="bbr$$"
nss=()
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for n in "${nss[@]}"; do ip netns del "$n" 2>/dev/null || true; done
    ip link del "$br" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip link add "$br" type bridge
ip addr add 10.231.0.1/24 dev "$br"
ip link set "$br" up

sim_ns="bsim$$" a1_ns="ba1$$" a2_ns="ba2$$"
nss=("$sim_ns" "$a1_ns" "$a2_ns")
host() { # name last-octet (not in a subshell: cleanup must see every namespace)
    local ns="b$1$$" veth="v$1$$"
    ip netns add "$ns"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$br" up
    ip netns exec "$ns" ip addr add "10.231.0.$2/24" dev eth0
    ip netns exec "$ns" ip link set eth0 up
    ip netns exec "$ns" ip link set lo up
}

host sim 20
host a1 11
host a2 12

export BARRAGE_NETNS_TOKEN=netns-secret
ip netns exec "$sim_ns" "$bin/llm-sim" --listen 10.231.0.20:8000 --ttft 20ms --itl 5ms >"$work/sim.log" 2>&1 &
pids+=($!)
for a in 1 2; do
    ns_var="a${a}_ns"
    ip netns exec "${!ns_var}" "$bin/agent" serve --listen "10.231.0.1$a:7000" --token-env BARRAGE_NETNS_TOKEN \
        --allow-target 10.231.0.20 --threads 1 --id "netns-$a" >"$work/agent$a.log" 2>&1 &
    pids+=($!)
done

# Wait (bounded) until every service answers from the root namespace.
for addr in 10.231.0.20:8000 10.231.0.11:7000 10.231.0.12:7000; do
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then break; fi
        sleep 0.1
    done
done

plan() { # target-url
    cat >"$work/plan.toml" <<PLAN
name = "netns"
[target]
url = "$1"
[request]
max_tokens = 8
[load]
users = 40
requests = 400
[cluster]
agents = ["10.231.0.11:7000", "10.231.0.12:7000"]
token_env = "BARRAGE_NETNS_TOKEN"
[output]
dir = "$work/results"
PLAN
}

fail() { echo "netns test FAILED: $*"; cat "$work"/*.log 2>/dev/null | tail -20; exit 1; }

# 1. Exact counts across hosts.
plan http://10.231.0.20:8000
timeout 120 "$bin/controller" run "$work/plan.toml" --quiet >"$work/run1.out" 2>&1 || fail "run exited $?: $(tail -5 "$work/run1.out")"
summary=$(find "$work/results" -name summary.json | head -1)
stats=$(python3 -c 'import urllib.request;print(urllib.request.urlopen("http://10.231.0.20:8000/sim/stats").read().decode())')
python3 - "$summary" "$stats" <<'PY' || fail "counts differ"
import json, sys
s = json.load(open(sys.argv[1])); sim = json.loads(sys.argv[2])
assert s["requests_ok"] == 400, s["requests_ok"]
assert s["requests_total"] == sim["requests"], (s["requests_total"], sim["requests"])
assert s["output_tokens"] == sim["output_tokens"] == 400 * 8
assert sorted(a["users"] for a in s["agents"]) == [20, 20]
print("netns: 400 requests over 2 agents in 2 namespaces, counts equal the simulator's")
PY

# 2. A target off the agents' allow-list is refused before any traffic.
before=$(python3 -c 'import json,urllib.request;print(json.load(urllib.request.urlopen("http://10.231.0.20:8000/sim/stats"))["requests"])')
plan http://10.231.0.1:9
if timeout 60 "$bin/controller" run "$work/plan.toml" --quiet >"$work/run2.out" 2>&1; then fail "an off-list target was accepted"; fi
grep -q "allow-list" "$work/run2.out" || fail "refusal does not name the allow-list: $(cat "$work/run2.out")"

# 3. A wrong token is refused, naming the agent; nothing reaches the simulator.
plan http://10.231.0.20:8000
if BARRAGE_NETNS_TOKEN=wrong timeout 60 "$bin/controller" run "$work/plan.toml" --quiet >"$work/run3.out" 2>&1; then fail "a wrong token was accepted"; fi
grep -q "Unauthenticated" "$work/run3.out" || fail "refusal does not say why: $(cat "$work/run3.out")"
after=$(python3 -c 'import json,urllib.request;print(json.load(urllib.request.urlopen("http://10.231.0.20:8000/sim/stats"))["requests"])')
[ "$before" = "$after" ] || fail "traffic reached the simulator after a refusal ($before -> $after)"
echo "netns: allow-list and wrong-token refusals hold across hosts; no traffic leaked"
