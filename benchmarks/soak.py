"""Soak: producer, trainer and evaluator run for a while; RSS of each process every interval.

    .venv/bin/python benchmarks/soak.py                  # 10 minutes, a sample every 10 s
    .venv/bin/python benchmarks/soak.py --tiny           # 20 s, every 5 s (the test suite's run)

Real processes on loopback (the bundled model's random-init control, so the figures do not
depend on training quality), streaming until stopped. Memory growth is measured from the end
of the warm-up (the first quarter of the run: buffers fill, allocators settle) to the end:
growth = (mean RSS of the last 3 samples) / (RSS at the end of the warm-up) - 1, per process.
The target is <= 10% for every process; the exit code is 1 when one exceeds it (not in tiny
mode, which is too short to say). CPU seconds per process are printed beside it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, no install

from boardlens.services.up import free_ports, spawn, stop_processes  # noqa: E402

MODEL = ROOT / "models" / "othello-gpt-random"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 10 ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between RSS samples")
    ap.add_argument("--tiny", action="store_true", help="20 s, a sample every 5 s, no verdict")
    args = ap.parse_args()
    if args.tiny:
        args.minutes, args.interval = 20 / 60, 5.0
    lossless, lossy, snaps, pm, tm, em = free_ports(6)
    ep = lambda p: f"tcp://127.0.0.1:{p}"  # noqa: E731
    run = Path(tempfile.mkdtemp(prefix="boardlens-soak-"))
    commands = {
        "producer": ["produce", "--model", str(MODEL), "--bind", ep(lossless), "--bind-lossy", ep(lossy),
                     "--batch-games", "64", "--wait-consumers", "1", "--threads", "1", "--metrics-port", str(pm)],
        "trainer": ["train", "--connect", ep(lossless), "--snapshot-bind", ep(snaps), "--run-dir", str(run),
                    "--saes", "standard", "--saes", "topk", "--d-sae", "1024", "--batch-size", "1024",
                    "--steps", "10000000", "--snapshot-every", "50", "--checkpoint-every", "200", "--threads", "1",
                    "--metrics-port", str(tm)],
        "evaluator": ["evaluate", "--connect", ep(lossy), "--snapshots", ep(snaps), "--run-dir", str(run),
                      "--train-games", "100", "--test-games", "100", "--threads", "1", "--metrics-port", str(em)],
    }
    procs = {name: spawn(commands[name][0], commands[name][1:], run / f"{name}.log")
             for name in ("evaluator", "trainer", "producer")}
    samples: dict[str, list[float]] = {n: [] for n in procs}
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < args.minutes * 60:
            time.sleep(args.interval)
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                print(f"error: {', '.join(dead)} exited early; logs in {run}")
                return 1
            for n, p in procs.items():
                samples[n].append(_rss_mib(p.pid))
            print(f"t={time.monotonic() - t0:5.0f} s  " + "  ".join(f"{n} {v[-1]:6.0f} MiB"
                                                              for n, v in samples.items()), flush=True)
        cpu = {n: _cpu_s(p.pid) for n, p in procs.items()}
    finally:
        stop_processes(procs, timeout_s=60)
    warm = max(1, len(next(iter(samples.values()))) // 4)
    worst = 0.0
    for n, v in samples.items():
        tail = sum(v[-3:]) / len(v[-3:])
        growth = tail / v[warm - 1] - 1
        worst = max(worst, growth)
        print(f"{n:9s}: RSS {v[warm - 1]:.0f} MiB after warm-up (the baseline) -> {tail:.0f} MiB at the "
              f"end: ratio {tail / v[warm - 1]:.2f}, growth {growth:+.1%} (target <= 10%); CPU {cpu[n]:.0f} s")
    if args.tiny:
        print("tiny run: too short for a verdict")
        return 0
    print(f"worst growth {worst:+.1%}: {'PASS' if worst <= 0.10 else 'FAIL'}")
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
