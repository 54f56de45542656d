#!/usr/bin/env python3
"""creditd vs redis-server + Lua with creditd-loadtest, as in docs/PERFORMANCE.md
("Load tests (creditd-loadtest)").

Every run gets a fresh server with a fresh temp dir: creditd with --fsync everysec,
or redis-server with --appendonly yes --appendfsync everysec (the Lua scripts
loaded by the load tester). Before each run the script waits for the machine to
be idle; it records the CPU used by the server, the load tester and every other
process, and repeats a run (up to RETRIES times) when other processes used more
than MAX_OTHERS CPU-seconds during it. Reports go to OUT/<name>.json (the
load tester's JSON plus a "cpu" object); medians of 3 are printed at the end.

  python3 loadtest/scripts/compare.py closed              # reserve, pipeline 1 and 16
  python3 loadtest/scripts/compare.py open RATE_C RATE_R  # open loop, creditd / redis rates
  python3 loadtest/scripts/compare.py open-same RATE      # open loop, creditd only
  python3 loadtest/scripts/compare.py mix                 # the realistic mix, --verify

Environment: CREDITD, LOADTEST (binaries; default target/release/), OUT
(default ./loadtest-results), PORT_CREDITD (17341), PORT_REDIS (17351),
MAX_OTHERS (1.0), RETRIES (4).
"""
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LT = os.environ.get("LOADTEST", os.path.join(ROOT, "target/release/creditd-loadtest"))
CREDITD = os.environ.get("CREDITD", os.path.join(ROOT, "target/release/creditd"))
OUT = os.environ.get("OUT", "loadtest-results")
PORTS = {"creditd": int(os.environ.get("PORT_CREDITD", "17341")),
         "redis": int(os.environ.get("PORT_REDIS", "17351"))}
MAX_OTHERS = float(os.environ.get("MAX_OTHERS", "1.0"))
RETRIES = int(os.environ.get("RETRIES", "4"))
TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()


def proc_cpu(pid):
    """utime + stime (+ reaped children) of one process, seconds."""
    try:
        f = stat_fields(pid)
        return sum(int(x) for x in f[11:15]) / TCK
    except OSError:
        return 0.0


def procs_cpu():
    """CPU seconds of every user-space process (kernel threads excluded), by pid."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            f = stat_fields(pid)
        except OSError:
            continue
        if pid == "2" or f[1] == "2":
            continue
        out[int(pid)] = (int(f[11]) + int(f[12])) / TCK
    return out


def machine_busy():
    v = list(map(int, open("/proc/stat").readline().split()[1:]))
    return (v[0] + v[1] + v[2]) / TCK


def wait_quiet(limit=300):
    t0 = time.time()
    while time.time() - t0 < limit:
        a = machine_busy()
        time.sleep(3)
        if machine_busy() - a < 0.3:  # under 5 % of two cores for 3 s
            return
    print("  (the machine did not get quiet; going on)", flush=True)


def wait_port(port):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port}")


def start(target, d):
    port = PORTS[target]
    log = open(os.path.join(d, "server.log"), "w")
    if target == "creditd":
        cmd = [CREDITD, "--listen", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{port + 1}",
               "--data-dir", d, "--fsync", "everysec", "--log", "warn"]
    else:
        cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d,
               "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]
    p = subprocess.Popen(cmd, stdout=log, stderr=log)
    wait_port(port)
    return p


def run_once(name, target, args):
    d = tempfile.mkdtemp(prefix="creditd-compare-")
    wait_quiet()
    p = start(target, d)
    js = os.path.abspath(os.path.join(OUT, name + ".json"))
    cmd = [LT, "--addr", f"127.0.0.1:{PORTS[target]}",
           "--target", "creditd" if target == "creditd" else "redis-lua",
           "--quiet", "--json", js] + args
    srv0, ps0, t0 = proc_cpu(p.pid), procs_cpu(), time.time()
    try:
        c = subprocess.run(["/usr/bin/time", "-f", "%U %S"] + cmd, capture_output=True, text=True)
        wall = time.time() - t0
        srv, ps1 = proc_cpu(p.pid) - srv0, procs_cpu()
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        shutil.rmtree(d, ignore_errors=True)
    if c.returncode != 0:
        print(f"  {name}: exit {c.returncode}\n{c.stdout}\n{c.stderr}", flush=True)
    cu, cs = map(float, c.stderr.strip().splitlines()[-1].split())
    # The load tester and /usr/bin/time have exited (they are in no snapshot);
    # the server is excluded by pid.
    others = sum(v - ps0.get(pid, 0.0) for pid, v in ps1.items()
                 if pid not in (p.pid, os.getpid()))
    r = json.load(open(js))
    r["cpu"] = {"wall_s": round(wall, 2), "server_s": round(srv, 2),
                "client_s": round(cu + cs, 2), "others_s": round(others, 2)}
    json.dump(r, open(js, "w"), indent=1)
    return r


def run(name, target, args):
    for _ in range(RETRIES):
        r = run_once(name, target, args)
        lat, cpu = r["latency_us"], r["cpu"]
        lag = r.get("send_lag_us")
        print(f"{name}: {r['throughput_ops_s']:.0f} ops/s  p50 {lat['p50']}  p99 {lat['p99']}  "
              f"p99.9 {lat['p999']}  max {lat['max']} µs  errors {sum(e['count'] for e in r['errors'].values())} "
              f"(unexpected {r['unexpected_errors']})  "
              f"dropped {r['dropped']}  send lag p99 {lag['p99'] if lag else '-'}  cpu {cpu}",
              flush=True)
        if cpu["others_s"] <= MAX_OTHERS:
            return r
        print(f"  other processes used {cpu['others_s']} CPU-s: repeating", flush=True)
    return r


def summary(results):
    groups = {}
    for name, r in results:
        groups.setdefault(name.rsplit("-", 1)[0], []).append(r)
    for g, rs in groups.items():
        tput = [r["throughput_ops_s"] for r in rs]
        p99 = [r["latency_us"]["p99"] for r in rs]
        print(f"{g}: median {statistics.median(tput):.0f} ops/s {tput}, "
              f"median p99 {statistics.median(p99)} µs {p99}")


def _term(*_):
    raise SystemExit("terminated")


def main():
    signal.signal(signal.SIGTERM, _term)
    os.makedirs(OUT, exist_ok=True)
    phase = sys.argv[1] if len(sys.argv) > 1 else ""
    reserve = ["--workload", "reserve", "--connections", "50", "--warmup", "1",
               "--duration", "10", "--accounts", "100000", "--keys", "uniform"]
    results = []

    def go(name, target, args):
        results.append((name, run(name, target, args)))

    if phase == "closed":
        for rep in (1, 2, 3):
            for p in (1, 16):
                for t in ("creditd", "redis"):
                    go(f"closed-{t}-p{p}-{rep}", t, reserve + ["--pipeline", str(p)])
    elif phase == "open" and len(sys.argv) == 4:
        rates = {"creditd": sys.argv[2], "redis": sys.argv[3]}
        for rep in (1, 2, 3):
            for t in ("creditd", "redis"):
                go(f"open-{t}-{rates[t]}-{rep}", t,
                   reserve + ["--mode", "open", "--rate", rates[t], "--pipeline", "1"])
    elif phase == "open-same" and len(sys.argv) == 3:
        for rep in (1, 2, 3):
            go(f"open-creditd-{sys.argv[2]}-{rep}", "creditd",
               reserve + ["--mode", "open", "--rate", sys.argv[2], "--pipeline", "1"])
    elif phase == "mix":
        mix = ["--workload", "mix", "--connections", "50", "--warmup", "1", "--duration", "10",
               "--accounts", "10000", "--keys", "zipf", "--verify"]
        for rep in (1, 2, 3):
            for p in (1, 16):
                for t in ("creditd", "redis"):
                    go(f"mix-{t}-p{p}-{rep}", t, mix + ["--pipeline", str(p)])
    else:
        sys.exit(__doc__)
    summary(results)


if __name__ == "__main__":
    main()
