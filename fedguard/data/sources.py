"""Text-classification datasets: the packaged SST-2 copy or any local CSV/TSV/JSON(L) file or folder.

Every loader returns :class:`TextDataset` splits with a ``text`` list and an integer ``label`` list, so the
rest of FedGuard never sees the source format. Nothing is downloaded.
"""

from __future__ import annotations

import csv
import gzip
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

SST2 = "sst2"
_SST2_FILES = {"train": "train.tsv.gz", "dev": "dev.tsv.gz"}
_SPLIT_STEMS = {"train": ("train",), "dev": ("dev", "validation", "valid", "test")}
_SUFFIXES = (".tsv", ".csv", ".json", ".jsonl", ".tsv.gz", ".csv.gz", ".jsonl.gz")


class DatasetError(ValueError):
    """The dataset cannot be used as configured (missing file, missing column, bad label)."""


@dataclass(frozen=True, eq=False)
class TextDataset:
    """Parallel lists of texts and integer class labels ``0..num_labels-1``."""

    text: list[str]
    label: list[int]

    def __len__(self) -> int:
        return len(self.text)

    def subset(self, indices: list[int]) -> TextDataset:
        return TextDataset([self.text[i] for i in indices], [self.label[i] for i in indices])

    def concat(self, other: TextDataset) -> TextDataset:
        """This data set's rows followed by ``other``'s."""
        return TextDataset(self.text + other.text, self.label + other.label)


@dataclass(frozen=True)
class DatasetSplits:
    """``train`` and an optional held-out ``dev`` split, with the label names in index order."""

    train: TextDataset
    dev: TextDataset | None
    label_names: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def packaged_data_dir(name: str) -> Path:
    """Folder of a data set shipped inside the ``fedguard`` package.

    A Flower app bundle carries only code and config files, so when the apps run from a bundle the data
    is found through the pip-installed ``fedguard`` distribution instead of next to this module.
    """
    here = Path(__file__).resolve().parent / name
    if (here / "PROVENANCE.md").exists() and any(here.glob("*.gz")):
        return here
    try:
        dist = importlib.metadata.distribution("fedguard")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        candidate = Path(str(dist.locate_file(f"fedguard/data/{name}")))
        if any(candidate.glob("*.gz")):
            return candidate
        direct_url = dist.read_text("direct_url.json")
        if direct_url:  # an editable install: the source tree holds the data
            url = json.loads(direct_url).get("url", "")
            if url.startswith("file://"):
                candidate = Path(url[len("file://"):]) / "fedguard" / "data" / name
                if any(candidate.glob("*.gz")):
                    return candidate
    raise DatasetError(
        f"packaged data set {name!r} not found next to {here.parent} nor in the installed fedguard "
        "distribution; install FedGuard with `pip install .` from a full clone"
    )


def load_dataset_splits(dataset: str, text_column: str, label_column: str) -> DatasetSplits:
    """Load ``dataset`` ('sst2' or a local path) into train/dev splits of texts and integer labels."""
    if dataset == SST2:
        folder = packaged_data_dir(SST2)
        files = {split: folder / name for split, name in _SST2_FILES.items()}
        if (text_column, label_column) != ("sentence", "label"):
            raise DatasetError("the packaged SST-2 has columns 'sentence' and 'label'; "
                               f"got text-column={text_column!r}, label-column={label_column!r}")
    else:
        files = split_files(Path(dataset).expanduser(), _SUFFIXES, SST2)
    raw = {split: _read_rows(path) for split, path in files.items()}
    for split, rows in raw.items():
        _check_columns(rows, files[split], text_column, label_column)
    labels = _label_vocabulary([row[label_column] for rows in raw.values() for row in rows])
    index = {name: i for i, name in enumerate(labels)}
    parts = {
        split: TextDataset([str(row[text_column]) for row in rows], [index[str(row[label_column]).strip()] for row in rows])
        for split, rows in raw.items()
    }
    return DatasetSplits(train=parts["train"], dev=parts.get("dev"), label_names=labels)


def split_files(path: Path, suffixes: tuple[str, ...], named: str) -> dict[str, Path]:
    """The split files of a local dataset: a file is the ``train`` split; a folder holds ``train.<suffix>``
    and optionally ``dev``/``validation``/``valid``/``test`` ``.<suffix>``. ``named`` is the packaged data
    set the error suggests instead (e.g. ``'sst2'``)."""
    if path.is_file():
        return {"train": path}
    if not path.is_dir():
        raise DatasetError(f"dataset={str(path)!r}: no such file or folder (use {named!r} or a local path)")
    found: dict[str, Path] = {}
    for split, stems in _SPLIT_STEMS.items():
        for stem in stems:
            matches = [path / f"{stem}{suffix}" for suffix in suffixes if (path / f"{stem}{suffix}").is_file()]
            if matches:
                found[split] = matches[0]
                break
    if "train" not in found:
        present = sorted(p.name for p in path.iterdir())
        raise DatasetError(f"dataset folder {path} has no train file (train{'/'.join(suffixes)}); it holds {present}")
    return found


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _read_rows(path: Path) -> list[dict[str, object]]:
    name = path.name.removesuffix(".gz")
    with _open_text(path) as handle:
        if name.endswith(".tsv"):
            return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        if name.endswith(".csv"):
            return list(csv.DictReader(handle))
        if name.endswith(".jsonl"):
            return [json.loads(line) for line in handle if line.strip()]
        if name.endswith(".json"):
            data = json.load(handle)
            if isinstance(data, dict):  # {"data": [...]} or column-oriented {"text": [...], ...}
                if "data" in data and isinstance(data["data"], list):
                    data = data["data"]
                else:
                    keys = list(data)
                    data = [dict(zip(keys, values)) for values in zip(*(data[k] for k in keys))]
            if not isinstance(data, list):
                raise DatasetError(f"{path}: expected a list of records")
            return data
    raise DatasetError(f"{path}: unsupported file type; use .tsv, .csv, .json or .jsonl (optionally .gz)")


def _check_columns(rows: list[dict[str, object]], path: Path, text_column: str, label_column: str) -> None:
    if not rows:
        raise DatasetError(f"{path}: no rows")
    columns = list(rows[0])
    for role, column in (("text-column", text_column), ("label-column", label_column)):
        if column not in rows[0]:
            raise DatasetError(f"{path}: {role}={column!r} not found; columns are {columns}")
    for i, row in enumerate(rows):
        if row.get(text_column) is None or row.get(label_column) is None:
            raise DatasetError(f"{path}: row {i + 1} lacks a value for {text_column!r} or {label_column!r}")


def _label_vocabulary(values: list[object]) -> tuple[str, ...]:
    names = sorted({str(v).strip() for v in values})
    if len(names) < 2:
        raise DatasetError(f"classification needs at least 2 distinct labels, found {names}")
    if all(name.lstrip("-").isdigit() for name in names):
        return tuple(str(n) for n in sorted(int(n) for n in names))
    return tuple(names)
