"""Autotune spaces, the prune hook and the committed per-GPU winners (kernels/tuned/<gpu>.json).

Each launcher declares a `Space`: its configs and a DEFAULT. `prune` narrows the space
for one call: to DEFAULT under the interpreter or with `TRITONLOSS_AUTOTUNE=0`, to the
committed winner when `tuned/<gpu-slug>.json` holds one for this kernel source, Triton
minor version and key, and to the whole space otherwise. `pick` benchmarks what is left
(once per key and process) and returns the config to launch. The kernels tuned here
write every output element they own and accumulate into nothing, so trials need no reset.

File format: {"gpu": name, "triton": "3.6", "torch": "2.11.0",
              "kernels": {space name: {"source": sha256 of the kernel source,
                                       "configs": {key: config}}}}
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import re

import triton

TUNED_DIR = pathlib.Path(__file__).parent / "tuned"
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_minor() -> str:
    return ".".join(triton.__version__.split(".")[:2])


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class Space:
    """A kernel's autotune space: configs are dicts of meta-parameters plus num_warps and
    num_stages, `default` is the one used untuned."""

    registry: list[Space] = []

    def __init__(self, name: str, kernel, configs: list[dict], default: dict):
        self.name, self.kernel, self.configs, self.default = name, kernel, configs, default
        Space.registry.append(self)

    @functools.cached_property
    def source_hash(self) -> str:
        src = getattr(self.kernel, "src", None) or getattr(self.kernel.fn, "src", "")
        return hashlib.sha256(src.encode()).hexdigest()[:16]


def key_string(key: tuple) -> str:
    return ",".join(str(k) for k in key)


def bucket(n: int) -> int:
    """Sizes are tuned per power of two."""
    return 1 << max(n - 1, 0).bit_length()


def autotune_enabled() -> bool:
    return not _INTERPRET and os.environ.get("TRITONLOSS_AUTOTUNE", "1") not in ("", "0")


@functools.cache
def load_tuned(device_name: str, directory: str = str(TUNED_DIR)) -> dict:
    """The winners stored for this GPU and Triton minor version: {space: (source, configs)}."""
    path = pathlib.Path(directory) / f"{gpu_slug(device_name)}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if data.get("triton") != triton_minor():
        return {}
    return {
        name: (entry.get("source"), entry.get("configs", {}))
        for name, entry in data.get("kernels", {}).items()
    }


def stored(space: Space, key: tuple, device_name: str | None) -> dict | None:
    if device_name is None:
        return None
    source, configs = load_tuned(device_name).get(space.name, (None, {}))
    if source != space.source_hash:
        return None
    return configs.get(key_string(key))


def prune(space: Space, key: tuple, device_name: str | None) -> list[dict]:
    """The prune hook: DEFAULT, the stored winner, or the whole space."""
    if not autotune_enabled():
        return [space.default]
    winner = stored(space, key, device_name)
    return [winner] if winner is not None else list(space.configs)


_picked: dict[tuple, dict] = {}


def _time(launch, config) -> float:
    """GPU time of one config; a config this GPU cannot run (shared memory, registers)
    counts as infinitely slow."""
    from triton.runtime.errors import OutOfResources

    try:
        launch(config)  # compiles; a config the GPU cannot run fails here
    except OutOfResources:
        return float("inf")
    return triton.testing.do_bench(lambda: launch(config), quantiles=None)


def pick(space: Space, key: tuple, device_name: str | None, launch) -> dict:
    """The config to launch for `key`; `launch(config)` runs the kernel once."""
    cache_key = (space.name, device_name, key)
    if cache_key not in _picked:
        candidates = prune(space, key, device_name)
        if len(candidates) == 1:
            _picked[cache_key] = candidates[0]
        else:
            times = [_time(launch, c) for c in candidates]
            _picked[cache_key] = candidates[times.index(min(times))]
    return _picked[cache_key]


def winners(device_name: str) -> dict:
    """What this process tuned on `device_name`, in the file format (for `tritonloss tune`)."""
    out: dict = {}
    spaces = {s.name: s for s in Space.registry}
    for (name, dev, key), config in _picked.items():
        if dev != device_name or name not in spaces:
            continue
        entry = out.setdefault(name, {"source": spaces[name].source_hash, "configs": {}})
        entry["configs"][key_string(key)] = config
    return out



def merge(old: dict, new: dict, device_name: str, torch_version: str) -> dict:
    """A tuned file's content: `old` (a file's content, possibly {}) updated with `new`
    winners (the format of `winners`). Entries of another Triton minor version, or of a
    kernel whose source changed, are dropped as stale."""
    kernels = old.get("kernels", {}) if old.get("triton") == triton_minor() else {}
    kernels = {k: {"source": v["source"], "configs": dict(v["configs"])} for k, v in kernels.items()}
    for space, entry in new.items():
        if kernels.get(space, {}).get("source") != entry["source"]:
            kernels[space] = {"source": entry["source"], "configs": {}}
        kernels[space]["configs"].update(entry["configs"])
    return {"gpu": device_name, "triton": triton_minor(), "torch": torch_version, "kernels": kernels}
