"""The sandbox every grading kernel runs in: bubblewrap, resource limits and an unprivileged user.

A student's notebook is arbitrary code. Its kernel is started through this module's launcher
(``python -m autograder.sandbox POLICY.json CONNECTION_FILE``), which execs, in this order:

* ``prlimit``: address space, CPU seconds, processes, file size and open files (``SandboxPolicy``);
* ``bwrap`` (bubblewrap): no network, a read-only view of the system, a private ``/tmp`` and home, and
  the course repo, the grading output, the submissions and the instructor's course folders replaced by
  empty directories; only the package the labs import (``shared/``) and the Python environment stay
  visible, read-only;
* ``setpriv`` (only when grading as root, inside the sandbox): an unprivileged uid of its own per
  worker, because the kernel ignores the process limit for root;
* ``python -m ipykernel_launcher``: the kernel, talking to the grader over Unix sockets (``ipc``
  transport), which are the only way in or out.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Kernels of a root grader run as SANDBOX_UID_BASE + (worker pid mod SANDBOX_UID_RANGE): an unprivileged uid
# per worker, so that one kernel's fork bomb cannot use up the process limit of another worker's kernel.
SANDBOX_UID_BASE = 61000
SANDBOX_UID_RANGE = 4000


class SandboxUnavailable(Exception):
    """No working sandbox on this machine; the message says why and how to fix it."""


@dataclass(frozen=True)
class SandboxPolicy:
    """What one grading kernel may see and use."""

    scratch: str  # the kernel's private, writable working directory (its cwd and $HOME)
    runtime: str  # where the kernel's connection file and Unix sockets live (writable)
    visible: tuple[str, ...]  # paths to show read-only even inside a hidden path (the venv, shared/)
    hidden: tuple[str, ...]  # paths replaced by an empty directory (repo, outputs, submissions, gradebooks)
    env: dict[str, str] = field(default_factory=dict)  # the kernel's whole environment
    memory_mb: int = 8192  # address space; 0 = unlimited (needed on CUDA, whose driver maps huge ranges)
    cpu_seconds: int = 3600
    processes: int = 512  # threads count too (torch and ipykernel start dozens)
    file_size_mb: int = 256
    open_files: int = 1024
    network: bool = False
    gpu: bool = False  # expose /dev/nvidia* (grading on CUDA)
    uid: int = field(default_factory=lambda: sandbox_uid())  # the kernel's uid when the grader is root

    def save(self, path: Path) -> None:
        """Write the policy as JSON for the launcher."""
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> SandboxPolicy:
        """Read a policy written by ``save``."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{**data, "visible": tuple(data["visible"]), "hidden": tuple(data["hidden"])})


def running_as_root() -> bool:
    """Whether this process is root (then kernels drop to ``sandbox_uid()``)."""
    return os.geteuid() == 0


def sandbox_uid() -> int:
    """The uid this worker's kernels run as when grading as root."""
    return SANDBOX_UID_BASE + os.getpid() % SANDBOX_UID_RANGE


def check_sandbox() -> None:
    """Raise ``SandboxUnavailable`` unless bubblewrap can start a network-less, unprivileged sandbox here."""
    missing = [tool for tool in ("bwrap", "prlimit", "setpriv") if shutil.which(tool) is None]
    if missing:
        raise SandboxUnavailable(
            f"{', '.join(missing)} not found. Install them (Debian/Ubuntu: `apt-get install -y bubblewrap "
            "util-linux`; `make env` does it when run as root), or grade with --unsafe to run student code "
            "without a sandbox (only for code you trust)."
        )
    probe = ["bwrap", "--ro-bind", "/", "/", *_namespaces(network=False), *_drop_privileges(sandbox_uid()), "true"]
    result = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise SandboxUnavailable(
            f"bubblewrap cannot create a sandbox here ({result.stderr.strip() or result.returncode}). It needs "
            "unprivileged user namespaces (`sysctl kernel.unprivileged_userns_clone=1`; in Docker run with "
            "--security-opt seccomp=unconfined), or grade with --unsafe for trusted code only."
        )


def _drop_privileges(uid: int) -> list[str]:
    """``setpriv`` arguments that switch root to ``uid``; nothing for other users."""
    if not running_as_root():
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def _namespaces(network: bool) -> list[str]:
    """bwrap's namespace flags: all of them (a user namespace only when not root: root needs none to mount)."""
    flags = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    flags += [] if network else ["--unshare-net"]
    return flags + ([] if running_as_root() else ["--unshare-user"])


def _own_processes() -> int:
    """How many processes and threads this user already runs (RLIMIT_NPROC counts them all)."""
    uid = os.getuid()
    return sum(1 for task in Path("/proc").glob("[0-9]*/task/[0-9]*") if _owner(task) == uid)


def _owner(path: Path) -> int:
    """The uid owning ``path``, or -1 if it vanished."""
    try:
        return path.stat().st_uid
    except OSError:
        return -1


def _limits(policy: SandboxPolicy) -> list[str]:
    """``prlimit`` arguments for the policy's resource limits."""
    mib = 1024 * 1024
    processes = policy.processes + (0 if running_as_root() else _own_processes())
    args = ["prlimit", f"--cpu={policy.cpu_seconds}", f"--nproc={processes}", f"--nofile={policy.open_files}"]
    args.append(f"--fsize={policy.file_size_mb * mib}")
    if policy.memory_mb:
        args.append(f"--as={policy.memory_mb * mib}")
    return [*args, "--"]


def bwrap_args(policy: SandboxPolicy) -> list[str]:
    """The bubblewrap command line (without the program to run) for ``policy``."""
    args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp"]
    if policy.gpu:
        args += [arg for device in sorted(glob.glob("/dev/nvidia*")) for arg in ("--dev-bind", device, device)]
    for path in policy.hidden:
        if Path(path).exists():
            args += ["--tmpfs", path]
    for path in policy.visible:
        args += ["--ro-bind", path, path]
    args += ["--bind", policy.runtime, policy.runtime, "--bind", policy.scratch, policy.scratch]
    args += [*_namespaces(policy.network), "--die-with-parent", "--new-session", "--chdir", policy.scratch]
    args.append("--clearenv")
    for key, value in {**policy.env, "HOME": policy.scratch, "TMPDIR": "/tmp"}.items():
        args += ["--setenv", key, value]
    return args


def kernel_command(policy: SandboxPolicy, connection_file: str) -> list[str]:
    """The full command that starts a sandboxed IPython kernel on ``connection_file``."""
    kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", connection_file]
    return [*_limits(policy), *bwrap_args(policy), *_drop_privileges(policy.uid), *kernel]


def prepare_dirs(policy: SandboxPolicy) -> None:
    """Create the scratch and runtime directories, owned by the kernel's user, and let that user reach them
    (traverse, not list) through their parent, the private course directory."""
    for path in (policy.scratch, policy.runtime):
        Path(path).mkdir(parents=True, exist_ok=True)
        if running_as_root():
            os.chown(path, policy.uid, policy.uid)
            Path(path).parent.chmod(0o711)


def launch(policy_file: str, connection_file: str) -> None:
    """Kernelspec entry point: hand the kernel its connection file and exec it inside the sandbox.

    jupyter_client writes the connection file readable by its owner only; when grading as root the
    kernel runs as another user, so it gets its own copy.
    """
    policy = SandboxPolicy.load(Path(policy_file))
    private_copy = Path(policy.runtime) / f"sandboxed-{Path(connection_file).name}"
    shutil.copyfile(connection_file, private_copy)
    if running_as_root():
        os.chown(private_copy, policy.uid, policy.uid)
    command = kernel_command(policy, str(private_copy))
    # The kernel's own stdout/stderr (banners, and anything a student writes to fd 1 or 2 directly) go to a
    # log beside its sockets, size-capped by the file-size limit, not to the grader's terminal.
    log = os.open(Path(policy.runtime) / "kernel.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.execvp(command[0], command)


if __name__ == "__main__":
    launch(*sys.argv[1:3])
