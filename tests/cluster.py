"""A real SLURM 22.05 cluster on this machine, for the cluster tests: Debian's munge, MariaDB,
slurmdbd, slurmctld, and two slurmd nodes, each in its own network and UTS namespace on a private
bridge, all started by hand (there is no systemd) in a temporary folder and stopped by PID.

The nodes see the same file system (a sweep folder, the cache and a SQLite store are shared, as
on a cluster's shared storage) but not the host's 127.0.0.1: a server the jobs must reach
listens on the bridge's address, ``HOST_ADDRESS``. Needs root (namespaces, daemons).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "slurmdbd", "munge", "mariadb-server")
BRIDGE, SUBNET = "tvbr0", "10.213.77"
HOST_ADDRESS = f"{SUBNET}.1"  # the host's end of the bridge: slurmctld, slurmdbd's clients, servers for the jobs
NODES = {"n1": f"{SUBNET}.11", "n2": f"{SUBNET}.12"}
SLURMD_TIMEOUT = 6  # s: a node silent this long is DOWN, and its jobs NODE_FAIL (or requeued)


def available() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    if os.geteuid() != 0:
        return "the SLURM cluster needs root (network namespaces, daemons)"
    missing = [b for b in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch") if not shutil.which(b)]
    if missing:
        return f"no {', '.join(missing)}: apt-get install {' '.join(PACKAGES)}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


def _munge_answers() -> bool:
    encode = subprocess.run(["munge", "-n"], capture_output=True)
    return (
        encode.returncode == 0 and subprocess.run(["unmunge"], input=encode.stdout, capture_output=True).returncode == 0
    )


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run(*cmd: str, **options) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **options)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _wait(what: str, ready, seconds: float = 30, log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    said = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{what} not ready within {seconds} s\n{said}")


def namespace_pids(namespace: str) -> list[int]:
    """Every process whose network namespace is ``namespace`` (a node's: its slurmd, steps and jobs)."""
    try:
        target = os.stat(f"/run/netns/{namespace}").st_ino
    except FileNotFoundError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "net").st_ino == target:
                    pids.append(int(entry.name))
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                continue
    return pids


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Cluster:
    folder: Path
    env: dict[str, str]  # SLURM_CONF, for sbatch, squeue, sacct, scancel, scontrol
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    def command(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
        return proc

    def crash_node(self, node: str) -> None:
        """A node dies: every process in its namespace killed at once (slurmd, steps, jobs), nothing said."""
        _kill_pids(namespace_pids(f"tv{node}"))
        self.daemons.pop(f"slurmd-{node}", None)

    def start_node(self, node: str) -> None:
        """(Re)start a node's slurmd in its namespace, with its host name."""
        script = f"hostname {node} && exec slurmd -D -N {node} -f {self.folder / 'slurm.conf'}"
        self.daemons[f"slurmd-{node}"] = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/tv{node}", "unshare", "--uts", "sh", "-c", script],
            env=self.env, stdout=open(self.folder / f"slurmd-{node}.out", "a"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def nodes_idle(self) -> bool:
        out = self.command("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(n, "").startswith(("idle", "mix", "alloc")) for n in NODES)


def _network_up() -> None:
    _network_down()
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{HOST_ADDRESS}/24", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    for node, address in NODES.items():
        ns, host_end, node_end = f"tv{node}", f"tv{node}h", f"tv{node}n"
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", node_end)
        _run("ip", "link", "set", node_end, "netns", ns)
        _run("ip", "link", "set", host_end, "master", BRIDGE, "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", node_end)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", node_end, "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")


def _network_down() -> None:
    for node in NODES:
        _kill_pids(namespace_pids(f"tv{node}"))
        subprocess.run(["ip", "netns", "del", f"tv{node}"], capture_output=True)
        subprocess.run(["ip", "link", "del", f"tv{node}h"], capture_output=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def _slurm_conf(folder: Path, ports: dict[str, int]) -> str:
    nodes = "\n".join(f"NodeName={n} NodeAddr={a} CPUs=1 RealMemory=4000 State=UNKNOWN" for n, a in NODES.items())
    return f"""ClusterName=tinyvmaf
SlurmctldHost={socket.gethostname()}({HOST_ADDRESS})
MailProg=/bin/true
SlurmctldPort={ports["slurmctld"]}
SlurmdPort={ports["slurmd"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool/%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd-%n.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdTimeout={SLURMD_TIMEOUT}
SlurmctldTimeout=10
MessageTimeout=5
KillWait=2
InactiveLimit=0
MinJobAge=30
JobRequeue=0
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports["slurmdbd"]}
{nodes}
PartitionName=cpu Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def slurm_cluster() -> Iterator[Cluster]:
    """The whole cluster, up and idle; everything stopped by PID and removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="tinyvmaf-slurm-"))
    folder.chmod(0o755)  # MariaDB runs as mysql
    for sub in ("state", "spool", "mysql", "munge"):
        (folder / sub).mkdir()
    ports = {k: _free_port() for k in ("slurmctld", "slurmd", "slurmdbd", "mysql")}
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    cluster = Cluster(folder, env)
    try:
        _network_up()
        # munge, on its default socket (slurm's clients do not all read AuthInfo): a running munged
        # serves as well as our own, since every daemon and command here uses the same one
        if not _munge_answers():
            MUNGE_SOCKET.parent.mkdir(exist_ok=True)
            shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
            _run("mungekey", "--create", "--keyfile", str(folder / "munge" / "munge.key"))
            shutil.chown(folder / "munge", "munge", "munge")
            shutil.chown(folder / "munge" / "munge.key", "munge", "munge")
            cluster.daemons["munged"] = subprocess.Popen(
                ["munged", "--foreground", f"--key-file={folder / 'munge' / 'munge.key'}",
                 f"--pid-file={folder / 'munge' / 'munged.pid'}", f"--log-file={folder / 'munge' / 'munged.log'}",
                 f"--seed-file={folder / 'munge' / 'munged.seed'}"],
                user="munge", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            _wait("munged", _munge_answers, log=folder / "munge" / "munged.log")
        # MariaDB for slurmdbd, on 127.0.0.1 only, its data folder owned by mysql
        shutil.chown(folder / "mysql", "mysql", "mysql")
        _run(
            "mariadb-install-db",
            f"--datadir={folder / 'mysql'}",
            "--user=mysql",
            "--auth-root-authentication-method=normal",
        )
        mysql_socket = folder / "mysql" / "mysql.sock"
        cluster.daemons["mariadbd"] = subprocess.Popen(
            ["mariadbd", f"--datadir={folder / 'mysql'}", "--user=mysql", "--bind-address=127.0.0.1",
             f"--port={ports['mysql']}", f"--socket={mysql_socket}", f"--pid-file={folder / 'mysql' / 'mariadbd.pid'}",
             "--skip-name-resolve", "--innodb-buffer-pool-size=32M"],
            stdout=open(folder / "mariadbd.log", "w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        _wait("MariaDB", mysql_socket.exists)
        _run("mariadb", f"--socket={mysql_socket}", "-u", "root", "-e",
             "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")  # fmt: skip
        (folder / "slurm.conf").write_text(_slurm_conf(folder, ports))
        dbd = folder / "slurmdbd.conf"
        dbd.write_text(
            f"DbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={ports['slurmdbd']}\nSlurmUser=root\n"
            f"AuthType=auth/munge\nPidFile={folder}/slurmdbd.pid\n"
            f"LogFile={folder}/slurmdbd.log\nStorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
            f"StoragePort={ports['mysql']}\nStorageUser=slurm\nStoragePass=slurm\nStorageLoc=slurm_acct_db\n"
        )
        dbd.chmod(0o600)
        cluster.daemons["slurmdbd"] = subprocess.Popen(
            ["slurmdbd", "-D"], env=env, stdout=open(folder / "slurmdbd.out", "w"), stderr=subprocess.STDOUT
        )
        _wait("slurmdbd", lambda: _listening(ports["slurmdbd"]), log=folder / "slurmdbd.log")
        cluster.command("sacctmgr", "-i", "add", "cluster", "tinyvmaf")
        cluster.daemons["slurmctld"] = subprocess.Popen(
            ["slurmctld", "-D", "-i", "-f", str(folder / "slurm.conf")], env=env,
            stdout=open(folder / "slurmctld.out", "w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        _wait("slurmctld", lambda: cluster.command("sinfo", check=False).returncode == 0, log=folder / "slurmctld.log")
        for node in NODES:
            cluster.start_node(node)
        _wait("both nodes idle", cluster.nodes_idle, 60, log=folder / "slurmctld.log")
        yield cluster
    finally:
        _network_down()  # the nodes: every process in their namespaces
        for name in ("slurmctld", "slurmdbd", "mariadbd", "munged"):
            proc = cluster.daemons.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(folder, ignore_errors=True)
