"""Where raw text comes from: the built-in python-docs corpus, local files, or a named Hugging Face dataset.

Every source is read as a stream, a `datasets.IterableDataset` with one column, "text", plus a JSON-able
description that prepare writes into the manifest. Streaming is what makes a hub dataset safe: prepare reads only
the files it tokenizes (DCLM-baseline is several trillion tokens; `--max_tokens` stops the download too), and
`IterableDataset.state_dict()` lets an interrupted prepare continue mid-stream. Bad input (a glob that matches
nothing, a missing text field, an unreachable hub dataset, a full download of a hub dataset) stops with one
`error: ...` line that names it.

Hub sources are a small table; `--dataset/--subset/--split/--text_field/--revision` override an entry. The hub
revision is resolved to its commit before reading, read at that commit and recorded, so the manifest says exactly
which data it holds. `--path` points the same builders at local files laid out like the dataset (a mirror, or
test fixtures); `--dataset` may also name a local copy of the dataset's repository.

Files: .txt (one document per file), .json/.jsonl, .parquet; text and JSON files may be compressed (.gz, .zst,
...), as the hub ships them (DCLM: `*.jsonl.zst`, C4: `*.json.gz`): datasets decompresses them through fsspec.
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
    "c4": HubSource("allenai/c4", "en"),
    "finemath": HubSource("HuggingFaceTB/finemath", "finemath-4plus"),
    "cosmopedia": HubSource("HuggingFaceTB/smollm-corpus", "cosmopedia-v2"),
}
SOURCE_NAMES = ("python-docs", "local", "hub", *HUB_SOURCES)

# file suffix -> datasets' packaged builder; text and JSON may carry a compression suffix as well
BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
COMPRESSIONS = (".gz", ".zst", ".bz2", ".xz", ".lz4")
FILE_TYPES = ".txt, .json, .jsonl, .parquet; text and JSON also compressed (.gz, .zst, .bz2, .xz, .lz4)"
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def load_source(
    source: str,
    path: str | None = None,
    dataset: str | None = None,
    subset: str | None = None,
    split: str | None = None,
    text_field: str | None = None,
    revision: str | None = None,
    streaming: bool = True,
) -> tuple[datasets.IterableDataset, dict]:
    """Open `source` as a one-column ("text") stream and describe it for the manifest.

    `streaming=False` reads local files into datasets' Arrow cache first (then streams that); for a hub dataset it
    would download every file before the first token, so it is refused.
    """
    if source == "python-docs":
        docs = python_docstrings()
        description = {"source": source, "python": sys.version.split()[0], "stdlib": sysconfig.get_paths()["stdlib"]}
        return datasets.Dataset.from_dict({"text": list(docs)}).to_iterable_dataset(), description
    if source == "local":
        if path is None:
            raise UserError(f"source 'local' needs --path (files or globs of {FILE_TYPES})")
        files = expand_path(path)
        field = text_field or "text"
        ds = load_files(files, split or "train", streaming)
        description = {"source": source, "data_files": files, "text_field": field, "streaming": streaming}
        return select_text(ds, field, path), description
    if source == "hub":  # any hub dataset with a text column: --dataset names it
        if dataset is None:
            raise UserError("source 'hub' needs --dataset (a hub dataset id, e.g. roneneldan/TinyStories)")
        named = HubSource(dataset, None)
    elif source in HUB_SOURCES:
        named = HUB_SOURCES[source]
    else:
        raise UserError(f"unknown source '{source}' (choose from {', '.join(SOURCE_NAMES)})")
    entry = HubSource(
        dataset=dataset or named.dataset,
        config=subset if subset is not None else named.config,
        split=split or named.split,
        text_field=text_field or named.text_field,
    )
    description = {"source": source, **asdict(entry), "streaming": streaming}
    if path is not None:  # same columns, local files: a mirror of the hub dataset
        files = expand_path(path)
        description["data_files"] = files
        return select_text(load_files(files, "train", streaming), entry.text_field, path), description
    if not streaming:
        raise UserError(
            f"--streaming false would download all of '{entry.dataset}' before the first token (and before "
            "--max_tokens applies); hub sources are streamed: drop --streaming false, or pass --path to files you "
            "downloaded yourself"
        )
    try:
        description["revision"] = hub_revision(entry.dataset, revision)
        ds = datasets.load_dataset(
            entry.dataset, entry.config, split=entry.split, streaming=True, revision=description["revision"]
        )
    except Exception as err:  # offline, gated, renamed...: one line, the fix is --path or an override
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(
            f"could not load hub dataset '{entry.dataset}' ({entry.config}, split {entry.split}): "
            f"{type(err).__name__}: {first_line}; pass --path to local copies of its files"
        ) from None
    return select_text(ds, entry.text_field, entry.dataset), description


def hub_revision(dataset: str, revision: str | None) -> str | None:
    """The commit sha that `revision` (None: the default branch) of a hub dataset points at now.

    None for a local copy of a dataset repository (a directory), which has no hub revision.
    """
    if os.path.isdir(dataset):
        return None
    from huggingface_hub import HfApi  # a dependency of datasets

    return HfApi().dataset_info(dataset, revision=revision).sha


def file_builder(path: str) -> str | None:
    """The datasets builder that reads `path` ("json" for x.jsonl.zst), or None for an unsupported file."""
    suffixes = Path(path).suffixes
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] == ".parquet":
            return None  # parquet compresses inside the file
    return BUILDERS.get(suffixes[-1]) if suffixes else None


def expand_path(path: str) -> list[str]:
    """Comma-separated files or globs -> sorted, existing files of one kind."""
    files: list[str] = []
    for pattern in path.split(","):
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise UserError(f"--path '{pattern}' matches no files")
        files.extend(matches)
    unknown = sorted({"".join(Path(f).suffixes[-2:]) or Path(f).name for f in files if file_builder(f) is None})
    if unknown:
        raise UserError(f"--path '{path}': unsupported file type {unknown} (use {FILE_TYPES})")
    if len({file_builder(f) for f in files}) > 1:
        kinds = sorted({"".join(Path(f).suffixes[-2:]) for f in files})
        raise UserError(f"--path '{path}' mixes file types {kinds}; prepare each kind separately")
    return files


def load_files(files: list[str], split: str, streaming: bool) -> datasets.IterableDataset:
    """Read local files with datasets' packaged builders (text: one document per file) as a stream."""
    if all(os.path.getsize(f) == 0 for f in files):
        raise UserError(f"{', '.join(files)}: empty corpus (all files are empty)")
    builder = file_builder(files[0])
    kwargs = {"sample_by": "document"} if builder == "text" else {}
    try:
        ds = datasets.load_dataset(builder, data_files={split: files}, split=split, streaming=streaming, **kwargs)
    except Exception as err:  # malformed json/parquet: datasets raises deep, varied errors
        raise UserError(f"could not read {files[0]} (or another of --path): {type(err).__name__}: {err}") from None
    return ds if streaming else ds.to_iterable_dataset()


def not_utf8(path: str | None, err: UnicodeDecodeError) -> UserError:
    """One line naming the first line of `path`'s files that is not UTF-8, for a decode error raised deep inside
    datasets or pyarrow (or a tokenizer process) without a file name; the files are read again to find it.

    No option replaces the bad bytes instead: datasets' JSON reader has none for UTF-8, and a silent U+FFFD in the
    training data is worse than a conversion the user runs and sees (iconv).
    """
    import fsspec  # a dependency of datasets; reads compressed files too

    for file in expand_path(path) if path else []:
        with fsspec.open(file, "rb", compression="infer") as f:
            for number, line in enumerate(f, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    return UserError(
                        f"{file} line {number} is not UTF-8 (byte {line[bad.start]:#04x} at column {bad.start + 1}): "
                        "convert it, e.g. `iconv -f latin1 -t utf-8` (from its encoding) or `iconv -c -f utf-8 -t "
                        "utf-8` (drops the bytes that are not UTF-8), then prepare again"
                    )
    return UserError(f"the source holds text that is not UTF-8 ({err}): convert it to UTF-8 and prepare again")


def select_text(ds: datasets.IterableDataset, field: str, where: str) -> datasets.IterableDataset:
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
