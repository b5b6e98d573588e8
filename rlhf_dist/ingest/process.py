"""Run the ingest service as a child process (a self-contained training run, tests, benchmarks).

In production the service runs on its own and outlives training jobs; this is for the case
where a job's config asks it to start one itself:

    server = LocalIngestServer("runs/x/ingest", job_tokens=["j"], labeler_tokens=["l"]).start()
    client = IngestClient(server.address, "j")
    ...
    server.stop()   # SIGTERM: in-flight calls finish, the log is closed

Tokens travel in the child's environment, not its command line, so `ps` does not show them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class LocalIngestServer:
    def __init__(self, data_dir: str | os.PathLike, job_tokens: list[str],
                 labeler_tokens: list[str], *, port: int = 0, extra_args: tuple[str, ...] = (),
                 log_path: str | os.PathLike | None = None):
        self.data_dir = Path(data_dir)
        self.job_tokens, self.labeler_tokens = list(job_tokens), list(labeler_tokens)
        self.port = port  # 0 on the first start; a restart reuses the port it got
        self.extra_args = tuple(extra_args)
        self._tmp = tempfile.TemporaryDirectory(prefix="ingest-server-")  # removed with self
        self._work = Path(self._tmp.name)
        self.log_path = Path(log_path) if log_path else self._work / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "rlhf_dist.ingest.cli", "serve",
                "--data-dir", str(self.data_dir), "--port", str(self.port),
                "--port-file", str(self._work / "port"), *self.extra_args]

    def _env(self) -> dict:
        package_root = str(Path(__file__).resolve().parents[2])  # works without pip install
        return dict(os.environ,
                    PYTHONPATH=os.pathsep.join(filter(None, [package_root,
                                                             os.environ.get("PYTHONPATH")])),
                    RLHF_INGEST_JOB_TOKENS=",".join(self.job_tokens),
                    RLHF_INGEST_LABELER_TOKENS=",".join(self.labeler_tokens))

    def start(self, timeout_s: float = 30.0) -> "LocalIngestServer":
        """Start (or restart) the process; returns once it listens (the port file appears)."""
        port_file = self._work / "port"
        port_file.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:  # appended across restarts
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         env=self._env())
        deadline = time.monotonic() + timeout_s
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ingest server exited with {self.proc.returncode}:\n"
                                   f"{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"ingest server did not start:\n{self.log()[-4000:]}")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        return self

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for the graceful exit; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL: no handler runs (for crash tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
