"""Start a real ComfyUI server headless with this pack installed, and talk to its HTTP API.

Used by the end-to-end tests (tests/e2e/server.py) and the demo (scripts/demo.py). Standard
library only. The server runs from an untouched ComfyUI tree with everything it writes kept in
a separate base directory:

    python main.py --cpu --listen 127.0.0.1 --port N --base-directory BASE
                   --database-url sqlite:///BASE/db.sqlite --extra-model-paths-config BASE/extra_model_paths.yaml

BASE/custom_nodes/ipadapter_kit links to this repository, and the yaml points the model folders
(checkpoints, clip_vision, ipadapter, controlnet, ...) at a models tree. Stopping sends SIGINT to
the server's own process group (it is started in a new session) and SIGKILL if it lingers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "ipadapter_kit"
MODEL_FOLDERS = (
    "checkpoints",
    "clip_vision",
    "ipadapter",
    "controlnet",
    "vae",
    "loras",
    "upscale_models",
    "embeddings",
    "insightface",
)

log = logging.getLogger("comfy_server")


class ServerError(RuntimeError):
    """The server did not start, died, or answered with an error. Carries the log tail."""


class PromptRejected(ServerError):
    """POST /prompt answered HTTP 400 (validation failed)."""

    def __init__(self, message: str, body: dict):
        super().__init__(message)
        self.body = body


class ExecutionFailed(ServerError):
    """The prompt was accepted but failed while running."""

    def __init__(self, message: str, entry: dict):
        super().__init__(message)
        self.entry = entry


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, SIGKILL the server when the process that
    started it dies (e.g. pytest killed by a CI timeout, where no fixture teardown runs)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except Exception:  # best effort; stop() is the normal path
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comfy_root(cache: Path | None = None) -> Path:
    """`$COMFYUI_PATH`, else the tree scripts/setup_host.sh recorded in `.cache/comfyui_path`."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        root = Path(env).expanduser().resolve()
    else:
        cache = cache or Path(os.environ.get("IPA_CACHE") or REPO / ".cache")
        recorded = cache / "comfyui_path"
        if not recorded.is_file():
            raise ServerError(f"no ComfyUI tree: set COMFYUI_PATH or run scripts/setup_host.sh (writes {recorded})")
        root = Path(recorded.read_text().strip())
    if not (root / "main.py").is_file():
        raise ServerError(f"{root} is not a ComfyUI checkout (no main.py)")
    return root


def comfy_version(root: Path) -> str:
    f = root / "comfyui_version.py"
    if f.is_file():
        for line in f.read_text().splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def write_extra_model_paths(path: Path, models_dir: Path, folders=MODEL_FOLDERS) -> Path:
    """An extra_model_paths.yaml section pointing each model folder at `models_dir/<folder>`."""
    lines = ["ipadapter_kit_models:", f"  base_path: {json.dumps(str(models_dir))}"]
    lines += [f"  {name}: {name}" for name in folders]
    path.write_text("\n".join(lines) + "\n")
    return path


class ComfyServer:
    """A ComfyUI server process. Use as a context manager, or call start()/stop()."""

    def __init__(
        self,
        base_dir: str | os.PathLike,
        models_dir: str | os.PathLike | None = None,
        comfy_dir: str | os.PathLike | None = None,
        python: str | None = None,
        pack_dir: str | os.PathLike | None = REPO,
        port: int | None = None,
        extra_args: tuple[str, ...] = ("--disable-api-nodes",),
        cpu: bool = True,
    ):
        self.base = Path(base_dir).resolve()
        self.models_dir = Path(models_dir).resolve() if models_dir else None
        self.comfy_dir = Path(comfy_dir).resolve() if comfy_dir else comfy_root()
        self.python = python or sys.executable
        self.pack_dir = Path(pack_dir).resolve() if pack_dir else None
        self.port = port
        self.extra_args = tuple(extra_args)
        self.cpu = cpu
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base / "server.log"
        self.client_id = str(uuid.uuid4())
        self.startup_seconds: float | None = None

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _prepare(self) -> list[str]:
        self.base.mkdir(parents=True, exist_ok=True)
        custom = self.base / "custom_nodes"
        custom.mkdir(exist_ok=True)  # ComfyUI >= 0.3.6x fails without it when --base-directory is set
        if self.pack_dir is not None:
            link = custom / PACK_NAME
            if link.is_symlink() or link.exists():
                if not (link.is_symlink() and Path(os.readlink(link)) == self.pack_dir):
                    raise ServerError(f"{link} exists and is not a link to {self.pack_dir}")
            else:
                link.symlink_to(self.pack_dir, target_is_directory=True)
        cmd = [
            self.python,
            str(self.comfy_dir / "main.py"),
            *(["--cpu"] if self.cpu else []),
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base),
            "--database-url",
            f"sqlite:///{self.base / 'db.sqlite'}",
        ]
        if self.models_dir is not None:
            yaml = write_extra_model_paths(self.base / "extra_model_paths.yaml", self.models_dir)
            cmd += ["--extra-model-paths-config", str(yaml)]
        return cmd + list(self.extra_args)

    def start(self, timeout: float = 180.0) -> ComfyServer:
        if self.proc is not None:
            return self
        if self.port is None:
            self.port = free_port()
        cmd = self._prepare()
        log.info("starting ComfyUI: %s", " ".join(cmd))
        t0 = time.monotonic()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env=env,
            )
        try:
            while True:
                if self.proc.poll() is not None:
                    raise ServerError(
                        f"ComfyUI exited with code {self.proc.returncode} during start-up{self.log_tail()}"
                    )
                with contextlib.suppress(OSError, ServerError):
                    self.get_json("/object_info", timeout=5)
                    break
                if time.monotonic() - t0 > timeout:
                    raise ServerError(f"ComfyUI did not answer /object_info within {timeout:.0f} s{self.log_tail()}")
                time.sleep(0.25)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        log.info("ComfyUI ready at %s after %.1f s", self.url, self.startup_seconds)
        return self

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGINT to the server's process group, SIGKILL after `timeout`; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("ComfyUI did not stop on SIGINT within %.0f s; killing it", timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return proc.returncode

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"\n--- ComfyUI log ({self.log_path}), last {len(tail)} lines ---\n" + "\n".join(tail) if tail else ""

    # --- HTTP ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
        if self.port is None:
            raise ServerError("server not started")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str, timeout: float = 30.0):
        status, raw = self._request("GET", path, timeout=timeout)
        if status != 200:
            raise ServerError(f"GET {path} -> HTTP {status}: {raw[:500]!r}")
        return json.loads(raw)

    def post_json(self, path: str, body: dict, timeout: float = 30.0) -> tuple[int, dict]:
        status, raw = self._request("POST", path, body, timeout=timeout)
        try:
            return status, json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            return status, {"raw": raw.decode(errors="replace")}

    def object_info(self, node_class: str | None = None) -> dict:
        return self.get_json("/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else ""))

    def post_prompt(self, prompt: dict) -> str:
        """Queue an API-format prompt; returns its prompt_id. HTTP 400 -> PromptRejected with
        the validation errors of every node spelled out."""
        status, body = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status == 200 and "prompt_id" in body:
            return body["prompt_id"]
        raise PromptRejected(f"POST /prompt -> HTTP {status}: {format_rejection(body)}", body)

    def wait_for(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.25) -> dict:
        """Poll /history until the prompt finished; returns its history entry, or raises
        ExecutionFailed with the node, exception and message of the execution error."""
        t0 = time.monotonic()
        while True:
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry is not None:  # ComfyUI adds the entry once the prompt finished
                status = entry.get("status") or {}
                if status.get("status_str") == "error" or not status.get("completed", True):
                    raise ExecutionFailed(
                        f"prompt {prompt_id} failed: {format_execution_error(entry)}{self.log_tail(30)}", entry
                    )
                return entry
            if not self.running:
                raise ServerError(f"ComfyUI died while running prompt {prompt_id}{self.log_tail()}")
            if time.monotonic() - t0 > timeout:
                raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s{self.log_tail(30)}")
            time.sleep(poll)

    def run(self, prompt: dict, timeout: float = 300.0) -> dict:
        return self.wait_for(self.post_prompt(prompt), timeout)

    def fetch_image(self, image: dict | str, subfolder: str = "", type: str = "output") -> bytes:
        """GET /view for an output entry ({filename, subfolder, type}) or a file name."""
        if isinstance(image, dict):
            filename, subfolder, type = image["filename"], image.get("subfolder", ""), image.get("type", "output")
        else:
            filename = image
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        status, raw = self._request("GET", f"/view?{query}")
        if status != 200:
            raise ServerError(f"GET /view?{query} -> HTTP {status}")
        return raw

    def output_images(self, entry: dict) -> list[dict]:
        """All image entries of a history entry's outputs, in node order."""
        return [img for out in entry.get("outputs", {}).values() for img in out.get("images", [])]


def format_rejection(body: dict) -> str:
    err = body.get("error", {})
    parts = [f"{err.get('type', '?')}: {err.get('message', '')} {err.get('details', '')}".strip()]
    for node_id, info in (body.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            where = f"node {node_id} ({info.get('class_type', '?')})"
            parts.append(f"{where}: {e.get('type')}: {e.get('message')} {e.get('details', '')}".rstrip())
    return "\n  ".join(parts) if parts else json.dumps(body)[:2000]


def format_execution_error(entry: dict) -> str:
    for event, data in entry.get("status", {}).get("messages", []):
        if event == "execution_error":
            tb = "".join(data.get("traceback", [])[-8:])
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}): "
                f"{data.get('exception_type')}: {data.get('exception_message')}\n{tb}"
            )
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return json.dumps(entry.get("status", {}))[:2000]
