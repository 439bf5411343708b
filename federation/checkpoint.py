"""Checkpoints of a federated run: what ``RoundRunner`` needs to continue exactly where it stopped, nothing pickled.

A checkpoint after round k is two files in its directory: ``round-<k>-<hash>.safetensors`` holds every tensor and
``round-<k>.json`` the rest, with the tensor file's name, size and SHA-256. Each is written under a temporary name in
the same directory and renamed into place, the JSON last: a checkpoint exists once its JSON does. The previous
checkpoint stays until the new one is complete; older ones are then removed. Reading a file that does not parse or
does not match its record raises ``CheckpointError`` (a ``ValueError``) naming the file.

| part | JSON | tensors (name prefix) |
|---|---|---|
| run | engine config, fixed decisions, round, initial / last perplexity, every round's results | |
| RNGs | the runner's, the client sampler's and the channel's ``numpy`` generators | torch's global RNG (``rng/torch``) |
| channel | | distances, bandwidths, path loss and gain, fading (``channel/``) |
| server | the sub-model each device holds, per-task perplexities | global trainable state (``global/``) |
| method | ``Method.state_dict`` (HetLoRA's ranks, FedPFT's sub-model, FL-TAC's clusters, …) | its tensors (``method/``) |
| devices | ``ClientState`` of each device and of the collaborating server: sub-model, private state | private tensors (``client/<d>/``) |
| messages | the message log (tensor names as indices into a list of name sets) | |

Python's ``random`` and NumPy's global state are seeded by ``seed_everything``, but nothing in the engine draws
from them, so they are not stored. Nor are frozen sub-model weights: the server rebuilds them and ``Executor.restore``
puts them back on the devices without logging a message (a sub-model the server changed, FedPFT's refreshed
revision, is method state). Resumes are exact for dropout-free foundations (the embedded one): with dropout, local
training draws from torch's global RNG, which building a model (random initial weights, then overwritten) advances
too, and a resumed run builds its models at other times.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load as tensors_from_bytes
from safetensors.torch import save as tensors_to_bytes

from federation.client import ClientState
from federation.emulator import SubModelSpec
from federation.engine import DeviceRound, EngineConfig, RoundResult
from federation.messages import Message
from federation.methods.base import DeviceDecision

if TYPE_CHECKING:
    from federation.engine import RoundRunner

FORMAT = "fedpeat-checkpoint"
VERSION = 1
KEEP = 2
"""Checkpoints kept in a directory: the latest and the one before it."""
_JSON_NAME = re.compile(r"^round-(\d+)\.json$")
_RECORD_KEYS = ("round", "config", "decisions", "tensors", "tensor_order", "rng", "initial_perplexity", "last_perplexity",
                "device_specs", "task_perplexity", "method", "clients", "server_client", "key_sets", "messages", "results")
_TENSOR = "$tensor"
"""Key of a JSON placeholder for a tensor of a device's private state."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, does not parse, does not match its record or does not fit the run."""


# --- files ------------------------------------------------------------------------------------------------------
def checkpoints(directory: Path) -> list[Path]:
    """The checkpoints (JSON files) in ``directory``, oldest first; empty without any (or without the directory)."""
    if not directory.is_dir():
        return []
    found = {p: m for p in directory.iterdir() if (m := _JSON_NAME.match(p.name))}
    return sorted(found, key=lambda p: int(found[p].group(1)))


def read_record(path: Path) -> dict:
    """The JSON part of the checkpoint ``path`` (format and version checked)."""
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint file {path} is not valid JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint file {path} is not a {FORMAT} file")
    if record.get("version") != VERSION:
        raise CheckpointError(f"checkpoint file {path} has format version {record.get('version')!r}; this code reads {VERSION}")
    if missing := [key for key in _RECORD_KEYS if key not in record]:
        raise CheckpointError(f"checkpoint file {path} lacks {missing}")
    return record


def read_tensors(path: Path, record: dict) -> dict[str, torch.Tensor]:
    """The tensors of the checkpoint ``path`` (its JSON ``record``), checked against the size and SHA-256 it records,
    in the order they were saved."""
    try:
        info = record["tensors"]
        tensor_path = path.parent / info["file"]
    except (KeyError, TypeError):
        raise CheckpointError(f"checkpoint file {path} does not name its tensors file") from None
    try:
        data = tensor_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {tensor_path} is missing (named by {path.name})") from None
    if len(data) != info.get("bytes"):
        raise CheckpointError(f"checkpoint file {tensor_path} is truncated or altered: {len(data)} bytes, "
                              f"{path.name} records {info.get('bytes')}")
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise CheckpointError(f"checkpoint file {tensor_path} is corrupt: its SHA-256 differs from the one {path.name} records")
    try:
        tensors = tensors_from_bytes(data)
    except Exception as err:  # safetensors' own error type; the hash matched, so this is a writer's bug
        raise CheckpointError(f"checkpoint file {tensor_path} is not a safetensors file ({err})") from None
    order = record.get("tensor_order", [])
    if sorted(order) != sorted(tensors):
        raise CheckpointError(f"checkpoint file {tensor_path} does not hold the tensors {path.name} lists")
    return {name: tensors[name] for name in order}


def _latest(directory: Path) -> tuple[Path, dict]:
    """The latest checkpoint in ``directory`` and its JSON record; the error says what to do if it is unreadable."""
    paths = checkpoints(directory)
    if not paths:
        raise CheckpointError(f"no checkpoint in {directory} (round-<k>.json): start the run without resuming")
    try:
        return paths[-1], read_record(paths[-1])
    except CheckpointError as err:
        raise _with_previous(err, paths) from None


def _with_previous(err: CheckpointError, paths: list[Path]) -> CheckpointError:
    if len(paths) < 2:
        return err
    return CheckpointError(f"{err}; the previous checkpoint {paths[-2].name} is still in {paths[-1].parent}: remove "
                           f"{paths[-1].name} to resume from it")


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path``: a temporary file in the same directory, flushed to disk, renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sync_directory(directory: Path) -> None:
    """Make the renames in ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_old(directory: Path) -> None:
    """Keep the ``KEEP`` latest checkpoints: remove older JSON files, then tensor files no kept JSON names and
    temporary files of interrupted writes."""
    paths = checkpoints(directory)
    for old in paths[:-KEEP]:
        old.unlink()
    kept = paths[-KEEP:]
    named = set()
    for path in kept:
        try:
            named.add(read_record(path)["tensors"]["file"])
        except (CheckpointError, KeyError, TypeError):
            named.update(p.name for p in directory.glob(f"{path.stem}-*.safetensors"))  # unreadable: keep its files
    for path in directory.glob("round-*.safetensors"):
        if path.name not in named:
            path.unlink()
    for path in directory.glob(".round-*.tmp"):
        path.unlink(missing_ok=True)


# --- compatibility ----------------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists, numpy scalars as numbers)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}.{key}" if prefix else key).items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{prefix}[{i}]").items()} or {prefix: []}
    return {prefix: value}


def differences(record: dict, config: EngineConfig, decisions: Sequence[DeviceDecision] | None = None) -> list[str]:
    """The settings in which ``config`` (and ``decisions``, when both they and the checkpoint have them) differ from
    the checkpoint's, as ``"name (checkpoint a, given b)"``."""
    saved, given = {"config": record["config"]}, {"config": _jsonable(asdict(config))}
    if decisions is not None and record.get("decisions") is not None:
        saved["decisions"], given["decisions"] = record["decisions"], _jsonable([asdict(d) for d in decisions])
    a, b = _flatten(saved), _flatten(given)
    missing = "<absent>"
    return [f"{name.removeprefix('config.')} (checkpoint {a.get(name, missing)!r}, given {b.get(name, missing)!r})"
            for name in sorted(a.keys() | b.keys()) if a.get(name, missing) != b.get(name, missing)]


def check_resumable(directory: Path, config: EngineConfig, decisions: Sequence[DeviceDecision] | None = None) -> int:
    """The round of the latest checkpoint in ``directory``, which must have been made with ``config`` (and
    ``decisions``); reads its JSON only, so a run can fail before building anything. ``CheckpointError`` otherwise."""
    path, record = _latest(directory)
    _check_settings(path, record, config, decisions)
    return int(record["round"])


def _check_settings(path: Path, record: dict, config: EngineConfig, decisions: Sequence[DeviceDecision] | None) -> None:
    if problems := differences(record, config, decisions):
        raise CheckpointError(f"checkpoint {path} was made with other settings (only the number of rounds may change "
                              f"when resuming): {'; '.join(problems)}")


# --- device private state ---------------------------------------------------------------------------------------
def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` (a device's private state) as JSON, its tensors moved to ``tensors`` under ``path/...``."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value
        return {_TENSOR: path}
    if isinstance(value, Mapping):
        if _TENSOR in value or not all(isinstance(k, str) for k in value):
            raise TypeError(f"private state at {path} must be a dict with str keys other than {_TENSOR!r}")
        return {k: _encode(v, f"{path}/{k}", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"private state at {path} is a {type(value).__name__}: checkpoints store tensors, numbers, "
                    "strings, lists and dicts")


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        return tensors[value[_TENSOR]] if _TENSOR in value else {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def _client_record(state: ClientState, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    return {"spec": None if state.spec is None else state.spec.to_dict(), "private": _encode(state.private, prefix, tensors)}


def _client_state(record: dict, tensors: Mapping[str, torch.Tensor]) -> ClientState:
    spec = None if record["spec"] is None else SubModelSpec.from_dict(record["spec"])
    return ClientState(spec, _decode(record["private"], tensors))


# --- save / load ------------------------------------------------------------------------------------------------
def save_checkpoint(runner: RoundRunner, directory: Path, results: Sequence[RoundResult],
                    decisions: Sequence[DeviceDecision] | None = None) -> Path:
    """Checkpoint ``runner`` after its last round into ``directory`` (module docstring); ``results``: its rounds so
    far. Returns the JSON file."""
    record, tensors = _capture(runner, results, decisions)
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}  # no shared storage
    record["tensor_order"] = list(tensors)
    data = tensors_to_bytes(tensors, metadata={"format": FORMAT})
    digest = hashlib.sha256(data).hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"round-{runner.round:06d}.json"
    tensor_path = directory / f"{path.stem}-{digest[:12]}.safetensors"  # a new name: the JSON it replaces stays valid
    record["tensors"] = {"file": tensor_path.name, "bytes": len(data), "sha256": digest}
    _write_atomic(tensor_path, data)
    _write_atomic(path, json.dumps(record, default=_json_default, separators=(",", ":")).encode())
    _sync_directory(directory)
    _remove_old(directory)
    return path


def _capture(runner: RoundRunner, results: Sequence[RoundResult],
             decisions: Sequence[DeviceDecision] | None) -> tuple[dict, dict[str, torch.Tensor]]:
    server, tensors = runner.server, {}
    tensors.update({f"global/{k}": v for k, v in server.global_state.items()})
    method_state, method_tensors = runner.method.state_dict()
    tensors.update({f"method/{k}": v for k, v in method_tensors.items()})
    channel = runner.channel.state_dict()
    channel_rng = channel.pop("rng")
    tensors.update({f"channel/{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in channel.items()})
    tensors["rng/torch"] = torch.get_rng_state()
    clients = {str(d): _client_record(s, f"client/{d}", tensors) for d, s in runner.executor.client_states().items()}
    server_client = runner.server_client
    key_sets: dict[tuple[str, ...], int] = {}
    messages = [[m.round, m.device, m.direction, m.kind, m.num_bytes, key_sets.setdefault(m.keys, len(key_sets)), m.note]
                for m in runner.log.messages]
    record = {
        "format": FORMAT,
        "version": VERSION,
        "round": runner.round,
        "config": _jsonable(asdict(runner.config)),
        "decisions": None if decisions is None else _jsonable([asdict(d) for d in decisions]),
        "rng": {"runner": runner.rng.bit_generator.state, "channel": channel_rng,
                "sampler": runner.sampler.bit_generator.state},
        "initial_perplexity": runner.initial_perplexity,
        "last_perplexity": runner.last_perplexity,
        "device_specs": {str(d): spec.to_dict() for d, spec in server.device_specs.items()},
        "task_perplexity": {str(t): p for t, p in server.task_perplexity.items()},
        "method": method_state,
        "clients": clients,
        "server_client": None if server_client is None else _client_record(server_client.state(), "client/server", tensors),
        "key_sets": [list(keys) for keys in key_sets],
        "messages": messages,
        "results": [asdict(r) for r in results],
    }
    return record, tensors


def load_checkpoint(runner: RoundRunner, directory: Path, decisions: Sequence[DeviceDecision] | None = None) -> list[RoundResult]:
    """Continue the fresh ``runner`` from the latest checkpoint in ``directory`` (made with its config and
    ``decisions``); returns the checkpoint's rounds. ``CheckpointError`` for a missing, unreadable or mismatched
    checkpoint, raised before the runner changes."""
    path, record = _latest(directory)
    _check_settings(path, record, runner.config, decisions)
    try:
        tensors = read_tensors(path, record)
    except CheckpointError as err:
        raise _with_previous(err, checkpoints(directory)) from None
    try:
        return _restore(runner, record, tensors)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} does not fit this run ({type(err).__name__}: {err})") from err


def _restore(runner: RoundRunner, record: dict, tensors: dict[str, torch.Tensor]) -> list[RoundResult]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        group, key = name.split("/", 1)
        groups.setdefault(group, {})[key] = tensor
    # parse everything first: a malformed record fails before the runner changes
    results = [RoundResult(**{**r, "devices": tuple(DeviceRound(**d) for d in r["devices"])}) for r in record["results"]]
    key_sets = [tuple(keys) for keys in record["key_sets"]]
    messages = [Message(rnd, dev, direction, kind, size, key_sets[keys], note)
                for rnd, dev, direction, kind, size, keys, note in record["messages"]]
    device_specs = {int(d): SubModelSpec.from_dict(spec) for d, spec in record["device_specs"].items()}
    clients = {int(d): _client_state(c, tensors) for d, c in record["clients"].items()}
    server_client = None if record["server_client"] is None else _client_state(record["server_client"], tensors)
    channel = {"rng": record["rng"]["channel"], **{k: v.numpy() for k, v in groups.get("channel", {}).items()}}

    server = runner.server
    runner.rng.bit_generator.state = record["rng"]["runner"]
    runner.sampler.bit_generator.state = record["rng"]["sampler"]
    runner.channel.load_state_dict(channel)
    runner.round = int(record["round"])
    runner.initial_perplexity, runner.last_perplexity = float(record["initial_perplexity"]), float(record["last_perplexity"])
    server.global_state = groups.get("global", {})
    server.device_specs = device_specs
    server.task_perplexity = {int(t): float(p) for t, p in record["task_perplexity"].items()}
    runner.method.load_state_dict(record["method"], groups.get("method", {}))  # before the devices: FedPFT's sub-model
    runner.log.messages = messages
    runner.executor.restore(clients, server.held_payload)
    if runner.server_client is not None and server_client is not None:
        spec = server_client.spec
        runner.server_client.restore(server_client, None if spec is None else server.held_payload(spec))
    torch.set_rng_state(tensors["rng/torch"])
    return results
