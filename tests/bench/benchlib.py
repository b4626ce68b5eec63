"""Shared pieces of the benchmark reports (imported by the scripts' inline Python)."""
import datetime
import platform
import subprocess


def pct(times, p):
    """The p-th percentile of `times` (seconds), in milliseconds (nearest rank)."""
    ts = sorted(times)
    return ts[min(len(ts) - 1, int(round(p / 100 * (len(ts) - 1))))] * 1000


def machine():
    """'Measured <date> at commit `abc123` on x86_64, 2 cores' for the report's first line."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"Measured {datetime.date.today()} at commit `{commit}` on {platform.machine()}, {cores} cores"
