"""A real single-node Apache Kafka broker in KRaft mode, for local runs and tests.

The jars come from Maven Central through ``docker/kafka/pom.xml``; ``install``
copies them into a folder once, and :class:`LocalBroker` formats a data folder,
starts ``kafka.Kafka`` on 127.0.0.1, waits until it answers, and stops it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POM = PROJECT_ROOT / "docker" / "kafka" / "pom.xml"
DEFAULT_LIB_DIR = PROJECT_ROOT / ".kafka" / "lib"

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dir}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
log.cleaner.backoff.ms=1000
"""

LOG4J_PROPERTIES = """\
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
"""


class BrokerError(RuntimeError):
    pass


def install(lib_dir: Path = DEFAULT_LIB_DIR, *, quiet: bool = True) -> Path:
    """Resolve the broker jars from Maven Central into ``lib_dir`` (idempotent)."""
    if _has_jars(lib_dir):
        return lib_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not on PATH; it is needed once to fetch the Kafka jars")
    lib_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn,
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={lib_dir}",
    ]
    if quiet:
        cmd.insert(1, "-q")
    subprocess.run(cmd, check=True)
    if not _has_jars(lib_dir):
        raise BrokerError(f"maven finished but no Kafka jars are in {lib_dir}")
    return lib_dir


def _has_jars(lib_dir: Path) -> bool:
    return any(lib_dir.glob("kafka_2.13-*.jar"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class BrokerConfig:
    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    host: str = "127.0.0.1"
    lib_dir: Path = DEFAULT_LIB_DIR
    heap: str = "512m"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


class LocalBroker:
    """Start/stop a KRaft broker whose state lives in ``config.data_dir``.

    The broker runs as its own process group, so it survives the command that
    started it (``streambed kafka up``) and is found again by its pid file.
    """

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.data_dir = config.data_dir.resolve()
        self.pid_file = self.data_dir / "broker.pid"
        self.log_file = self.data_dir / "broker.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None and port_open(self.config.host, self.config.port)

    def start(self, timeout: float = 60.0) -> None:
        cfg = self.config
        if self.pid() is not None:
            self.wait_ready(timeout)
            return
        if port_open(cfg.host, cfg.port):
            raise BrokerError(f"port {cfg.port} is already in use (another broker?)")
        if not _has_jars(cfg.lib_dir):
            raise BrokerError(f"no Kafka jars in {cfg.lib_dir}; run `streambed kafka install`")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(
            SERVER_PROPERTIES.format(
                host=cfg.host,
                port=cfg.port,
                controller_port=cfg.controller_port,
                log_dir=self.data_dir / "logs",
            )
        )
        log4j = self.data_dir / "log4j.properties"
        log4j.write_text(LOG4J_PROPERTIES)
        java = self._java()
        classpath = f"{cfg.lib_dir.resolve()}/*"
        if not (self.data_dir / "logs" / "meta.properties").exists():
            formatted = subprocess.run(
                [java, "-cp", classpath, "kafka.tools.StorageTool", "format",
                 "-t", cluster_id(), "-c", str(props)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            if formatted.returncode != 0:
                out = formatted.stdout.decode(errors="replace").strip()
                raise BrokerError(f"formatting {self.data_dir} failed: {out[-2000:]}")
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                [java, f"-Xmx{cfg.heap}", f"-Xms{cfg.heap}", "-XX:+UseG1GC",
                 f"-Dlog4j.configuration=file:{log4j}", "-Djava.awt.headless=true",
                 "-cp", classpath, "kafka.Kafka", str(props)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self.pid_file.write_text(str(proc.pid))
        try:
            self.wait_ready(timeout, proc)
        except BrokerError:
            self.stop()
            raise

    def wait_ready(self, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        from kafka import KafkaAdminClient  # edge import: only the launcher needs a client

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise BrokerError(f"broker exited with {proc.returncode}; see {self.log_file}")
            if port_open(self.config.host, self.config.port):
                try:
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.config.bootstrap, request_timeout_ms=3000
                    )
                    try:
                        admin.list_topics()
                        return
                    finally:
                        admin.close()
                except Exception as err:  # noqa: BLE001 - any client error means "not yet"
                    last = err
            time.sleep(0.3)
        raise BrokerError(
            f"broker did not answer within {timeout:.0f}s ({last}); see {self.log_file}"
        )

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM the broker (controlled shutdown), SIGKILL after ``timeout``. True if it ran."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _java() -> str:
        java_home = os.environ.get("JAVA_HOME")
        java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
        if not java:
            raise BrokerError("java is not on PATH (Java 17 runs the Kafka broker)")
        return java


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cluster_id() -> str:
    """A Kafka cluster id: url-safe base64 of 16 random bytes, as `random-uuid` prints.

    Like Kafka's ``Uuid.randomUuid`` it never starts with '-': the storage tool's
    argument parser would read such an id as an option (a 1-in-64 failure, seen here).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text
