"""The CLI as a user runs it: `edgefleet push` end to end vs scp, and the CPU of light commands.

    python bench/cli_startup.py [--mb 90] [--repeats 5] [--link loopback|lan|both]
                                [--baseline OTHER_CHECKOUT] [--pin]

Issue 12 asks for a CLI that starts at once. bench/push.py times ``deploy.push`` inside one Python
process; here every push is a fresh ``edgefleet push BUNDLE DEVICE --json`` process, timed from its
start to its exit (interpreter start, imports, schema check, the push with its on-device smoke
test, output), alternating with ``scp`` of the same model file to the same sshd host and with an
in-process ``deploy.push`` (so start-up cost = CLI - in-process). Each push runs cold (no SSH
connection open: ``EDGEFLEET_SSH_PERSIST_S=0``, as the first command after a minute idle) and
warm (over the connection the previous command left open); scp always logs in afresh. The
device is emptied of the bundle before each push: every byte travels. Then the CPU time (user +
sys, from ``os.wait4``) of ``edgefleet devices list``, ``bundle list``, ``runs list`` and
``dataset list`` on that home.

Each scp and push also reports the CPU every process of the machine used meanwhile (/proc/stat):
ssh, sshd, the agent, the smoke test and the CLI. Divided by the cores, that is the shortest
time the push could take on this one machine however well it overlaps: the bound it prints.

Goals (issue 12): push >= 0.9x the speed of scp end to end; devices list and bundle list
<= 0.4 s of CPU each. The sshd host, the scp command line and the links (loopback, a 940 Mbit/s
veth pair in a network namespace, root only) are bench/push.py's. The console script next to
this interpreter is run, not a pyenv shim (a shim adds ~0.1 s of bash before Python starts).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.push import LAN_RATE, STOCK_SFTP_SERVER, empty_device, lan_namespace, prepare  # noqa: E402
from orchestrator.demo.model import make_large_model  # noqa: E402
from orchestrator.fleet.deploy import push  # noqa: E402
from tests.fleet.sshd import SshdHost, UserKey, generate_user_key  # noqa: E402

CPU_GOAL_S = 0.4
PUSH_GOAL = 0.9

# `edgefleet push` as the console script runs it, timestamping (s since the bench spawned it)
# when its device work started (cli.quick -> fleet.early), the device's plan came back, the
# early stream ended, the push adopted it (the ORM loaded, the job, its Deployment row and the
# lease recorded) and the process exited: where a fresh push's time goes.
TRACER = """
import atexit, json, sys, time
out, t0 = sys.argv[1], float(sys.argv[2])
marks = {}
def mark(name):
    marks.setdefault(name, time.time() - t0)
atexit.register(lambda: (mark("exit"), open(out, "w").write(json.dumps(marks))))
from orchestrator.fleet import early
real_start, real_note, real_run, real_claim = (early.start, early.EarlyPush._note,
                                               early.EarlyPush._run, early.claim)
def start(*a, **k):
    mark("device work starts")
    return real_start(*a, **k)
def note(self, plan):
    mark("plan answered")
    return real_note(self, plan)
def run(self):
    real_run(self)
    mark("stream ends")
def claim(*a, **k):
    mark("job, lease, row recorded: adopted")
    return real_claim(*a, **k)
early.start, early.EarlyPush._note, early.EarlyPush._run, early.claim = start, note, run, claim
sys.argv = ["edgefleet", *sys.argv[3:]]
from orchestrator.cli.main import main
main()
"""


@dataclass
class Child:
    wall_s: float
    cpu_s: float  # user + sys of the process (and of any children it waited for)
    stdout: bytes
    machine_cpu_s: float  # every process of this machine meanwhile: ssh, sshd, the agent...


def machine_busy_s() -> float:
    """CPU time every process of this machine has used so far (/proc/stat's first line: user,
    nice, system, irq and softirq; not idle, iowait or the hypervisor's steal). Why: on one
    machine the device's side (sshd, the agent's hashing and fsync, the smoke test) and ours
    share the cores, so the CPU a push needs in all bounds how fast it can be, apart from how
    it is scheduled."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = ticks
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def run_child(argv: list[str], env: dict[str, str] | None = None) -> Child:
    """Run to completion; wall time from spawn to exit, CPU from the kernel's rusage."""
    busy = machine_busy_s()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,  # noqa: S603
                            stderr=subprocess.DEVNULL)
    stdout = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    busy = machine_busy_s() - busy
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}")
    return Child(wall, usage.ru_utime + usage.ru_stime, stdout, busy)


def compile_tree(root: Path) -> None:
    """Byte-compile the packages a CLI process imports from ``root``, as an installed package
    has them: with PYTHONDONTWRITEBYTECODE set (this CI machine sets it) every process would
    otherwise compile EdgeFleet's own modules from source again, ~0.1-0.2 s of CPU each."""
    import compileall

    for package in ("agent", "orchestrator", "web"):
        compileall.compile_dir(root / package, quiet=1)


def edgefleet_script() -> str:
    script = Path(sys.executable).parent / "edgefleet"
    return str(script) if script.is_file() else shutil.which("edgefleet") or "edgefleet"


def measure(label: str, host: SshdHost, key: UserKey, model: Path, base: Path,
            repeats: int, baseline: Path | None) -> None:
    tag = label.split()[0]
    settings, devices, bundle, scp_argv = prepare(tag, host, key, model, base)
    env = dict(os.environ, EDGEFLEET_HOME=str(settings.home))
    env.pop("DATABASE_URL", None)
    # Each push twice: cold (no SSH connection open: the first command after a minute idle,
    # or EDGEFLEET_SSH_PERSIST_S=0) and warm (the connection the previous command left open,
    # transport.sshpersist). scp is always cold, as a user types it.
    trees = {"this tree, cold": dict(env, EDGEFLEET_SSH_PERSIST_S="0"), "this tree, warm": env}
    if baseline is not None:  # the same console script, importing the other checkout's code
        trees[f"baseline {baseline}"] = dict(env, PYTHONPATH=str(baseline))
    edgefleet = edgefleet_script()
    push_argv = [edgefleet, "push", f"{bundle.name}@{bundle.version}", devices[0].name, "--json"]
    empty_device(host.root)
    run_child(push_argv, env)  # opens the connection the first warm push finds

    scp_s: list[float] = []
    scp_machine_s: list[float] = []
    machine_s: dict[str, list[float]] = {tree: [] for tree in trees}
    inproc_s: list[float] = []
    cli_s: dict[str, list[float]] = {tree: [] for tree in trees}
    cli_cpu_s: dict[str, list[float]] = {tree: [] for tree in trees}
    for _ in range(repeats):
        (base / "scp-copy").unlink(missing_ok=True)
        copied = run_child(scp_argv)
        scp_s.append(copied.wall_s)
        scp_machine_s.append(copied.machine_cpu_s)
        for tree, tree_env in trees.items():
            empty_device(host.root)
            child = run_child(push_argv, tree_env)
            result = json.loads(child.stdout)[0]
            assert result["state"] == "active", result
            assert result["bytes_sent"] == bundle.size_bytes, result
            assert (result.get("smoke") or {}).get("ok"), result
            cli_s[tree].append(child.wall_s)
            cli_cpu_s[tree].append(child.cpu_s)
            machine_s[tree].append(child.machine_cpu_s)
        empty_device(host.root)
        started = time.perf_counter()
        outcome = push(settings, bundle, devices)[0]
        inproc_s.append(time.perf_counter() - started)
        assert outcome.ok and outcome.data["bytes_sent"] == bundle.size_bytes, outcome

    traces: list[dict[str, float]] = []
    for _ in range(repeats):  # this tree only, warm: its phases, each push a fresh process
        empty_device(host.root)
        marks = base / "marks.json"
        child = run_child([sys.executable, "-c", TRACER, str(marks), repr(time.time()),
                           *push_argv[1:]], env)
        assert json.loads(child.stdout)[0]["state"] == "active"
        traces.append(json.loads(marks.read_text()))

    light: dict[tuple[str, str], list[Child]] = {}
    for _ in range(repeats):
        for command in ("devices list", "bundle list", "runs list", "dataset list"):
            for tree, tree_env in trees.items():
                if tree.endswith(", cold"):  # no device contact: one of the two is enough
                    continue
                light.setdefault((command, tree), []).append(
                    run_child([edgefleet, *command.split()], tree_env))

    mb = bundle.size_bytes / 1e6
    scp_med, inproc_med = statistics.median(scp_s), statistics.median(inproc_s)
    print(f"\n[{label}] {mb:.1f} MB model, {repeats} alternating repeats, medians "
          f"({edgefleet})")
    print(f"  scp                           {scp_med:6.2f} s")
    print(f"  deploy.push in-process        {inproc_med:6.2f} s  (no start-up, no exit; "
          "connection warm)")
    for tree in trees:
        cli_med = statistics.median(cli_s[tree])
        print(f"  edgefleet push, {tree}: {cli_med:.2f} s start to exit, smoke test "
              f"included (CPU {statistics.median(cli_cpu_s[tree]):.2f} s; start-up + exit "
              f"{cli_med - inproc_med:+.2f} s over a warm in-process push)")
        print(f"    push/scp speed ratio, end to end: {scp_med / cli_med:.2f}x  (goal >= "
              f"{PUSH_GOAL}x; each run: " + ", ".join(
                  f"{s / c:.2f}" for s, c in zip(scp_s, cli_s[tree], strict=True)) + ")")
    cores = len(os.sched_getaffinity(0))
    scp_cpu = statistics.median(scp_machine_s)
    print(f"  CPU of every process on this machine meanwhile (ssh, sshd, the agent, the smoke "
          f"test, the CLI), medians: scp {scp_cpu:.2f} s", end="")
    for tree in trees:
        need = statistics.median(machine_s[tree])
        print(f"; push, {tree} {need:.2f} s (on {cores} cores it cannot end before "
              f"{need / cores:.2f} s: push/scp <= {scp_med / (need / cores):.2f}x)", end="")
    print()
    if traces and all(len(t) == len(traces[0]) for t in traces):
        print("  a fresh push's phases (this tree, warm; s since spawned, medians): "
              + ", ".join(f"{name} {statistics.median(t[name] for t in traces):.2f}"
                          for name in sorted(traces[0], key=traces[0].__getitem__)))
    for (command, tree), runs in light.items():
        cpu = [r.cpu_s for r in runs]
        print(f"  edgefleet {command}, {tree}: CPU {statistics.median(cpu):.3f} s (min "
              f"{min(cpu):.3f}), wall {statistics.median(r.wall_s for r in runs):.3f} s  "
              f"(goal <= {CPU_GOAL_S} s CPU)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=90.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--link", choices=("loopback", "lan", "both"), default="loopback")
    parser.add_argument("--baseline", type=Path, help="another checkout (e.g. `git worktree add "
                        "/tmp/old HEAD~3`) whose code the CLI also runs, alternating: a change "
                        "measured side by side; it must have the same migrations")
    parser.add_argument("--pin", action="store_true",
                        help="the CLI (and scp) on CPU 0, the device's sshd on CPU 1: two "
                        "machines' worth of CPU instead of one shared pair, as bench/push.py")
    args = parser.parse_args()
    device_cpus = None
    if args.pin:
        os.sched_setaffinity(0, {0})  # children (the CLI, scp, ssh) inherit it
        device_cpus = "1"
    baseline = args.baseline.resolve() if args.baseline else None
    for tree in (Path(__file__).resolve().parent.parent, baseline):
        if tree is not None:
            compile_tree(tree)

    base = Path(tempfile.mkdtemp(prefix="edgefleet-bench-cli-"))
    try:
        key = generate_user_key(base)
        model = make_large_model(base / "model" / "model.onnx", args.mb)
        if args.link in ("loopback", "both"):
            with SshdHost("bench-loopback", base, key, cpus=device_cpus,
                          sftp_server=STOCK_SFTP_SERVER) as host:
                measure("loopback", host, key, model, base, args.repeats, baseline)
        if args.link in ("lan", "both"):
            with lan_namespace() as (ns, address), \
                    SshdHost("bench-lan", base, key, address=address, netns=ns,
                             cpus=device_cpus, sftp_server=STOCK_SFTP_SERVER) as host:
                measure(f"lan {LAN_RATE}", host, key, model, base, args.repeats, baseline)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
