"""Where raw text comes from: the built-in python-docs corpus, local files, or a named Hugging Face dataset.

Every source is loaded into a `datasets.Dataset` (or `IterableDataset` when streaming) with one column, "text",
plus a JSON-able description that prepare writes into the manifest. Bad input (a glob that matches nothing, a
missing text field, an unreachable hub dataset) stops with one `error: ...` line that names it.

Hub sources are a small table; `--dataset/--subset/--split/--text_field` override an entry and `--path` points
the very same loading code at local files with the dataset's layout (a mirror, or test fixtures).
"""

import ast
import functools
import glob
import os
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets

from lm.errors import UserError


@dataclass(frozen=True)
class HubSource:
    """One entry of the hub table: what `datasets.load_dataset` needs and which column holds the text."""

    dataset: str
    config: str | None
    split: str = "train"
    text_field: str = "text"


HUB_SOURCES = {
    "fineweb": HubSource("HuggingFaceFW/fineweb", "sample-10BT"),
    "fineweb-edu": HubSource("HuggingFaceFW/fineweb-edu", "sample-10BT"),
    "dclm": HubSource("mlfoundations/dclm-baseline-1.0", None),
    "finemath": HubSource("HuggingFaceTB/finemath", "finemath-4plus"),
    "cosmopedia": HubSource("HuggingFaceTB/smollm-corpus", "cosmopedia-v2"),
}
SOURCE_NAMES = ("python-docs", "local", *HUB_SOURCES)

# file suffix -> datasets' packaged builder
BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}

Text = datasets.Dataset | datasets.IterableDataset


def load_source(
    source: str,
    path: str | None = None,
    dataset: str | None = None,
    subset: str | None = None,
    split: str | None = None,
    text_field: str | None = None,
    streaming: bool = False,
) -> tuple[Text, dict]:
    """Load `source` as a one-column ("text") dataset and describe it for the manifest."""
    if source == "python-docs":
        docs = python_docstrings()
        description = {"source": source, "python": sys.version.split()[0], "stdlib": sysconfig.get_paths()["stdlib"]}
        return datasets.Dataset.from_dict({"text": list(docs)}), description
    if source == "local":
        if path is None:
            raise UserError("source 'local' needs --path (files or globs of .txt, .jsonl, .parquet)")
        files = expand_path(path)
        field = text_field or "text"
        ds = load_files(files, split or "train", streaming)
        description = {"source": source, "data_files": files, "text_field": field, "streaming": streaming}
        return select_text(ds, field, path), description
    if source not in HUB_SOURCES:
        raise UserError(f"unknown source '{source}' (choose from {', '.join(SOURCE_NAMES)})")
    entry = HubSource(
        dataset=dataset or HUB_SOURCES[source].dataset,
        config=subset if subset is not None else HUB_SOURCES[source].config,
        split=split or HUB_SOURCES[source].split,
        text_field=text_field or HUB_SOURCES[source].text_field,
    )
    description = {"source": source, **asdict(entry), "streaming": streaming}
    if path is not None:  # same columns, local files: a mirror of the hub dataset
        files = expand_path(path)
        description["data_files"] = files
        return select_text(load_files(files, "train", streaming), entry.text_field, path), description
    try:
        ds = datasets.load_dataset(entry.dataset, entry.config, split=entry.split, streaming=streaming)
    except Exception as err:  # offline, gated, renamed...: one line, the fix is --path or an override
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(
            f"could not load hub dataset '{entry.dataset}' ({entry.config}, split {entry.split}): "
            f"{type(err).__name__}: {first_line}; pass --path to local copies of its files"
        ) from None
    return select_text(ds, entry.text_field, entry.dataset), description


def expand_path(path: str) -> list[str]:
    """Comma-separated files or globs -> sorted, existing files of one kind."""
    files: list[str] = []
    for pattern in path.split(","):
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise UserError(f"--path '{pattern}' matches no files")
        files.extend(matches)
    suffixes = {Path(f).suffix for f in files}
    unknown = suffixes - BUILDERS.keys()
    if unknown:
        raise UserError(f"--path '{path}': unsupported file type {sorted(unknown)} (use .txt, .jsonl, .parquet)")
    if len({BUILDERS[s] for s in suffixes}) > 1:
        raise UserError(f"--path '{path}' mixes file types {sorted(suffixes)}; prepare each kind separately")
    return files


def load_files(files: list[str], split: str, streaming: bool) -> Text:
    """Read local files with datasets' packaged builders (text: one document per file)."""
    if all(os.path.getsize(f) == 0 for f in files):
        raise UserError(f"{', '.join(files)}: empty corpus (all files are empty)")
    builder = BUILDERS[Path(files[0]).suffix]
    kwargs = {"sample_by": "document"} if builder == "text" else {}
    try:
        return datasets.load_dataset(builder, data_files={split: files}, split=split, streaming=streaming, **kwargs)
    except Exception as err:  # malformed json/parquet: datasets raises deep, varied errors
        raise UserError(f"could not read {files[0]} (or another of --path): {type(err).__name__}: {err}") from None


def select_text(ds: Text, field: str, where: str) -> Text:
    """Keep only the text column (renamed "text"), after checking it exists and holds strings."""
    if ds.features is not None:
        columns = {name: getattr(feature, "dtype", str(feature)) for name, feature in ds.features.items()}
    else:  # streaming json: the schema is known only after reading a row
        first = next(iter(ds), None) or {}
        columns = {name: "string" if isinstance(value, str) else type(value).__name__ for name, value in first.items()}
    if columns and field not in columns:
        raise UserError(f"text field '{field}' not found in '{where}' (columns: {', '.join(columns)})")
    if columns and columns[field] not in ("string", "large_string"):
        raise UserError(f"text field '{field}' in '{where}' holds {columns[field]}, not text")
    ds = ds.select_columns([field])
    return ds.rename_column(field, "text") if field != "text" else ds


@functools.cache
def python_docstrings() -> tuple[str, ...]:
    """Module, class and function docstrings of this interpreter's standard library, in a fixed order.

    Files are visited in sorted path order and each file's nodes in `ast.walk` order, so the corpus is the
    same on every run with the same Python. Tests and installed packages are skipped. Cached: parsing the
    stdlib takes a few seconds.
    """
    files = []
    for folder, subfolders, names in os.walk(sysconfig.get_paths()["stdlib"]):
        subfolders[:] = [d for d in subfolders if d not in SKIP_DIRS]  # prune: site-packages can be huge
        files += [Path(folder, name) for name in names if name.endswith(".py")]
    files.sort()
    docs = []
    for file in files:
        try:
            tree = ast.parse(file.read_bytes())
        except (SyntaxError, ValueError):  # a few stdlib files are deliberately not valid Python
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    docs.append(doc)
    return tuple(docs)
