"""Model folders on the Hugging Face Hub: ``hf-hub:org/name`` (``@revision`` optional) as a local folder.

The folder holds the package's format (``config.json`` + ``model.safetensors``, as :func:`save_pretrained`
writes it), so a model uploaded from a run folder loads with :func:`endofm.create_model`. ``huggingface_hub``
is an optional dependency (``pip install "endofm[hub]"``); its cache and offline mode (``HF_HUB_OFFLINE=1``,
``HF_HUB_CACHE``) apply as usual.
"""

from __future__ import annotations

from pathlib import Path

from endofm.errors import CheckpointError, InputError

PREFIX = "hf-hub:"
FILES = ["config.json", "*.safetensors"]


def is_hub_id(name: str) -> bool:
    """Whether ``name`` names a Hub repository (``hf-hub:org/name``)."""
    return isinstance(name, str) and name.startswith(PREFIX)


def download(name: str) -> Path:
    """The local folder of ``hf-hub:org/name[@revision]``, from the Hub's cache or downloaded into it."""
    repo, _, revision = name[len(PREFIX):].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise InputError(f"{name!r}: expected hf-hub:org/name or hf-hub:org/name@revision")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as error:
        raise InputError(f"{name}: loading from the Hub needs huggingface_hub (pip install \"endofm[hub]\")") from error
    try:
        folder = snapshot_download(repo, revision=revision or None, allow_patterns=FILES)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        raise CheckpointError(f"{name}: cannot get the model folder ({type(error).__name__}: {error})") from error
    return Path(folder)
