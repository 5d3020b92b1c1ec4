"""In-process ComfyUI host for the test suite.

`import_comfy()` makes a real ComfyUI tree importable as a library (CPU, argv parsed, outputs
redirected out of the tree), `import_pack()` imports this repository as the package
`ipadapter_kit` (ComfyUI's own top-level `nodes.py` would shadow our `nodes/` subpackage if the
repo root itself were put on sys.path) and registers its nodes the way ComfyUI's loader does,
`models_dir()` points the model folders at a temporary tree, and `run_prompt()` executes an API
prompt through ComfyUI's own validator and `PromptExecutor`.

The ComfyUI tree is `$COMFYUI_PATH`, else the one `scripts/setup_host.sh` recorded in
`.cache/comfyui_path`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_MODULE = "ipadapter_kit"
MODEL_FOLDERS = ("ipadapter", "clip_vision", "checkpoints", "controlnet")

log = logging.getLogger(__name__)


class HostError(RuntimeError):
    """The ComfyUI host could not be set up or a prompt failed."""


def cache_dir() -> Path:
    """Where generated files live (`$IPA_CACHE`, default `<repo>/.cache`); never committed."""
    path = Path(os.environ.get("IPA_CACHE") or REPO / ".cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def comfy_root() -> Path:
    """The ComfyUI checkout the tests run against."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        root = Path(env).expanduser().resolve()
    else:
        recorded = cache_dir() / "comfyui_path"
        if not recorded.is_file():
            raise HostError(f"no ComfyUI tree: set COMFYUI_PATH or run scripts/setup_host.sh (it writes {recorded})")
        root = Path(recorded.read_text().strip())
    if not (root / "main.py").is_file() or not (root / "comfy").is_dir():
        raise HostError(f"{root} is not a ComfyUI checkout (no main.py / comfy/)")
    return root


_imported: Path | None = None


def import_comfy() -> Path:
    """Make ComfyUI importable in this process (idempotent); returns its root.

    Sets `--cpu` through ComfyUI's own argument parser, imports `server`/`utils` before `nodes`
    (nodes.py puts `comfy/` first on sys.path, which would shadow `utils`), and sends the
    output/temp/input folders to `<cache>/host-run/` so tests never write into the ComfyUI tree.
    """
    global _imported
    if _imported is not None:
        return _imported
    root = comfy_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    argv = sys.argv
    sys.argv = [argv[0] if argv else "comfy", "--cpu"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses the argv above)
        import comfy.model_management  # noqa: F401
        import comfy.sd  # noqa: F401
        import folder_paths
        import utils.extra_config  # noqa: F401  (before nodes: see module doc)

        try:
            import server  # noqa: F401
        except Exception as e:  # server needs aiohttp & co; in-process tests can live without it
            log.warning("ComfyUI's server module did not import (%s); in-process execution still works", e)
        import execution  # noqa: F401
        import nodes  # noqa: F401
    finally:
        sys.argv = argv
    run_dir = cache_dir() / "host-run"
    for kind, setter in (
        ("output", folder_paths.set_output_directory),
        ("temp", folder_paths.set_temp_directory),
        ("input", folder_paths.set_input_directory),
    ):
        (run_dir / kind).mkdir(parents=True, exist_ok=True)
        setter(str(run_dir / kind))
    _imported = root
    return root


def comfy_version() -> str:
    root = import_comfy()
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return f"unknown ({root})"


def pack_root_link() -> Path:
    """`<cache>/pkgroot/ipadapter_kit -> <repo>`; put its parent on sys.path to import the pack."""
    pkgroot = cache_dir() / "pkgroot"
    pkgroot.mkdir(parents=True, exist_ok=True)
    link = pkgroot / PACK_MODULE
    if link.is_symlink() and Path(os.readlink(link)) != REPO:
        link.unlink()
    if not link.exists():
        with contextlib.suppress(FileExistsError):
            link.symlink_to(REPO, target_is_directory=True)
    return link


def import_pack():
    """Import the repository as `ipadapter_kit` (after `import_comfy`) and register its nodes
    in ComfyUI's `nodes.NODE_CLASS_MAPPINGS`, exactly as the custom-node loader would."""
    import_comfy()
    link = pack_root_link()
    if str(link.parent) not in sys.path:
        sys.path.insert(0, str(link.parent))
    import importlib

    pack = importlib.import_module(PACK_MODULE)
    register_pack_nodes(pack)
    return pack


def register_pack_nodes(pack) -> list[str]:
    """Register the pack's nodes (V1 mappings if present, else the V3 entry point); returns ids."""
    import inspect

    import nodes

    module_parent = f"custom_nodes.{PACK_MODULE}"
    registered = []
    mappings = getattr(pack, "NODE_CLASS_MAPPINGS", None)
    if mappings is not None:
        for node_id, cls in mappings.items():
            nodes.NODE_CLASS_MAPPINGS[node_id] = cls
            cls.RELATIVE_PYTHON_MODULE = module_parent
            registered.append(node_id)
        nodes.NODE_DISPLAY_NAME_MAPPINGS.update(getattr(pack, "NODE_DISPLAY_NAME_MAPPINGS", {}) or {})
        return registered
    entry = getattr(pack, "comfy_entrypoint", None)
    if entry is None:
        raise HostError(f"{PACK_MODULE} has neither NODE_CLASS_MAPPINGS nor comfy_entrypoint")

    async def node_list():
        ext = entry()
        if inspect.isawaitable(ext):
            ext = await ext
        return await ext.get_node_list()

    for cls in _run(node_list()):
        schema = cls.GET_SCHEMA()
        nodes.NODE_CLASS_MAPPINGS[schema.node_id] = cls
        cls.RELATIVE_PYTHON_MODULE = module_parent
        if schema.display_name is not None:
            nodes.NODE_DISPLAY_NAME_MAPPINGS[schema.node_id] = schema.display_name
        registered.append(schema.node_id)
    return registered


def _run(coro):
    """Run a coroutine whether or not an event loop is already running in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


_extra_nodes_loaded = False


def load_extra_nodes() -> None:
    """Load ComfyUI's `comfy_extras` nodes (not needed for the core `nodes.py` ones; ~seconds)."""
    global _extra_nodes_loaded
    if _extra_nodes_loaded:
        return
    import_comfy()
    import nodes

    _run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    _extra_nodes_loaded = True


@contextlib.contextmanager
def models_dir(root: str | os.PathLike, folders: Iterable[str] = MODEL_FOLDERS) -> Iterator[Path]:
    """Put `<root>/<folder>` first in each model folder's search list for the block's duration.

    The subfolders are created; files already configured elsewhere stay visible after ours.
    ComfyUI's file-list cache is dropped on entry and exit so combos see the change.
    """
    import_comfy()
    import folder_paths

    root = Path(root)
    saved = {}
    try:
        for name in folders:
            sub = root / name
            sub.mkdir(parents=True, exist_ok=True)
            saved[name] = folder_paths.folder_names_and_paths.get(name)
            paths, exts = saved[name] if saved[name] is not None else ([], set(folder_paths.supported_pt_extensions))
            folder_paths.folder_names_and_paths[name] = ([str(sub), *[p for p in paths if p != str(sub)]], exts)
            folder_paths.filename_list_cache.pop(name, None)
        yield root
    finally:
        for name, value in saved.items():
            if value is None:
                folder_paths.folder_names_and_paths.pop(name, None)
            else:
                folder_paths.folder_names_and_paths[name] = value
            folder_paths.filename_list_cache.pop(name, None)


class _QuietServer:
    """The bits of `server.PromptServer` the executor touches; records the messages it gets."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


def validate(prompt: dict) -> tuple[list[str], dict]:
    """ComfyUI's own validation; returns (output node ids, node_errors) or raises HostError."""
    import_comfy()
    import execution

    result = _run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))
    valid, error, outputs, node_errors = result[0], result[1], result[2], result[3]
    if not valid:
        raise HostError(f"prompt rejected: {error}\nnode errors: {node_errors}")
    return list(outputs), node_errors


def run_prompt(prompt: dict, extra_data: dict | None = None) -> dict:
    """Validate and execute an API-format prompt in-process; returns the history entry
    (`{"outputs": {node_id: ui}, "meta": ..., "messages": [...]}`) or raises HostError with
    ComfyUI's execution error (node, type, message, traceback)."""
    import_comfy()
    import execution
    from comfy.cli_args import args

    outputs, _ = validate(prompt)
    srv = _QuietServer()
    cache_type = getattr(getattr(execution, "CacheType", None), "CLASSIC", False)
    executor = execution.PromptExecutor(
        srv, cache_type=cache_type, cache_args={"lru": 0, "ram": getattr(args, "cache_ram", 0)}
    )
    prompt_id = str(uuid.uuid4())
    executor.execute(prompt, prompt_id, extra_data or {}, outputs)
    messages = list(executor.status_messages)
    if not executor.success:
        err = next((d for e, d in messages if e == "execution_error"), {})
        tb = "".join(err.get("traceback", []))
        raise HostError(
            f"node {err.get('node_id')} ({err.get('node_type')}) failed: "
            f"{err.get('exception_type')}: {err.get('exception_message')}\n{tb}"
        )
    return {**executor.history_result, "messages": messages}


class ComfyHost:
    """What the `comfy` fixture hands to tests: the imported host and the helpers above."""

    _instance: ComfyHost | None = None

    def __init__(self):
        self.root = import_comfy()
        self.version = comfy_version()
        import folder_paths
        import nodes

        self.nodes = nodes
        self.folder_paths = folder_paths

    @classmethod
    def get(cls) -> ComfyHost:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    # Delegates, so tests need only the fixture.
    run_prompt = staticmethod(run_prompt)
    validate = staticmethod(validate)
    models_dir = staticmethod(models_dir)
    import_pack = staticmethod(import_pack)
    load_extra_nodes = staticmethod(load_extra_nodes)

    def output_path(self, image: dict) -> Path:
        """Path of a SaveImage/PreviewImage result entry ({filename, subfolder, type})."""
        base = {
            "output": self.folder_paths.get_output_directory(),
            "temp": self.folder_paths.get_temp_directory(),
            "input": self.folder_paths.get_input_directory(),
        }[image.get("type", "output")]
        return Path(base) / image.get("subfolder", "") / image["filename"]
