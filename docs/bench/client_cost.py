#!/usr/bin/env python3
"""Client CPU of barrage against other load generators, same target, same run.

Each tool runs as a child process against one llm-sim process on loopback;
its CPU is the child's user + system time (RUSAGE_CHILDREN: forked worker
processes included once they are reaped), and the work done is what llm-sim
counted (`/sim/stats`): tokens streamed, or requests completed. Rounds
alternate the tools so drift on a shared machine hits both.

    cargo build --release -p barrage-llm-sim -p barrage-controller --bins
    pip install locust          # for `stream`
    cargo install oha           # for `plain`
    python3 docs/bench/client_cost.py stream [--users 1000] [--secs 20] [--rounds 3]
    python3 docs/bench/client_cost.py plain  [--users 64] [--secs 10] [--rounds 3]
    (--no-records: barrage without per-request records, which are on by default)

`stream`: barrage vs Locust (docs/bench/locust_stream.py, FastHttpUser,
`--processes 2`), TTFT 50 ms, ITL 50 ms, 64 tokens: CPU µs per streamed token.
`plain`: barrage vs oha, non-streaming, no simulated latency, 16 tokens:
requests per CPU-second.
"""

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release")
WORDS = " ".join(["word"] * 32)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sim_stats(url):
    with urllib.request.urlopen(url + "/sim/stats", timeout=10) as r:
        return json.load(r)


def start_sim(ttft, itl):
    port = free_port()
    sim = subprocess.Popen(
        [os.path.join(BIN, "llm-sim"), "--listen", f"127.0.0.1:{port}", "--ttft", ttft, "--itl", itl],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            sim_stats(url)
            return sim, url
        except OSError:
            time.sleep(0.05)
    sim.kill()
    sys.exit("llm-sim did not start")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


ENV = dict(os.environ)


def measure(cmd, url, field):
    """Runs `cmd` to its end: (its CPU seconds, llm-sim's `field` delta)."""
    before, cpu0 = sim_stats(url)[field], children_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(), env=ENV)
    cpu = children_cpu() - cpu0
    if out.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({out.returncode}): {out.stderr[-2000:]}")
    time.sleep(0.5)
    return cpu, sim_stats(url)[field] - before


def barrage_cmd(url, users, secs, stream, tokens):
    return [
        os.path.join(BIN, "controller"), "run", "--quiet",
        "--url", url + "/v1/chat/completions", "--model", "m",
        "--users", str(users), "--spawn-rate", str(max(users // 2, 1)),
        "--duration", f"{secs}s", "--drain", "0s",
        "--max-tokens", str(tokens), "--stream", "true" if stream else "false",
        "--output", os.path.join(tempfile.gettempdir(), "barrage-client-cost"),
    ]


def stream_case(a):
    sim, url = start_sim("50ms", "50ms")
    tools = {
        "barrage": barrage_cmd(url, a.users, a.secs, True, 64),
        "locust": [
            "locust", "-f", os.path.join(ROOT, "docs", "bench", "locust_stream.py"),
            "--headless", "--only-summary", "--processes", "2",
            "-u", str(a.users), "-r", str(max(a.users // 2, 1)), "-t", f"{a.secs}s",
            "--host", url,
        ],
    }
    try:
        report(tools, url, "output_tokens_sent", a.rounds, "µs CPU / token", lambda c, n: c / n * 1e6)
    finally:
        sim.kill()


def plain_case(a):
    sim, url = start_sim("0ms", "0ms")
    body = json.dumps({
        "model": "m", "stream": False, "max_tokens": 16,
        "messages": [{"role": "user", "content": WORDS}],
    })
    tools = {
        "barrage": barrage_cmd(url, a.users, a.secs, False, 16),
        "oha": [
            "oha", "--no-tui", "-z", f"{a.secs}s", "-c", str(a.users), "-m", "POST",
            "-H", "content-type: application/json", "-d", body,
            url + "/v1/chat/completions",
        ],
    }
    try:
        report(tools, url, "completed", a.rounds, "requests / CPU-s", lambda c, n: n / c)
    finally:
        sim.kill()


def report(tools, url, field, rounds, unit, figure):
    got = {name: [] for name in tools}
    for r in range(rounds):
        for name, cmd in tools.items():
            cpu, n = measure(cmd, url, field)
            got[name].append(figure(cpu, n))
            print(f"round {r} {name}: {cpu:.2f} CPU-s, {n} {field}, {got[name][-1]:.2f} {unit}", flush=True)
    medians = {name: statistics.median(v) for name, v in got.items()}
    first = next(iter(tools))
    for name, v in got.items():
        runs = ", ".join(f"{x:.2f}" for x in v)
        ratio = medians[name] / medians[first]
        print(f"| {name} | {medians[name]:.2f} | {runs} | {ratio:.2f}× of {first} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("case", choices=["stream", "plain"])
    p.add_argument("--users", type=int)
    p.add_argument("--secs", type=int)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-records", action="store_true", help="barrage without per-request records")
    a = p.parse_args()
    if a.no_records:
        ENV["BARRAGE_OUTPUT__REQUESTS"] = "false"
    if a.case == "stream":
        a.users, a.secs = a.users or 1000, a.secs or 20
        stream_case(a)
    else:
        a.users, a.secs = a.users or 64, a.secs or 10
        plain_case(a)


if __name__ == "__main__":
    main()
