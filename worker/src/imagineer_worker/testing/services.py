"""Real local services for the tests and ``make demo``: redis-server and celery processes.

Nothing here is a fake: a Debian ``redis-server`` on a free loopback port, and ``celery worker`` /
``celery beat`` processes (prefork, so time limits and signals are real) started exactly as the
images start them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

APP = "imagineer_worker.celery_app"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA in ``directory``: (certificate, key)."""
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(cert))
    return cert, key


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate it signs for 127.0.0.1/localhost, and an unrelated CA.

    Keys: ``cert``, ``key`` (the server's), ``ca``, ``other_ca`` (verifies nothing here).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = make_ca(directory, "test-ca")
    other_ca, _ = make_ca(directory, "other-ca")
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return {"cert": cert, "key": key, "ca": ca, "other_ca": other_ca}


@dataclass
class RedisServer:
    """``redis-server`` on 127.0.0.1; with ``tls`` (cert, key, ca) it listens on TLS only."""

    workdir: Path
    tls: tuple[Path, Path, Path] | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # appended last, so they override the defaults above (e.g. ["--appendonly", "yes"])
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: `make setup` installs Debian's redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir), "--maxmemory-policy", "noeviction", "--protected-mode", "yes"]
        if self.tls:
            cert, key, ca = self.tls
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        args += self.extra_args
        log = open(self.workdir / "redis.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._listening, 10, f"redis-server on port {self.port}")
        return self

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {(self.workdir / 'redis.log').read_text()[-2000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def client(self) -> redis.Redis:
        assert not self.tls, "use a TLS client for a TLS server"
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class CeleryProcess:
    """One ``celery worker`` (or ``beat``) process with its own environment and log file."""

    name: str
    env: dict[str, str]
    logdir: Path
    queues: str = "default"
    concurrency: int = 1
    beat: bool = False
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def health_dir(self) -> Path:
        return Path(self.env["IMAGINEER_HEALTH_DIR"])

    @property
    def log_path(self) -> Path:
        return self.logdir / f"{self.name}.log"

    def command(self) -> list[str]:
        base = [sys.executable, "-m", "celery", "-A", APP]
        if self.beat:
            return [*base, "beat", "--loglevel=INFO", *self.extra_args]
        # the chart's flags too (imagineer.workerArgs): no mingle, no gossip
        return [*base, "worker", "--pool=prefork", "--loglevel=INFO", "-Q", self.queues,
                f"--concurrency={self.concurrency}", f"--hostname={self.name}@%h", "--without-mingle",
                "--without-gossip", *self.extra_args]

    def start(self, wait: bool = True, timeout: float = 60) -> CeleryProcess:
        self.logdir.mkdir(parents=True, exist_ok=True)
        # each process gets its own health dir, as each pod has its own /tmp
        self.env = {**os.environ, "IMAGINEER_HEALTH_DIR": str(self.logdir / f"{self.name}.health"),
                    **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(self.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if wait and not self.beat:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(self._ready, timeout, f"worker {self.name} to consume {self.queues}")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        return (self.health_dir / "ready").exists()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int | None:
        return None if self.proc is None else stop_process(self.proc, timeout)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> int | None:
    """Warm shutdown (SIGTERM, as Kubernetes sends it), then SIGKILL the group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode
