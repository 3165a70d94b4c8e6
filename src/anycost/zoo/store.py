"""Zoo storage: the typed weights record (:class:`Weights`), the index, finding, downloading
and verifying weight files, and float16 safetensors I/O (nothing is unpickled on load).

Layout. The shipped entries' metadata is small and ships inside the package:
``anycost/zoo/<name>.json`` (one record per entry) and ``anycost/zoo/index.json`` (names,
aliases, defaults). Their weights are ``<name>.safetensors`` files kept outside the package:
the repository's ``zoo/`` folder for a source checkout, a user cache
(``$ANYCOST_HOME/weights``, default ``~/.cache/anycost/weights``) filled by download from the
entry's ``url``. A per-point tensor of a model's ``op_state()`` (a pruned CNMM point's
BatchNorm statistics) is stored in the same file under ``op/<point name>/<key>``, never in JSON.

The user zoo, ``$ANYCOST_HOME/zoo``, holds the user's own entries (records, index and
weights in one folder); exports, calibrations and reproductions write there unless given a
folder. The package and the repository's ``zoo/`` are read-only: shipped names can never be
replaced or shadowed (:func:`check_writable`).

Lookup order for records: the ``zoo_dir=`` argument (else ``$ANYCOST_ZOO``), the user zoo,
the package. For a weights file: the same two folders, the repository's ``zoo/`` folder, the
user cache, then a download (``$ANYCOST_ZOO_URL`` + file, else the entry's ``url``) into the
cache. Every file found or fetched is checked against the record's size and sha256 first; a
mismatch is an :class:`IntegrityError` naming the file, and a corrupt download is deleted,
never cached.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch

from anycost.checkpoint import CheckpointError, file_sha256, publishable

FORMAT = "anycost-zoo-v2"  # entry records and index.json
WEIGHTS_FORMAT = "anycost-weights-v1"  # safetensors metadata "format"
RELEASE_URL = "https://github.com/anycost/anycost/releases/download/zoo-v1/"
OP_PREFIX = "op/"


class ZooError(CheckpointError):
    """A zoo entry that cannot be found, fetched or built."""


class IntegrityError(ZooError):
    """A weights file whose size or sha256 differs from its record."""


class ZooNameError(ZooError, ValueError):
    """A name that cannot be written: malformed, shipped (read-only), or taken without overwrite."""


# ---------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class Weights:
    """Everything known about one zoo entry (like torchvision's ``Weights``).

    ``metrics`` maps a metric name to ``{"value", "split"}``: the split it was measured on.
    ``operating_points`` are :class:`~anycost.core.OperatingPoint` dicts (the tensors some
    points need live in the weights file, see ``op_state``). A cascade has no file of its own:
    ``members`` names the entries it is built from."""

    name: str  # "arch.tag"
    arch: str  # registered model name
    tag: str  # variant + dataset, e.g. "kd_cifar10"
    family: str = ""
    file: str | None = None  # "<name>.safetensors"; None for a cascade
    sha256: str | None = None
    size: int = 0  # bytes
    url: str | None = None
    dtype: str = "float16"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    input_size: tuple[int, ...] = ()
    normalization: Mapping[str, list] = field(default_factory=dict)  # {"mean": [...], "std": [...]}
    classes: list | None = None
    dataset: str | None = None
    split: Mapping[str, Any] = field(default_factory=dict)  # how val was carved: {"val_size", "split_seed"}
    train_augment: Mapping[str, Any] | None = None
    recipe: str | None = None
    epochs: int | None = None
    macs: int | None = None  # per input, most expensive setting
    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    operating_points: list = field(default_factory=list)
    members: list = field(default_factory=list)
    aliases: list = field(default_factory=list)
    default: bool = False  # the entry create_model(arch, pretrained=True) loads
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.name or self.name != f"{self.arch}.{self.tag}":
            raise ValueError(f"a zoo name is 'arch.tag'; got name={self.name!r}, arch={self.arch!r}, tag={self.tag!r}")
        if "." in self.arch:
            raise ValueError(f"arch must not contain '.', got {self.arch!r}")
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        for k, m in self.metrics.items():
            if not isinstance(m, Mapping) or set(m) != {"value", "split"}:
                raise ValueError(f"{self.name}: metric {k!r} must be {{'value', 'split'}}, got {m!r}")
        if self.file is None and not self.members:
            raise ValueError(f"{self.name}: an entry needs a weights file or cascade members")

    def __hash__(self):
        return hash((self.name, self.sha256))

    # -- views
    @property
    def is_cascade(self) -> bool:
        return bool(self.members)

    @property
    def mean(self) -> list:
        return list(self.normalization["mean"])

    @property
    def std(self) -> list:
        return list(self.normalization["std"])

    def top1(self) -> tuple[float, str] | None:
        """(top-1 percent, split it was measured on), or None."""
        m = self.metrics.get("top1")
        return (m["value"], m["split"]) if m and m["value"] is not None else None

    def ops(self):
        from anycost.core import OperatingPoint

        return [OperatingPoint.from_dict(o) for o in self.operating_points]

    def replace(self, **changes) -> "Weights":
        return dataclasses.replace(self, **changes)

    # -- JSON
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["input_size"] = list(self.input_size)
        return {"format": FORMAT, **json.loads(json.dumps(d))}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Weights":
        d = dict(d)
        fmt = d.pop("format", FORMAT)
        if fmt != FORMAT:
            raise ZooError(f"zoo record {d.get('name')!r} has format {fmt!r}, expected {FORMAT!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ZooError(f"zoo record {d.get('name')!r} has unknown fields {unknown}")
        return cls(**d)


# ---------------------------------------------------------------------------- folders


def package_dir() -> Path:
    """Where the package's records (``<name>.json``, ``index.json``) live."""
    return Path(str(resources.files("anycost.zoo")))


def repo_zoo_dir() -> Path | None:
    """The repository's ``zoo/`` weights folder when anycost runs from a source or editable
    checkout (``<root>/src/anycost`` with ``<root>/pyproject.toml``); None for a wheel."""
    root = package_dir().parents[2]
    z = root / "zoo"
    return z if (root / "pyproject.toml").is_file() and z.is_dir() else None


def home_dir() -> Path:
    """``$ANYCOST_HOME``, default ``~/.cache/anycost`` (like torch hub): the user's weights
    cache and user zoo."""
    home = os.environ.get("ANYCOST_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "anycost")
    return Path(home)


def cache_dir() -> Path:
    """Downloaded weights of shipped entries."""
    return home_dir() / "weights"


def user_dir() -> Path:
    """The user zoo, ``$ANYCOST_HOME/zoo``: where the user's own entries are written by
    default, so that the package and the repository's ``zoo/`` stay read-only."""
    return home_dir() / "zoo"


def local_dir(zoo_dir: str | os.PathLike | None = None) -> Path | None:
    """The zoo folder given for this call: ``zoo_dir`` if given, else ``$ANYCOST_ZOO``."""
    d = zoo_dir if zoo_dir is not None else os.environ.get("ANYCOST_ZOO")
    return Path(d) if d else None


def _record_dirs(zoo_dir=None) -> list[Path]:
    """Folders whose records are searched, first match wins: the given folder, the user zoo
    (each only if it has an index), then the package."""
    out = []
    for d in (local_dir(zoo_dir), user_dir()):
        if d is not None and (d / "index.json").is_file() and d not in out:
            out.append(d)
    out.append(package_dir())
    return out


# ---------------------------------------------------------------------------- names

NAME_CHARS = "a-z0-9_.-"
_NAME = re.compile(r"[a-z0-9_][a-z0-9_-]*\.[a-z0-9_][a-z0-9_.-]*")
MAX_NAME = 100  # the files are <name>.json and <name>.safetensors


def check_name(name: str) -> tuple[str, str]:
    """(arch, tag) of a name that may be written: ``arch.tag`` of ``[a-z0-9_.-]``, no '.' in
    the arch, no path separators (names become file names). Raises :class:`ZooNameError`."""
    if not isinstance(name, str):
        raise ZooNameError(f"a zoo name is a string 'arch.tag', got {type(name).__name__}")
    why = None
    if "/" in name or "\\" in name or name in (".", ".."):
        why = "a path separator: a name is not a path"
    elif len(name) > MAX_NAME:
        why = f"{len(name)} characters (at most {MAX_NAME})"
    elif "." not in name:
        why = "no '.' between arch and tag"
    elif not _NAME.fullmatch(name):
        bad = sorted({c for c in name if not re.fullmatch(f"[{NAME_CHARS}]", c)})
        why = (f"characters {''.join(bad)!r}" if bad else "an empty part or one starting with '.' or '-'")
    if why:
        raise ZooNameError(f"invalid zoo name {name!r} ({why}): a zoo name is 'arch.tag' of lowercase letters, digits, "
                           f"'_', '-' and '.', e.g. 'resnet20.mine_cifar10'")
    arch, tag = name.split(".", 1)
    return arch, tag


def shipped_names() -> dict[str, str]:
    """{name or old alias: entry} of the package's own entries, which are read-only."""
    idx = read_index(package_dir())
    return {**idx["aliases"], **{n: n for n in idx["entries"]}}


def check_writable(name: str, directory: str | os.PathLike, overwrite: bool = False,
                   weights_dir: str | os.PathLike | None = None) -> Path:
    """Refuse to write entry ``name`` into records folder ``directory`` (weights in
    ``weights_dir``) when the name is malformed, is a shipped entry or alias (never replaced
    nor shadowed, even with ``overwrite``), or is taken there and ``overwrite`` is false.
    Returns the records folder."""
    arch, tag = check_name(name)
    shipped = shipped_names()
    if name in shipped:
        what = "a shipped entry" if shipped[name] == name else f"an old name of the shipped entry '{shipped[name]}'"
        raise ZooNameError(f"'{name}' is {what}: shipped entries are read-only and cannot be replaced or shadowed, "
                           f"even with --overwrite; choose another tag, e.g. '{arch}.mine_{tag}'")
    d = Path(directory)
    idx = read_index(d)
    if name in idx["aliases"]:
        raise ZooNameError(f"'{name}' is an old name of '{idx['aliases'][name]}' in {d}; choose another name")
    files = [d / f"{name}.json"] + ([Path(weights_dir) / f"{name}.safetensors"] if weights_dir is not None else [])
    if not overwrite and (name in idx["entries"] or any(f.exists() for f in files)):
        raise ZooNameError(f"zoo entry '{name}' already exists in {d}; pass --overwrite (overwrite=True) to replace "
                           f"it, or choose another name")
    return d


# ---------------------------------------------------------------------------- index


def empty_index() -> dict:
    return {"format": FORMAT, "entries": {}, "aliases": {}}


def read_index(directory: str | os.PathLike | None = None) -> dict:
    """``index.json`` of a folder (default: the package's): ``{"format", "entries": {name:
    summary}, "aliases": {old name: name}}``."""
    p = Path(directory or package_dir()) / "index.json"
    if not p.is_file():
        return empty_index()
    idx = json.loads(p.read_text())
    if idx.get("format") != FORMAT:
        raise ZooError(f"{p}: not an {FORMAT} index (format {idx.get('format')!r})")
    return idx


def _summary(w: Weights) -> dict:
    return {"arch": w.arch, "tag": w.tag, "family": w.family, "file": w.file, "default": w.default,
            "members": list(w.members)}


def write_record(w: Weights, directory: str | os.PathLike | None = None) -> Path:
    """Write ``<name>.json`` and add it (and its aliases) to the folder's index (default: the
    user zoo). The caller checks overwriting (:func:`check_writable`)."""
    from anycost.records import write_json_atomic

    check_name(w.name)
    d = Path(directory) if directory is not None else user_dir()
    out = write_json_atomic(d / f"{w.name}.json", w.to_dict())
    idx = read_index(d)
    if w.default:  # one default per arch
        for n, s in idx["entries"].items():
            if s["arch"] == w.arch and n != w.name and s.get("default"):
                raise ZooError(f"{d}: '{n}' is already the default entry of {w.arch}")
    idx["entries"][w.name] = _summary(w)
    for a in w.aliases:
        if a in idx["entries"]:
            raise ZooError(f"alias '{a}' of '{w.name}' is itself an entry")
        idx["aliases"][a] = w.name
    idx["entries"] = dict(sorted(idx["entries"].items()))
    idx["aliases"] = dict(sorted(idx["aliases"].items()))
    write_json_atomic(d / "index.json", idx)
    return out


def _caller_level() -> int:
    """stacklevel of the first frame outside anycost.zoo, so that the default warning filters
    (which show DeprecationWarning only for __main__ code) report the user's line."""
    import sys

    f, level = sys._getframe(1), 1
    while f is not None and str(f.f_globals.get("__name__", "")).startswith("anycost.zoo"):
        f, level = f.f_back, level + 1
    return level


def _canonical(name: str, zoo_dir=None, warn: bool = True) -> tuple[str, Path]:
    """(entry name, folder holding its record) for a name or a deprecated alias."""
    dirs = _record_dirs(zoo_dir)
    idxs = [(d, read_index(d)) for d in dirs]
    for d, idx in idxs:
        if name in idx["entries"]:
            return name, d
    for d, idx in idxs:
        if name in idx["aliases"]:
            new = idx["aliases"][name]
            if warn:
                warnings.warn(f"zoo name '{name}' is deprecated; use '{new}'", DeprecationWarning,
                              stacklevel=_caller_level())
            return new, d
    have = sorted({n for _, idx in idxs for n in idx["entries"]})
    close = difflib.get_close_matches(name, have + sorted({a for _, i in idxs for a in i["aliases"]}), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise KeyError(f"no zoo entry '{name}'{hint}; see `anycost zoo` or anycost.zoo.list_weights()")


def get_weights(name: str, zoo_dir: str | os.PathLike | None = None) -> Weights:
    """The record of entry ``name`` (an old name warns with ``DeprecationWarning``)."""
    name, d = _canonical(name, zoo_dir)
    p = d / f"{name}.json"
    try:
        rec = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ZooError(f"{p}: unreadable zoo record ({e})") from None
    try:
        w = Weights.from_dict(rec)
    except (TypeError, ValueError) as e:
        raise ZooError(f"{p}: bad zoo record ({e})") from None
    if w.name != name:
        raise ZooError(f"{p}: record is named '{w.name}', not '{name}'")
    return w


def list_weights(pattern: str = "*", zoo_dir: str | os.PathLike | None = None) -> list[Weights]:
    """Every entry (a local zoo folder's first, then the package's) whose name matches ``pattern``."""
    names: list[str] = []
    for d in _record_dirs(zoo_dir):
        names += [n for n in read_index(d)["entries"] if n not in names]
    return [get_weights(n, zoo_dir) for n in sorted(names) if fnmatch.fnmatch(n, pattern)]


def default_name(arch: str, zoo_dir: str | os.PathLike | None = None) -> str:
    """The entry ``create_model(arch, pretrained=True)`` loads."""
    entries = {}
    for d in reversed(_record_dirs(zoo_dir)):
        entries.update(read_index(d)["entries"])
    mine = sorted(n for n, s in entries.items() if s["arch"] == arch)
    if not mine:
        raise KeyError(f"no pretrained weights for '{arch}' in the zoo")
    flagged = [n for n in mine if entries[n].get("default")]
    if flagged:
        return flagged[0]
    if len(mine) == 1:
        return mine[0]
    raise KeyError(f"'{arch}' has several zoo entries and no default; pick a tag: "
                   + ", ".join(n.split(".", 1)[1] for n in mine))


# ---------------------------------------------------------------------------- files


def verify_file(path: Path, w: Weights, what: str | None = None) -> Path:
    """Raise :class:`IntegrityError` unless ``path`` has the record's size and sha256."""
    what = what or str(path)
    size = path.stat().st_size
    if size != w.size:
        raise IntegrityError(f"{what}: {size} bytes, but zoo entry '{w.name}' expects {w.size}: corrupt, truncated "
                             f"or from another release (delete it to fetch it again)")
    digest = file_sha256(path)
    if digest != w.sha256:
        raise IntegrityError(f"{what}: sha256 {digest[:16]}..., but zoo entry '{w.name}' expects "
                             f"{(w.sha256 or '')[:16]}...: corrupt or from another release (delete it to fetch it again)")
    return path


def download_url(w: Weights) -> str | None:
    base = os.environ.get("ANYCOST_ZOO_URL")
    return base.rstrip("/") + "/" + w.file if base else w.url


def weights_path(w: Weights, zoo_dir: str | os.PathLike | None = None, download: bool = True,
                 progress: bool = False) -> Path:
    """The verified local weights file of ``w`` (downloading it into the cache if needed)."""
    if w.file is None:
        raise ZooError(f"'{w.name}' is a cascade of {list(w.members)}: it has no weights file of its own")
    searched = []
    for d in (local_dir(zoo_dir), user_dir(), repo_zoo_dir(), cache_dir()):
        if d is None or str(d) in searched:
            continue
        p = d / w.file
        searched.append(str(d))
        if p.is_file():
            return verify_file(p, w)
    url = download_url(w)
    if not download or not url:
        raise ZooError(f"weights of '{w.name}' ({w.file}) not found in {', '.join(searched)}"
                       + ("" if url else " and the entry has no url"))
    return fetch(w, url, progress=progress)


def fetch(w: Weights, url: str, progress: bool = False) -> Path:
    """Download ``url`` into the cache as ``w.file``, verified before it is kept."""
    dest = cache_dir() / w.file
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{w.file}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            torch.hub.download_url_to_file(url, str(tmp), progress=progress)
        except Exception as e:  # URLError, HTTPError, OSError: say which file and what to do
            raise ZooError(f"could not download '{w.name}' from {url} ({type(e).__name__}: {e}); put {w.file} in "
                           f"$ANYCOST_ZOO or {dest.parent}, or set $ANYCOST_ZOO_URL to a mirror") from None
        verify_file(tmp, w, what=f"download of {url}")
        publishable(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# ---------------------------------------------------------------------------- safetensors


def half_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as float16 (the zoo's storage dtype); integer buffers unchanged."""
    return {k: (v.detach().half() if v.is_floating_point() else v.detach()) for k, v in state.items()}


def save_weights(path: str | os.PathLike, state: Mapping[str, torch.Tensor],
                 op_state: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write a safetensors file atomically: ``state`` under its own keys, ``op_state[point][key]``
    under ``op/<point>/<key>``. Tensors are written as given (call :func:`half_state` first)."""
    from safetensors.torch import save_file

    tensors = {}
    for k, v in state.items():
        if k.startswith(OP_PREFIX):
            raise ValueError(f"state key {k!r} collides with the op-state prefix {OP_PREFIX!r}")
        tensors[k] = v.detach().cpu().contiguous().clone()
    for op, d in (op_state or {}).items():
        if not op or "/" in op:
            raise ValueError(f"an operating point with op state needs a name without '/', got {op!r}")
        for k, v in d.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"op state {op!r}/{k!r} must be a tensor, got {type(v).__name__}")
            tensors[f"{OP_PREFIX}{op}/{k}"] = v.detach().cpu().contiguous().clone()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": WEIGHTS_FORMAT, **{str(k): str(v) for k, v in (metadata or {}).items()}})
        publishable(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(model state, op state) from a safetensors file. No pickle is involved."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ZooError(f"{path}: unreadable safetensors file ({e})") from None
    state, ops = {}, {}
    for k, v in tensors.items():
        if k.startswith(OP_PREFIX):
            op, _, key = k[len(OP_PREFIX):].partition("/")
            ops.setdefault(op, {})[key] = v
        else:
            state[k] = v
    return state, ops
