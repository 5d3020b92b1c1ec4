"""Model folders the pack uses, registered so `extra_model_paths.yaml` entries work."""

from __future__ import annotations

import os

import folder_paths

IPADAPTER_FOLDER = "ipadapter"


def register_model_folders() -> None:
    """Add `models/ipadapter` without dropping paths an extra_model_paths.yaml already added."""
    default = os.path.join(folder_paths.models_dir, IPADAPTER_FOLDER)
    paths, exts = folder_paths.folder_names_and_paths.get(IPADAPTER_FOLDER, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[IPADAPTER_FOLDER] = (paths, set(exts) | set(folder_paths.supported_pt_extensions))


def adapter_files() -> list[str]:
    return folder_paths.get_filename_list(IPADAPTER_FOLDER)


def adapter_path(name: str) -> str:
    path = folder_paths.get_full_path(IPADAPTER_FOLDER, name)
    if path is None:
        searched = ", ".join(folder_paths.get_folder_paths(IPADAPTER_FOLDER)) or "(none)"
        from ..ip_adapter_core.errors import MissingModelFileError

        raise MissingModelFileError(f"IP-Adapter file '{name}' was not found in the ipadapter folders: {searched}.")
    return path
