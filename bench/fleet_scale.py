"""Fleet scale: telemetry and a small-bundle push at 100s-1,000 devices, side by side with
ansible-core and pyinfra, and the Fleet page / GET /api/devices at that size, in one run.

    python bench/fleet_scale.py [--devices 100,1000] [--forks 10,50,200] [--sshd 4]
        [--ssh-share 0.5] [--tools edgefleet,ansible,pyinfra] [--ops telemetry,push]
        [--tool-bin /tmp/i14-benchtools/bin]

The fleet of N logical devices is two halves (``--ssh-share``): inventory hosts pointing at a
few real sshd processes (``--sshd``, started as tests/fleet/sshd.py does; each logical device has
its own ``edgefleet_root`` there) and local-transport devices (``ansible_connection: local``) on
simulated sensors (orchestrator/demo/simulate.py). Every measured operation runs in a fresh
child process, so each row's peak RSS is its own:

- EdgeFleet's own CPU is the child's user+sys (RUSAGE_SELF: the control plane's threads, not
  the agents it starts locally, not the sshd side); per device = that / N.
- ansible (``ansible all -m setup`` / ``-m copy``) and pyinfra (``fact server.LinuxDistribution``
  / ``files.put``) run on the same sshd hosts at the same forks; their CPU is the whole
  controller tree's (wait4: the tool, its forks and its ssh clients, the remote side excluded),
  since their controller work is spread over processes; peak RSS is the largest one process.
  Each logical host gets its own SSH connection in all three (ansible's ControlPath is keyed
  by inventory name, EdgeFleet's socket name includes the device's: as with real distinct Pis).
  Persistent ssh masters (EdgeFleet's and ansible's ControlPersist) detach from the command
  that started them; the CPU they use during a row is added to that row's.
- EdgeFleet's SSH-only row runs twice: cold (``EDGEFLEET_SSH_PERSIST_S=0``: every device logged
  into afresh, as pyinfra does) and warm (over the connections the "all" row left open, as the
  server's next minute's poll or a bench after a push).
- The push is a small bundle (the demo classifier, ~155 kB of model), a new one per forks level
  so every byte travels; EdgeFleet's push also verifies and smoke-tests it on each device
  (a fresh onnxruntime process), the other tools only copy the file.

The tools are bench-only, from a venv outside the project (``--tool-bin``):
``python3.11 -m venv /tmp/i14-benchtools && /tmp/i14-benchtools/bin/pip install ansible-core
pyinfra``. Ratios are what carry over between machines, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from orchestrator.core.config import Settings  # noqa: E402
from orchestrator.core.db import session_scope  # noqa: E402

HERE = Path(__file__).resolve()


# --- one measured operation, in its own process -------------------------------------------


def child(op: str, home: Path, forks: int, pattern: str, bundle: str | None) -> None:
    """Run one EdgeFleet operation on the devices ``pattern`` selects; print wall, own CPU,
    peak RSS and how many devices succeeded as one JSON line."""
    from orchestrator.artifacts.bundles import get_bundle
    from orchestrator.fleet.deploy import push
    from orchestrator.fleet.telemetry import take_snapshots
    from orchestrator.inventory.devices import select_devices

    settings = Settings(home=home, database_url=None)
    with session_scope(settings) as session:
        devices = select_devices(session, pattern)
        target = get_bundle(session, bundle) if bundle else None
        if target is not None:
            session.expunge(target)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if op == "telemetry":
        outcomes = take_snapshots(settings, devices, forks=forks)
    else:
        assert target is not None
        outcomes = push(settings, target, devices, forks=forks)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    failed = [f"{o.device}: {str(o.error)[:200]}" for o in outcomes if not o.ok]
    print(json.dumps({"wall": wall, "cpu": cpu, "rss_mb": after.ru_maxrss / 1024,
                      "ok": len(outcomes) - len(failed), "n": len(outcomes),
                      "failed": failed[:3]}))


LAUNCHER = """
import json, os, sys
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "cpu": usage.ru_utime + usage.ru_stime,
               "rss_mb": usage.ru_maxrss / 1024}, out)
"""
"""Starts the measured command from a small process: Linux carries the parent's peak RSS into
a forked child's ru_maxrss, so spawned straight from this bench every row would read >= the
bench's own size."""


def measured(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``argv`` to the end: wall time, and from wait4 the CPU (user+sys) of it and every
    descendant it waited for, and the largest RSS among them."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "usage.json"
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(report), *argv],  # noqa: S603
                              env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        usage = json.loads(report.read_text())
    return {"wall": wall, "out": proc.stdout, "err": proc.stderr} | usage


# --- the fleet ------------------------------------------------------------------------------


def build_fleet(base: Path, n: int, ssh_share: float, hosts: list[Any], sims: list[Any],
                forks: int, pages_only: bool = False,
                ) -> tuple[Settings, list[tuple[str, Any]], float]:
    """A home with N devices synced, hosts trusted and agents installed; the ssh devices as
    (name, sshd host); seconds the agent install took."""
    from orchestrator.fleet.agents import install_agents
    from orchestrator.inventory.devices import all_devices, sync_inventory
    from orchestrator.inventory.reader import load_inventory
    from orchestrator.transport.hostkeys import trust

    base.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=base / "home", database_url=None)
    n_ssh = round(n * ssh_share)
    ssh_devices = [(f"ssh-{i:04d}", hosts[i % len(hosts)]) for i in range(n_ssh)]
    ssh_hosts = {name: host.inventory_vars() | {"edgefleet_root": str(host.dir / "roots" / name)}
                 for name, host in ssh_devices}
    local_hosts = {f"loc-{i:04d}": sims[i % len(sims)].local_host_vars(base / "roots" / f"l{i}")
                   for i in range(n - n_ssh)}
    inventory = base / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {
        "ssh": {"hosts": ssh_hosts}, "local": {"hosts": local_hosts}}}}))
    for host in hosts:
        trust(host.name, host.address, host.port, settings, 10.0)
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(inventory))
        devices = all_devices(session)
    started = time.perf_counter()
    if pages_only:  # install on one device of each kind, give every row the same facts
        devices = [d for d in devices if d.name in ("ssh-0000", "loc-0000")]
    _, outcomes = install_agents(settings, devices, forks=forks)
    failed = [o for o in outcomes if not o.ok]
    assert not failed, f"{len(failed)} installs failed, e.g. {failed[0].error}"
    if pages_only:
        copy_facts(settings)
    return settings, ssh_devices, time.perf_counter() - started


def copy_facts(settings: Settings) -> None:
    """Every device gets the real facts of the installed device of its kind (what the Fleet
    page and the API read), without installing 1,000 agents (~400 s here)."""
    from orchestrator.inventory.devices import all_devices, get_device, record_facts

    with session_scope(settings) as session:
        facts = {kind: dict(get_device(session, f"{kind}-0000").facts) for kind in ("ssh", "loc")}
        for i, device in enumerate(all_devices(session)):
            # each its own temperature, so sorting by it orders 1,000 distinct values
            mine = facts[device.name[:3]] | {"sensors": dict(
                facts[device.name[:3]].get("sensors") or {}, temp_c=40.0 + (i * 7919) % 450 / 10)}
            record_facts(session, device.name, mine)


def bundles_for(settings: Settings, base: Path, levels: list[int],
                tag: str = "") -> dict[int, str]:
    """One small bundle per forks level and ``tag`` (a different model each), so each push
    sends every byte."""
    from orchestrator.artifacts.bundles import build_bundle
    from orchestrator.demo.model import make_demo_classifier

    names = {}
    for forks in levels:
        folder = base / f"model-{forks}"
        make_demo_classifier(folder / "model.onnx", seed=forks + (7919 if tag else 0))
        with session_scope(settings) as session:
            bundle = build_bundle(session, settings, folder, f"small{tag}-f{forks}",
                                  input_shapes={"log_mel": [1, 1, 98, 40]}).bundle
            names[forks] = f"{bundle.name}@{bundle.version}"
    return names


# --- the other tools, on the same sshd hosts ----------------------------------------------


def tool_files(base: Path, ssh_devices: list[tuple[str, Any]], known_hosts: Path) -> Path:
    """An ansible inventory + ssh config and a pyinfra inventory for the ssh devices."""
    tools = base / "tools"
    (tools / "cp").mkdir(parents=True, exist_ok=True)
    python = sys.executable
    ansible = {name: {"ansible_host": name, "ansible_port": host.port, "ansible_user": host.user,
                      "ansible_ssh_private_key_file": str(host.key_file),
                      "ansible_python_interpreter": python,
                      "root": str(host.dir / "roots" / name)} for name, host in ssh_devices}
    (tools / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": ansible}}))
    # every logical name resolves to loopback; host keys checked against the same known_hosts
    (tools / "ssh_config").write_text(
        f"Host *\n  HostName 127.0.0.1\n  UserKnownHostsFile {known_hosts}\n"
        "  StrictHostKeyChecking yes\n")
    lines = ["hosts = ["]
    for name, host in ssh_devices:
        data = {"ssh_hostname": host.address, "ssh_port": host.port, "ssh_user": host.user,
                "ssh_key": str(host.key_file), "ssh_known_hosts_file": str(known_hosts),
                "ssh_strict_host_key_checking": "yes", "root": str(host.dir / "roots" / name)}
        lines.append(f"    ({name!r}, {data!r}),")
    (tools / "inventory.py").write_text("\n".join(lines + ["]", ""]))
    (tools / "put.py").write_text(
        "from pyinfra import host\nfrom pyinfra.operations import files\n"
        "files.put(src=host.data.src, dest=host.data.root + '/pyinfra-' + host.data.tag)\n")
    return tools


def ansible_argv(bin_dir: Path, tools: Path, op: str, forks: int, src: Path) -> list[str]:
    module = ["-m", "setup"] if op == "telemetry" else [
        "-m", "copy", "-a", f"src={src} dest={{{{ root }}}}/ansible-{forks}.onnx"]
    return [str(bin_dir / "ansible"), "all", "-i", str(tools / "hosts.yml"), "-f", str(forks),
            "-o", *module]


def ansible_env(tools: Path, known_hosts: Path) -> dict[str, str]:
    return os.environ | {
        "ANSIBLE_SSH_ARGS": f"-F {tools / 'ssh_config'} -o ControlMaster=auto "
                            "-o ControlPersist=60s",
        "ANSIBLE_SSH_CONTROL_PATH": f"{tools / 'cp'}/%%n",  # one connection per logical host
        "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_LOCAL_TEMP": str(tools / "tmp"),
        "ANSIBLE_REMOTE_TMP": "/tmp/.ansible-bench", "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_SSH_KNOWN_HOSTS": str(known_hosts)}


def pyinfra_argv(bin_dir: Path, tools: Path, op: str, forks: int, src: Path) -> list[str]:
    what = ["fact", "server.LinuxDistribution"] if op == "telemetry" else [
        "--data", f"src={src}", "--data", f"tag={forks}.onnx", str(tools / "put.py")]
    return [str(bin_dir / "pyinfra"), "-y", "--parallel", str(forks),
            str(tools / "inventory.py"), *what]


# --- the Fleet page and GET /api/devices at this size --------------------------------------


def page_times(settings: Settings, repeats: int) -> dict[str, tuple[float, float]]:
    """(p50, p95) ms of each read through the real app in-process (FastAPI TestClient: routing,
    auth, DB, rendering; no network)."""
    from fastapi.testclient import TestClient

    from web.app import create_app

    paths = {"Fleet page 1": "/", "Fleet page 5": "/?page=5",
             "Fleet page, pattern": "/?pattern=ssh&page=2",
             "Fleet p5 by temp": "/?sort=temp&order=desc&page=5",
             "Fleet p5 by throttle": "/?sort=throttle&page=5",
             "Fleet pattern by status": "/?pattern=ssh&sort=status&page=2",
             "/api/devices by temp": "/api/devices?sort=temp&limit=100&offset=500",
             "/api/devices?limit=100": "/api/devices?limit=100&offset=500",
             "/api/devices (all)": "/api/devices"}
    out = {}
    with TestClient(create_app(settings, run_jobs=False), base_url="http://localhost") as client:
        for label, path in paths.items():
            assert client.get(path).status_code == 200, path
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                answer = client.get(path)
                times.append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200
            times.sort()
            out[label] = (statistics.median(times), times[int(0.95 * (len(times) - 1))])
    return out


# --- the run ---------------------------------------------------------------------------------


def master_cpu_s() -> float:
    """CPU (user + sys) used so far by this machine's live persistent ssh masters
    (``ssh: PATH [mux]``): they detach from the command that started them, so its wait4 does
    not count the encryption they do for later commands."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            cmdline = (proc / "cmdline").read_bytes()
            if not (cmdline.startswith(b"ssh: ") and b"[mux]" in cmdline):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except OSError:
            continue
    return total


def edgefleet_row(op: str, home: Path, forks: int, pattern: str, bundle: str | None,
                  persist: bool = True) -> dict:
    """``persist`` False: EDGEFLEET_SSH_PERSIST_S=0 (every device logged into afresh, nothing
    left open); True: the default, over the connections an earlier row left open, if any."""
    argv = [sys.executable, str(HERE), "--child", op, "--home", str(home), "--fork", str(forks),
            "--pattern", pattern] + (["--bundle", bundle] if bundle else [])
    env = None if persist else dict(os.environ, EDGEFLEET_SSH_PERSIST_S="0")
    masters_before = master_cpu_s()
    result = measured(argv, env)
    masters = max(0.0, master_cpu_s() - masters_before)
    assert result["rc"] == 0, result["err"][-2000:]
    data = json.loads(result["out"].strip().splitlines()[-1])
    # side by side: the whole process like the tools' (start-up, imports, local agents, and
    # the persistent ssh masters' work); "own" = the operation's control-plane CPU alone
    # (RUSAGE_SELF inside the child)
    return data | {"own": data["cpu"], "cpu": result["cpu"] + masters,
                   "wall_process": result["wall"]}


def tool_row(argv: list[str], env: dict[str, str] | None, n: int) -> dict:
    masters_before = master_cpu_s()  # ansible's ControlPersist masters detach too
    result = measured(argv, env)
    masters = max(0.0, master_cpu_s() - masters_before)
    ok = result["rc"] == 0
    return {"wall": result["wall"], "cpu": result["cpu"] + masters, "rss_mb": result["rss_mb"],
            "ok": n if ok else 0, "n": n,
            "failed": [] if ok else [(result["out"] + result["err"])[-600:]]}


def fmt(row: dict, n: int) -> str:
    cpu_ms = row["cpu"] / max(1, n) * 1000
    note = "" if row["ok"] == row["n"] else f"  FAILED {row['n'] - row['ok']}: {row['failed']}"
    own = f"  (own, op only: {row['own'] / max(1, n) * 1000:.1f} ms)" if "own" in row else ""
    return (f"{row['wall']:7.1f} s  {cpu_ms:7.1f} ms CPU/device  {row['rss_mb']:5.0f} MB peak"
            f"  {row['ok']}/{row['n']} ok{own}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="100", help="logical devices, comma-separated")
    parser.add_argument("--forks", default="10,50,200")
    parser.add_argument("--sshd", type=int, default=4)
    parser.add_argument("--ssh-share", type=float, default=0.5)
    parser.add_argument("--tools", default="edgefleet,ansible,pyinfra")
    parser.add_argument("--ops", default="telemetry,push")
    parser.add_argument("--tool-bin", type=Path, default=Path("/tmp/i14-benchtools/bin"))
    parser.add_argument("--install-forks", type=int, default=20,
                        help="set-up only: installing at forks 200 on 2 cores times out")
    parser.add_argument("--pages-only", action="store_true",
                        help="only the Fleet page and /api/devices timings (agents on 2 devices)")
    parser.add_argument("--page-repeats", type=int, default=100)
    parser.add_argument("--child", choices=["telemetry", "push"])
    parser.add_argument("--home", type=Path)
    parser.add_argument("--fork", type=int, default=10)
    parser.add_argument("--pattern", default="all")
    parser.add_argument("--bundle")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.home, args.fork, args.pattern, args.bundle)
        return

    from orchestrator.demo.simulate import create_simulated_device
    from tests.fleet.sshd import SshdHost, generate_user_key

    sizes = [int(x) for x in args.devices.split(",")]
    levels = [int(x) for x in args.forks.split(",")]
    tools, ops = args.tools.split(","), args.ops.split(",")
    base = Path(tempfile.mkdtemp(prefix="fleet-scale-"))
    key = generate_user_key(base / "key")
    hosts = [SshdHost(f"sshd{i}", base / "hosts", key) for i in range(args.sshd)]
    sims = [create_simulated_device(base / f"sim{i}") for i in range(4)]
    print(f"# {os.cpu_count()} CPUs, {args.sshd} sshd processes, devices {sizes}, "
          f"forks {levels}, ssh share {args.ssh_share}")
    try:
        for n in sizes:
            run_size(base / f"n{n}", n, args, hosts, sims, levels, tools, ops)
    finally:
        for host in hosts:
            host.stop()
        shutil.rmtree(base, ignore_errors=True)


def run_size(base: Path, n: int, args: argparse.Namespace, hosts: list[Any], sims: list[Any],
             levels: list[int], tools: list[str], ops: list[str]) -> None:
    settings, ssh_devices, install_s = build_fleet(base, n, args.ssh_share, hosts, sims,
                                                   args.install_forks, args.pages_only)
    n_ssh = len(ssh_devices)
    print(f"\n## {n} logical devices ({n_ssh} over SSH on {len(hosts)} sshd, "
          f"{n - n_ssh} local); agent install {install_s:.1f} s at forks {args.install_forks}")
    for label, (p50, p95) in page_times(settings, args.page_repeats).items():
        print(f"  {label:24} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  (goal p95 < 150 ms)")
    if args.pages_only:
        return
    known_hosts = base / "known_hosts"
    known_hosts.write_text("".join(h.known_hosts_line + "\n" for h in hosts))
    tool_dir = tool_files(base, ssh_devices, known_hosts)
    (tool_dir / "tmp").mkdir(exist_ok=True)
    bundles = bundles_for(settings, base, levels) if "push" in ops else {}
    for op in ops:
        for forks in levels:
            bundle = bundles.get(forks)
            print(f"{op:9} forks {forks:3}")
            row = edgefleet_row(op, settings.home, forks, "all", bundle)
            print(f"  edgefleet, all {n:5} devices : {fmt(row, n)}")
            if n_ssh == 0 or tools == ["edgefleet"]:
                continue
            if op == "push":  # a fresh bundle for the SSH-only row, so it sends every byte
                bundle = bundles_for(settings, base / "ssh", [forks], "-ssh")[forks]
            # cold: every device logged into afresh, as the other tools do; warm: over the
            # connections the "all" row just left open (transport.sshpersist), as a server's
            # next minute's poll or a push after a bench
            rows = {"edgefleet": edgefleet_row(op, settings.home, forks, "ssh", bundle, False)}
            if op == "push":  # another fresh bundle: the warm push sends every byte too
                warm_bundle = bundles_for(settings, base / "ssh-warm", [forks], "-warm")[forks]
            rows["edgefleet warm"] = edgefleet_row(
                op, settings.home, forks, "ssh", warm_bundle if op == "push" else bundle)
            src = base / f"model-{forks}" / "model.onnx"
            if "ansible" in tools:
                rows["ansible"] = tool_row(ansible_argv(args.tool_bin, tool_dir, op, forks, src),
                                           ansible_env(tool_dir, known_hosts), n_ssh)
            if "pyinfra" in tools:
                rows["pyinfra"] = tool_row(pyinfra_argv(args.tool_bin, tool_dir, op, forks, src),
                                           None, n_ssh)
            for name, row in rows.items():
                print(f"  {name:14}, ssh {n_ssh:5} devices : {fmt(row, n_ssh)}")
            for ours in ("edgefleet", "edgefleet warm"):
                ratios = ", ".join(f"{name} {row['wall'] / rows[ours]['wall']:.2f}x"
                                   for name, row in rows.items() if not name.startswith("edge"))
                if ratios:
                    print(f"  wall time relative to {ours}'s: {ratios}")
    files = [settings.home / f"edgefleet.db{suffix}" for suffix in ("", "-wal")]
    size = sum(f.stat().st_size for f in files if f.exists())
    print(f"DB size after the runs (with its WAL): {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
