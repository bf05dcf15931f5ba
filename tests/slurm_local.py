"""A private one-node Slurm cluster on localhost, for tests of job arrays.

Everything lives in one fresh folder (config, key, sockets, state, logs) on free ports, and the
daemons run in the foreground as children of this process, so stopping ends exactly the processes
started here (by their handles) and never touches a Slurm or MUNGE already on the machine.
Needs Debian's ``slurm-wlm`` and ``munge`` and root (as on CI).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


def slurm_available() -> bool:
    """True when the daemons and client tools are installed and we are root."""
    tools = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol")
    return all(shutil.which(t) or Path("/usr/sbin", t).exists() for t in tools) and os.geteuid() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class LocalSlurm:
    """``with LocalSlurm() as cluster: cluster.sbatch(...)`` — start, use, shut down."""

    def __init__(self, cpus: int | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="autoorgan-slurm-"))
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.dir / "slurm.conf"
        self.socket = self.dir / "munge" / "munge.socket"
        self._procs: list[subprocess.Popen[bytes]] = []

    # -- set-up ---------------------------------------------------------------------------

    def _write_munge_files(self) -> None:
        munge = pwd.getpwnam("munge")
        mdir = self.dir / "munge"
        mdir.mkdir(mode=0o755)
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for path in (mdir, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        self.dir.chmod(0o755)

    def _write_slurm_conf(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.dir / sub).mkdir()
        mem = max(256, _available_mb() - 1024)
        self.conf.write_text("\n".join([
            "ClusterName=autoorgantest",
            f"SlurmctldHost={self.host}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={self.socket}",
            "MpiDefault=none", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none", "MailProg=/bin/true",
            "SchedulerType=sched/backfill", "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "ReturnToService=2",
            f"StateSaveLocation={self.dir / 'state'}", f"SlurmdSpoolDir={self.dir / 'spool'}",
            f"SlurmctldPidFile={self.dir / 'slurmctld.pid'}", f"SlurmdPidFile={self.dir / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.dir / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.dir / 'log' / 'slurmd.log'}",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm client commands of this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _spawn(self, args: list[str], log_name: str, user: str | None = None) -> None:
        log = open(self.dir / "log" / log_name, "wb")  # noqa: SIM115 - the daemon keeps it open
        self._procs.append(subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, user=user, group=user,
                                            extra_groups=[] if user else None))
        log.close()

    def start(self, timeout: float = 60) -> None:
        self._write_munge_files()
        self._write_slurm_conf()
        m = self.dir / "munge"
        self._spawn([_tool("munged"), "-F", f"--socket={self.socket}",
                     f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                     f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"], "munged.out", user="munge")
        self._wait(lambda: self.socket.exists() and subprocess.run(
            f"munge -S {self.socket} -n | unmunge -S {self.socket}", shell=True, capture_output=True).returncode == 0,
            timeout, "munged")
        self._spawn([_tool("slurmctld"), "-D", "-f", str(self.conf)], "slurmctld.out")
        self._spawn([_tool("slurmd"), "-D", "-f", str(self.conf)], "slurmd.out")
        self._wait(self._node_idle, timeout, "slurmd to register")

    def _node_idle(self) -> bool:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return r.returncode == 0 and r.stdout.strip().rstrip("*") == "idle"

    def _wait(self, ready: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():  # type: ignore[operator]
                return
            dead = [p for p in self._procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a Slurm/MUNGE daemon exited while waiting for {what}:\n{self.logs()}")
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for path in sorted((self.dir / "log").glob("*")) + [self.dir / "munge" / "munged.log"]:
            if path.is_file():
                parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(parts)

    # -- use ------------------------------------------------------------------------------

    def sbatch(self, *args: str, cwd: Path) -> str:
        """Submit a batch job; its job id."""
        r = subprocess.run(["sbatch", "--parsable", *args], env=self.env, cwd=cwd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"sbatch failed: {r.stderr.strip()}\n{self.logs()}")
        return r.stdout.strip().split(";")[0]

    def states(self, job_id: str) -> list[str]:
        """States of the job's tasks (finished ones stay visible for MinJobAge)."""
        r = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], env=self.env,
                           capture_output=True, text=True)
        return r.stdout.split()

    def wait(self, job_id: str, timeout: float) -> list[str]:
        """Poll until no task of the job is pending or running; the final task states."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.states(job_id)
            if states and not any(s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING") for s in states):
                return states
            time.sleep(0.5)
        raise RuntimeError(f"job {job_id} still not finished after {timeout} s: {self.states(job_id)}\n{self.logs()}")

    # -- tear-down ------------------------------------------------------------------------

    def stop(self) -> None:
        """``scontrol shutdown``, then end whatever of our own daemons is left, by handle."""
        subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True, timeout=30)
        for proc in reversed(self._procs[1:]):  # slurmd, slurmctld: scontrol shutdown ends them
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        # munged (the first process, a direct child running as the munge user) is ended by its handle.
        if self._procs and self._procs[0].poll() is None:
            self._procs[0].terminate()
            self._procs[0].wait(timeout=15)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalSlurm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 2048
