"""A private containerd for end-to-end tests, driven with ctr.

Everything of a PrivateContainerd lives in its own short temp dir under /tmp
(root, state, sockets, runc root, fifos); logs go to a caller-chosen dir. It
never touches /var/lib/containerd or /run/containerd/containerd.sock.
containerd 1.6 hard-codes one outside path, the shim sockets in
/run/containerd/s/; stop() removes the ones of our containers, kills what the
containers left (tasks, shims, runc state), unmounts and removes the temp dir,
and removes the cgroups that ``ctr run`` created for our namespace.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from support.mounts import deepest_first

# Plugins a snapshotter test does not need; CRI would also want CNI etc.
# The name containerd's config gives the proxy plugin, i.e. the snapshotter name.
PROXY_PLUGIN_NAME = "obdsnap"
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
)
SHIM_SOCKET_DIR = Path("/run/containerd/s")
# Created by containerd/shims when missing; removed again only if we did.
OUTSIDE_DIRS = (SHIM_SOCKET_DIR, Path("/run/containerd"))
CGROUP_ROOT = Path("/sys/fs/cgroup")

_namespace_counter = itertools.count(1)


class CommandError(RuntimeError):
    def __init__(self, args: Sequence[str], message: str) -> None:
        super().__init__(f"{' '.join(args)}: {message}")
        self.command = list(args)


def run_command(
    args: Sequence[str], timeout: float, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Runs args with captured text output; raises CommandError on failure if check."""
    try:
        result = subprocess.run(
            list(args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as error:
        raise CommandError(args, f"timed out after {timeout:.0f}s") from error
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise CommandError(args, f"exit status {result.returncode}: {output}")
    return result


@dataclass(frozen=True)
class SnapshotRow:
    key: str
    parent: str
    kind: str


def parse_snapshot_list(output: str) -> list[SnapshotRow]:
    """Parses `ctr snapshot ls` (columns KEY PARENT KIND; PARENT may be empty)."""
    rows = []
    for line in output.splitlines():
        fields = line.split()
        if not fields or fields[0] == "KEY":
            continue
        if len(fields) == 2:
            rows.append(SnapshotRow(fields[0], "", fields[1]))
        else:
            rows.append(SnapshotRow(fields[0], fields[1], fields[2]))
    return rows


def list_snapshots_direct(
    proxy_address: Path, snapshotter: str, ctr: str = "ctr", timeout: float = 30.0
) -> list[SnapshotRow]:
    """Lists a proxy snapshotter's own snapshots straight from its socket.

    ctr speaks the snapshots service itself, so pointing --address at the
    proxy bypasses containerd; keys are then containerd's backend keys
    "<namespace>/<n>/<key>".
    """
    args = [ctr, "--address", str(proxy_address), "snapshot", "--snapshotter", snapshotter, "ls"]
    result = run_command(args, timeout, check=False)
    if result.returncode != 0:
        # An empty bolt-backed store (containerd's own snapshotters) says so.
        if "bucket does not exist" in result.stderr:
            return []
        raise CommandError(args, f"exit status {result.returncode}: {result.stderr.strip()}")
    return parse_snapshot_list(result.stdout)


def snapshot_info_direct(
    proxy_address: Path, snapshotter: str, key: str, ctr: str = "ctr", timeout: float = 30.0
) -> dict[str, Any]:
    """A proxy snapshotter's Stat of its own key (``ctr snapshot info``: Kind, Name, Labels...)."""
    args = [ctr, "--address", str(proxy_address), "snapshot", "--snapshotter", snapshotter]
    info = json.loads(run_command([*args, "info", key], timeout).stdout)
    assert isinstance(info, dict), info
    return info


def mount_points_under(directory: Path) -> list[Path]:
    """Mount points at or below directory, deepest first."""
    return [Path(point) for point in deepest_first(Path(os.path.realpath(directory)))]


def unmount_all_under(directory: Path) -> list[Path]:
    """Unmounts everything below directory; returns what could not be unmounted."""
    for mount_point in mount_points_under(directory):
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
    return mount_points_under(directory)


class PrivateContainerd:
    """A containerd with its own root, state, sockets and config.

    proxy_plugins maps snapshotter names to proxy snapshotter sockets
    ([proxy_plugins.NAME] type = "snapshot"). Use as a context manager, or
    call start() and always stop().
    """

    def __init__(
        self,
        log_dir: Path,
        proxy_plugins: Mapping[str, Path] | None = None,
        *,
        namespace: str | None = None,
        extra_config: str = "",
        disabled_plugins: Sequence[str] = DISABLED_PLUGINS,
        command_timeout: float = 120.0,
        containerd_bin: str = "containerd",
        ctr_bin: str = "ctr",
        runc_bin: str = "runc",
    ) -> None:
        self.log_dir = log_dir
        self.proxy_plugins = dict(proxy_plugins or {})
        # Unique, because cgroups (/<namespace>/<id>) are shared with the host.
        self.namespace = namespace or f"obdsnap-e2e-{os.getpid()}-{next(_namespace_counter)}"
        self.extra_config = extra_config
        self.disabled_plugins = tuple(disabled_plugins)
        self.command_timeout = command_timeout
        self.containerd_bin = containerd_bin
        self.ctr_bin = ctr_bin
        self.runc_bin = runc_bin
        self.log_path = log_dir / "containerd.log"
        self.workdir = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/tmp"))
        self.workdir.chmod(0o711)
        self.address = self.workdir / "containerd.sock"
        self.config_path = self.workdir / "config.toml"
        self.runc_root = self.workdir / "runc"
        self.fifo_dir = self.workdir / "fifo"
        self._process: subprocess.Popen[bytes] | None = None
        self._containers: set[tuple[str, str]] = set()  # (namespace, id)
        self._ids_lock = threading.Lock()
        self._outside_dirs_before = {path for path in OUTSIDE_DIRS if path.exists()}
        self._stopped = False

    # ------------------------------------------------------------ lifecycle

    def config_toml(self) -> str:
        disabled = ", ".join(f'"{plugin}"' for plugin in self.disabled_plugins)
        lines = [
            "version = 2",
            f'root = "{self.workdir / "root"}"',
            f'state = "{self.workdir / "state"}"',
            f"disabled_plugins = [{disabled}]",
            "",
            "[grpc]",
            f'  address = "{self.address}"',
            "[ttrpc]",
            f'  address = "{self.address}.ttrpc"',
            "[debug]",
            '  address = ""',
            '  level = "info"',
            "[metrics]",
            '  address = ""',
        ]
        for name, socket_path in self.proxy_plugins.items():
            lines += [
                "",
                f"[proxy_plugins.{name}]",
                '  type = "snapshot"',
                f'  address = "{socket_path}"',
            ]
        return "\n".join(lines) + "\n" + self.extra_config

    def start(self, timeout: float = 30.0) -> None:
        for directory in (self.runc_root, self.fifo_dir, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_toml())
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.containerd_bin, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                raise RuntimeError(f"containerd exited during start-up\n{self.log_tail()}")
            probe = self.ctr("version", timeout=5, check=False, namespaced=False)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd not ready within {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @contextlib.contextmanager
    def running(self) -> Iterator[PrivateContainerd]:
        """Started for the block; stopped after it, leftovers reported as warnings."""
        try:
            self.start()
            yield self
        finally:
            for note in self.stop():
                warnings.warn(f"containerd cleanup: {note}", stacklevel=1)

    def stop(self) -> list[str]:
        """Stops containerd and removes all it left; returns notes on leftovers."""
        if self._stopped:
            return []
        self._stopped = True
        notes: list[str] = []
        if self.alive:
            self._remove_all_containers(notes)
            self._terminate_containerd(notes)
        self._delete_leftover_runc_containers(notes)
        self._kill_leftover_shims(notes)
        self._remove_shim_sockets()
        still_mounted = unmount_all_under(self.workdir)
        self._remove_cgroups()
        for directory in OUTSIDE_DIRS:
            if directory not in self._outside_dirs_before:
                with contextlib.suppress(OSError):  # absent, or in use by someone else
                    directory.rmdir()
        if still_mounted:
            notes.append(f"kept {self.workdir}: still mounted: {still_mounted}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return notes

    def __enter__(self) -> PrivateContainerd:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _remove_all_containers(self, notes: list[str]) -> None:
        namespaces = self.ctr("namespaces", "ls", "-q", check=False, namespaced=False)
        for namespace in namespaces.stdout.split() or [self.namespace]:
            scope = ["-n", namespace]
            containers = self.ctr(*scope, "containers", "ls", "-q", check=False, namespaced=False)
            for container_id in containers.stdout.split():
                self._remember(container_id, namespace)
                self.ctr(
                    *scope, "tasks", "delete", "-f", container_id, check=False, namespaced=False
                )
                removed = self.ctr(
                    *scope, "containers", "rm", container_id, check=False, namespaced=False
                )
                if removed.returncode != 0:
                    notes.append(f"container {namespace}/{container_id}: {removed.stderr.strip()}")

    def _terminate_containerd(self, notes: list[str]) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            notes.append(f"containerd {self._process.pid} ignored SIGTERM; killed")
            self._process.kill()
            self._process.wait()

    def _delete_leftover_runc_containers(self, notes: list[str]) -> None:
        if shutil.which(self.runc_bin) is None or not self.runc_root.is_dir():
            return
        # The runc shim keeps its state in <runc root>/<namespace>.
        for state_dir in self.runc_root.iterdir():
            runc = [self.runc_bin, "--root", str(state_dir)]
            listed = run_command([*runc, "list", "-q"], timeout=30, check=False)
            for container_id in listed.stdout.split():
                notes.append(f"deleted leftover runc container {container_id}")
                run_command([*runc, "kill", container_id, "KILL"], timeout=30, check=False)
                run_command([*runc, "delete", "-f", container_id], timeout=30, check=False)

    def _kill_leftover_shims(self, notes: list[str]) -> None:
        """Shims outlive containerd; ours carry our unique socket path."""
        address = os.fsencode(self.address)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"containerd-shim" in argv[0] and address in argv:
                notes.append(f"killed leftover shim {proc.name}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)

    def _remove_shim_sockets(self) -> None:
        # runtime/v2/shim.SocketAddress: sha256("<address>/<namespace>/<id>").
        for namespace, container_id in self._containers:
            key = f"{self.address}/{namespace}/{container_id}".encode()
            (SHIM_SOCKET_DIR / hashlib.sha256(key).hexdigest()).unlink(missing_ok=True)

    def _remove_cgroups(self) -> None:
        # ctr run puts containers into /<namespace>/<id> of every hierarchy.
        for group in [*CGROUP_ROOT.glob(f"*/{self.namespace}"), CGROUP_ROOT / self.namespace]:
            if not group.is_dir():
                continue
            for directory, _, _ in os.walk(group, topdown=False):
                with contextlib.suppress(OSError):  # still has tasks: nothing to do here
                    os.rmdir(directory)

    def log_tail(self, max_lines: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-max_lines:]
        except OSError as error:
            return f"(no containerd log: {error})"
        return f"--- {self.log_path} (last {len(lines)} lines) ---\n" + "\n".join(lines)

    # ------------------------------------------------------------ ctr

    def ctr(
        self,
        *args: str,
        timeout: float | None = None,
        check: bool = True,
        namespaced: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        command = [self.ctr_bin, "--address", str(self.address)]
        if namespaced:
            command += ["--namespace", self.namespace]
        return run_command([*command, *args], timeout or self.command_timeout, check)

    def plugin_status(self, plugin_type: str, plugin_id: str) -> str | None:
        """Status column of `ctr plugins ls` (e.g. "ok"), None if not listed."""
        for line in self.ctr("plugins", "ls", namespaced=False).stdout.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[0] == plugin_type and fields[1] == plugin_id:
                return fields[-1]
        return None

    def plugin_exports(self, plugin_type: str, plugin_id: str) -> dict[str, str]:
        """What a plugin exports, from `ctr plugins ls --detailed`; {} if none or not listed."""
        output = self.ctr("plugins", "ls", "--detailed", namespaced=False).stdout
        blocks: list[list[str]] = []
        for line in output.splitlines():
            if line.startswith("Type:"):
                blocks.append([])
            if blocks:
                blocks[-1].append(line)
        for block in blocks:
            headings = {
                name: value.strip()
                for name, _, value in (line.partition(":") for line in block if line[:1].isalpha())
            }
            if (headings.get("Type"), headings.get("ID")) != (plugin_type, plugin_id):
                continue
            exports: dict[str, str] = {}
            in_exports = False
            for line in block:
                if line[:1].isalpha():
                    in_exports = line.startswith("Exports:")
                elif in_exports and line.strip():
                    name, _, value = line.strip().partition(" ")
                    exports[name] = value.strip()
            return exports
        return {}

    def list_snapshots(self, snapshotter: str) -> list[SnapshotRow]:
        """containerd's view (its metadata) of the namespace's snapshots."""
        output = self.ctr("snapshot", "--snapshotter", snapshotter, "ls").stdout
        return parse_snapshot_list(output)

    def import_image(self, archive: Path, snapshotter: str) -> None:
        self.ctr("image", "import", "--snapshotter", snapshotter, str(archive))

    def pull_unpacking(
        self,
        unpack_pull: Path,
        reference: str,
        snapshotter: str,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Pull with containerd's own unpacker (the ``unpackpull`` binary); the manifest digest.

        ``labels`` are added to every layer's snapshot labels.
        """
        flags = [f"-label={name}={value}" for name, value in (labels or {}).items()]
        command = [str(unpack_pull), *flags, str(self.address), self.namespace, snapshotter]
        pulled = run_command([*command, reference], timeout=self.command_timeout)
        name, digest = pulled.stdout.split()
        assert name == reference, pulled.stdout
        return digest

    def remove_image(self, reference: str, sync: bool = True) -> None:
        """With sync, containerd's garbage collection runs before this returns."""
        self.ctr("image", "rm", *(["--sync"] if sync else []), reference)

    def run_container(
        self,
        image: str,
        container_id: str,
        command: Sequence[str],
        *,
        snapshotter: str,
        detach: bool = False,
        log_file: Path | None = None,
        snapshotter_labels: Mapping[str, str] | None = None,
        run_options: Sequence[str] = (),
        timeout: float | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """`ctr run` with runc state and fifos kept in our temp dir.

        Without detach, ctr waits for the process and deletes the task; the
        container stays until remove_container(). snapshotter_labels go on the
        container's snapshot (containerd passes the ``containerd.io/snapshot/``
        ones on to a proxy snapshotter). run_options are further ``ctr run``
        options (--mount, --privileged, ...).
        """
        self._remember(container_id)
        options = [
            "--snapshotter", snapshotter,
            "--runc-root", str(self.runc_root),
            "--fifo-dir", str(self.fifo_dir),
        ]  # fmt: skip
        if detach:
            options.append("--detach")
        if log_file is not None:
            options += ["--log-uri", f"file://{log_file}"]
        for name, value in (snapshotter_labels or {}).items():
            options += ["--snapshotter-label", f"{name}={value}"]
        options += run_options
        return self.ctr(
            "run", *options, image, container_id, *command, timeout=timeout, check=check
        )

    def remove_container(self, container_id: str) -> None:
        """Kills and deletes the container's task, if any, then the container."""
        self.ctr("tasks", "delete", "--force", container_id, check=False)
        self.ctr("containers", "rm", container_id)

    def content_digests(self) -> set[str]:
        """Digests of the blobs in containerd's content store (``ctr content ls -q``)."""
        return set(self.ctr("content", "ls", "-q").stdout.split())

    def task_statuses(self) -> dict[str, str]:
        """Task id -> status (RUNNING, STOPPED, ...) from `ctr task ls`."""
        statuses = {}
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3:
                statuses[fields[0]] = fields[2]
        return statuses

    def _remember(self, container_id: str, namespace: str | None = None) -> None:
        with self._ids_lock:
            self._containers.add((namespace or self.namespace, container_id))


def parse_facts(output: str) -> dict[str, str]:
    """``name=value`` lines a container printed, as a dict."""
    facts = {}
    for line in output.splitlines():
        name, separator, value = line.partition("=")
        if separator:
            facts[name] = value
    return facts
