#!/usr/bin/env bash
# Benchmark (not a test): what the agent's job cgroups cost per command on a cgroup2 host. To start a
# job's command inside its cgroup (agent/src/cgroup.rs `spawn_in`), the agent writes its own pid to
# the job cgroup's `cgroup.procs`, spawns, and writes it back: two migrations of the whole agent, every
# thread of it. This measures those two writes for a process with THREADS threads (the agent has ~10
# while it serves commands) against a single-threaded one, and a cgroup's mkdir + rmdir.
#
# Usage (as root, with a cgroup2 mount): tests/bench/cgroup_migration.sh [MOUNT] [THREADS] [RUNS]
#   MOUNT defaults to /sys/fs/cgroup when that is cgroup2, else /sys/fs/cgroup/unified (hybrid hosts).
set -euo pipefail
mount=${1:-}
if [ -z "$mount" ]; then
  if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then mount=/sys/fs/cgroup; else mount=/sys/fs/cgroup/unified; fi
fi
[ "$(stat -f -c %T "$mount")" = cgroup2fs ] || { echo "no cgroup2 mount at $mount"; exit 1; }
own=$(sed -n 's/^0:://p' /proc/self/cgroup)
exec python3 - "$mount$own" "${2:-12}" "${3:-300}" <<'PY'
import os, sys, threading, time
home, threads, runs = sys.argv[1].rstrip("/") or "/", int(sys.argv[2]), int(sys.argv[3])
job = os.path.join(home, "burrow-bench-job")
os.makedirs(job, exist_ok=True)
pid = str(os.getpid())
def migrations():
    t0 = time.perf_counter()
    for _ in range(runs):
        open(os.path.join(job, "cgroup.procs"), "w").write(pid)
        open(os.path.join(home, "cgroup.procs"), "w").write(pid)
    return (time.perf_counter() - t0) / runs * 1000
try:
    one = migrations()
    stop = threading.Event()
    pool = [threading.Thread(target=stop.wait) for _ in range(threads)]
    for t in pool: t.start()
    many = migrations()
    stop.set()
    for t in pool: t.join()
    t0 = time.perf_counter()
    for i in range(runs):
        d = os.path.join(home, f"burrow-bench-{i}"); os.mkdir(d); os.rmdir(d)
    mk = (time.perf_counter() - t0) / runs * 1000
finally:
    os.rmdir(job)
print(f"cgroup2 under {home}, {runs} runs each:")
print(f"| what | ms per job |\n| --- | ---: |")
print(f"| into the job cgroup and back, 1 thread | {one:.3f} |")
print(f"| into the job cgroup and back, {threads + 1} threads | {many:.3f} |")
print(f"| mkdir + rmdir of a job cgroup | {mk:.3f} |")
PY
