#!/usr/bin/env python3
"""Who was late: the server's sends or the client's reads (a tcpdump of lo).

Reads a capture of the data segments on loopback during one benchmark run
against one llm-sim, and prints, from the wire's own times:

* the server's gaps between consecutive data segments within a response
  (a late server shows gaps well above the ITL);
* per second of the run, how long after a response's last segment the
  client sent its next request on that connection (a busy client shows
  delays here; the server is idle in between).

    tcpdump -i lo -s 80 -B 262144 -w cap.pcap 'tcp[tcpflags] & tcp-push != 0' &
    ulimit -n 20000; target/release/examples/engine_bench hold 19000
    kill %1; python3 docs/bench/lo_gaps.py cap.pcap [--itl-s 1.0]

The server is the port that sent the most data segments. A response starts
with a segment beginning "HTTP/"; its last segment is the largest of the
stream's (usage and [DONE]). Standard library only.
"""

import argparse
import collections
import struct


def segments(path):
    """(time, src port, dst port, payload length, first payload bytes)."""
    with open(path, "rb") as f:
        f.read(24)  # pcap global header (little-endian, Ethernet)
        while True:
            h = f.read(16)
            if len(h) < 16:
                return
            sec, usec, incl, _ = struct.unpack("<IIII", h)
            d = f.read(incl)
            ip = d[14:]
            ihl = (ip[0] & 15) * 4
            total = struct.unpack(">H", ip[2:4])[0]
            tcp = ip[ihl:]
            sport, dport = struct.unpack(">HH", tcp[:4])
            off = (tcp[12] >> 4) * 4
            n = total - ihl - off
            if n > 0:
                yield sec + usec / 1e6, sport, dport, n, bytes(tcp[off : off + 8])


def quantiles(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2], v[min(n - 1, int(n * 0.99))], v[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pcap")
    ap.add_argument("--itl-s", type=float, default=1.0, help="the run's ITL, seconds")
    a = ap.parse_args()
    flows = collections.defaultdict(list)
    sent = collections.Counter()
    for t, sp, dp, n, head in segments(a.pcap):
        flows[(sp, dp)].append((t, n, head))
        sent[sp] += 1
    server = sent.most_common(1)[0][0]
    t0 = min(p[0][0] for p in flows.values())
    late, within = [], 0
    for (sp, _), pk in flows.items():
        if sp != server:
            continue
        for prev, cur in zip(pk, pk[1:]):
            if cur[2].startswith(b"HTTP/"):
                continue
            within += 1
            gap = cur[0] - prev[0]
            if gap > a.itl_s * 1.1:
                late.append(gap)
    print(f"server port {server}: {within} gaps within responses, "
          f"{len(late)} above 1.1 x ITL" + (f", max {max(late):.3f} s" if late else ""))
    by_second = collections.defaultdict(list)
    for (sp, dp), pk in flows.items():
        if dp != server:
            continue
        back = flows.get((server, sp), [])
        biggest = max((p[1] for p in back), default=0)
        ends = [p[0] for p in back if p[1] == biggest]
        for t, _, _ in pk:
            before = [e for e in ends if e <= t]
            if before:
                by_second[int(before[-1] - t0)].append(t - before[-1])
    print("second | next requests | delay after the last chunk p50 / p99 / max (s)")
    for s in sorted(by_second):
        p50, p99, mx = quantiles(by_second[s])
        print(f"{s:6} | {len(by_second[s]):13} | {p50:.3f} / {p99:.3f} / {mx:.3f}")


if __name__ == "__main__":
    main()
