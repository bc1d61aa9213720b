"""Pre-training-like text for `forgetting`: the embedded Wikipedia and news samples, or the user's own text.

Two samples ship inside the ``gensim`` wheel's test data (DESIGN.md, "Embedded models and text"); they are
read as files, ``gensim`` itself is never imported:

- ``wiki``: ``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``, 106 real Wikipedia
  articles; the wiki markup is stripped with ``mwparserfromhell`` and the prose is kept paragraph by paragraph.
- ``news``: ``lee_background.cor``, 300 news articles of the Lee et al. (2005) corpus, one article a line.

Both texts are licensed CC BY-SA (Wikipedia: CC BY-SA 3.0; the Lee corpus is redistributed by gensim under
the same terms); every output that uses them says so (:data:`TEXT_LICENCE`).

A user's text is a UTF-8 file, a folder of ``.txt`` files (read in sorted order), or a local ``datasets``
dataset saved with ``save_to_disk`` that has a ``text`` column. The sample is deterministic: the same
paragraphs in the same order on every run (a fixed-seed shuffle of the paragraphs of the embedded samples so
that a short sample still covers many articles; a user's text in its own order), and it does not depend on
``--max-tokens``: a larger budget takes a longer prefix of the same sequence of paragraphs.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import importlib.util
import json
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from intrudim.errors import InputNotFoundError, IntrudimError
from intrudim.fileio import write_json_atomic

TEXT_KEYWORDS = ("wiki", "news")
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_FILE = "lee_background.cor"
GENSIM_INSTALL = "pip install --no-deps gensim==4.4.0"
TEXT_LICENCE = (
    "Wikipedia articles (CC BY-SA 3.0) and the Lee et al. news corpus as redistributed in gensim's test "
    "data (CC BY-SA); reuse must credit the sources and share alike."
)
SHUFFLE_SEED = 0
"""Seed of the paragraph order of the embedded samples (fixed: the sample is the same on every run)."""

MIN_PARAGRAPH_CHARS = 80
"""Wikipedia paragraphs shorter than this (headings left over, captions, list fragments) are dropped."""


@dataclass(frozen=True)
class TextSample:
    """Paragraphs of text in a fixed order, and where they came from (for reports and JSON)."""

    source: str  # "wiki", "news", or a path
    description: str
    paragraphs: tuple[str, ...]
    licence: str | None = None

    @property
    def characters(self) -> int:
        return sum(len(p) for p in self.paragraphs)

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "description": self.description, "licence": self.licence,
                "paragraphs": len(self.paragraphs), "characters": self.characters}  # fmt: skip


def gensim_test_data() -> Path:
    """The folder of gensim's test data, found without importing gensim."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise IntrudimError(
            f"The embedded texts 'wiki' and 'news' come from the gensim wheel's test data, and gensim is not "
            f"installed. Install it without its dependencies: {GENSIM_INSTALL}  (or give --text a local file, "
            f"a folder of .txt files, or a saved datasets dataset)."
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"
    for name in (WIKI_FILE, NEWS_FILE):
        if not (folder / name).is_file():
            raise IntrudimError(
                f"gensim is installed but its test data file '{folder / name}' is missing (a stripped install?). "
                f"Reinstall it: {GENSIM_INSTALL} --force-reinstall"
            )
    return folder


def _wiki_pages(path: Path) -> Iterator[tuple[str, str]]:
    """(title, wikitext) of every article (namespace 0, not a redirect) in a MediaWiki XML dump."""
    with bz2.open(path, "rb") as stream:
        title, namespace, redirect = "", "", False
        for _event, element in ET.iterparse(stream, events=("end",)):
            tag = element.tag.rsplit("}", 1)[-1]
            if tag == "title":
                title = element.text or ""
            elif tag == "ns":
                namespace = element.text or ""
            elif tag == "redirect":
                redirect = True
            elif tag == "text" and namespace == "0" and not redirect:
                yield title, element.text or ""
            elif tag == "page":
                title, namespace, redirect = "", "", False
                element.clear()


_SPACES = re.compile(r"[ \t]+")
_LEFTOVER = re.compile(r"^(Category:|File:|Image:|thumb\||\||\{|!|=)")
_REFS = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>|<[^>]{1,200}>", re.DOTALL | re.IGNORECASE)
_MARKUP = ("[[", "]]", "{{", "}}", "{|", "|}", "'''", "<ref", "</")


def wiki_paragraphs_of(wikitext: str) -> list[str]:
    """Prose paragraphs of one article: markup stripped (templates, tables, links, refs), headings and lists dropped."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    for tag in code.filter_tags(recursive=True):
        if str(tag.tag).lower() in ("ref", "gallery", "table", "math", "timeline", "imagemap"):
            try:
                code.remove(tag)
            except ValueError:
                pass
    text = _REFS.sub("", code.strip_code(normalize=True, collapse=True))
    paragraphs = []
    for block in text.split("\n"):
        block = _SPACES.sub(" ", block).strip()
        if len(block) < MIN_PARAGRAPH_CHARS or _LEFTOVER.match(block) or block.startswith(("*", "#", ";", ":")):
            continue
        if any(markup in block for markup in _MARKUP):  # markup the parser could not take apart (malformed source)
            continue
        paragraphs.append(block)
    return paragraphs


PARSED_FORMAT = "2"
"""Version of the paragraph extraction; part of the cache key of the parsed Wikipedia sample."""


def _text_cache_file(source: Path) -> Path:
    """Where the parsed paragraphs of ``source`` are cached (stripping the markup takes ~10 s on 2 cores)."""
    import mwparserfromhell

    from intrudim.weights.svd_cache import default_cache_dir

    stat = source.stat()
    key = f"{source.name}-{stat.st_size}-{stat.st_mtime_ns}-mwp{mwparserfromhell.__version__}-f{PARSED_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return default_cache_dir().parent / "text" / f"wiki-paragraphs-{digest}.json"


def _parsed_wiki_paragraphs(source: Path) -> list[str]:
    """Paragraphs of the Wikipedia dump in file order, from the cache when it holds them (written atomically)."""
    cache = _text_cache_file(source)
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if isinstance(cached, list) and all(isinstance(p, str) for p in cached):
            return cached
    except (OSError, json.JSONDecodeError):
        pass
    paragraphs = [p for _title, wikitext in _wiki_pages(source) for p in wiki_paragraphs_of(wikitext)]
    try:
        write_json_atomic(cache, paragraphs, indent=None)
    except OSError:
        pass  # an unwritable cache only costs the parse next time
    return paragraphs


@functools.lru_cache(maxsize=2)
def _embedded_paragraphs(keyword: str) -> tuple[str, ...]:
    folder = gensim_test_data()
    if keyword == "wiki":
        paragraphs = _parsed_wiki_paragraphs(folder / WIKI_FILE)
    else:
        lines = (folder / NEWS_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
        paragraphs = [_SPACES.sub(" ", line).strip() for line in lines if line.strip()]
    paragraphs = list(dict.fromkeys(paragraphs))  # the news corpus repeats some articles; keep the first
    random.Random(SHUFFLE_SEED).shuffle(paragraphs)
    return tuple(paragraphs)


def _split_paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise IntrudimError(
            f"--text file '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start}). Convert it to UTF-8 "
            f"or give another file."
        ) from None
    except OSError as exc:
        raise IntrudimError(f"Cannot read --text file '{path}': {exc.strerror or exc}.") from None


def _dataset_paragraphs(path: Path) -> list[str]:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise IntrudimError(f"Cannot load the datasets dataset saved in '{path}': {exc}") from None
    if isinstance(dataset, DatasetDict):
        split = "test" if "test" in dataset else "validation" if "validation" in dataset else sorted(dataset)[0]
        dataset = dataset[split]
    assert isinstance(dataset, Dataset)
    if "text" not in dataset.column_names:
        raise IntrudimError(
            f"The dataset in '{path}' has no 'text' column (columns: {', '.join(dataset.column_names)}). "
            f"Rename the column holding the text to 'text' (dataset.rename_column) and save it again."
        )
    return [str(t).strip() for t in dataset["text"] if t is not None and str(t).strip()]


def load_text(spec: str | Path = "wiki") -> TextSample:
    """The text named by ``--text``: ``wiki`` (default), ``news``, a file, a folder of .txt, or a saved dataset."""
    spec_str = str(spec)
    if spec_str in TEXT_KEYWORDS:
        paragraphs = _embedded_paragraphs(spec_str)
        description = (
            "Wikipedia sample (106 articles from gensim's test data, markup stripped with mwparserfromhell)"
            if spec_str == "wiki" else "news sample (Lee et al. corpus, 300 articles, from gensim's test data)"
        )  # fmt: skip
        return TextSample(spec_str, description, paragraphs, TEXT_LICENCE)
    path = Path(spec_str).expanduser()
    if not path.exists():
        if "/" not in spec_str and "." not in spec_str:
            raise IntrudimError(
                f"--text '{spec_str}' is not a known text ({', '.join(TEXT_KEYWORDS)}) and no such file or folder "
                f"exists. Use --text wiki (Wikipedia sample), --text news (news sample), a UTF-8 text file, a "
                f"folder of .txt files, or a datasets dataset saved with save_to_disk."
            )
        raise InputNotFoundError(f"--text '{path}' does not exist. Give a UTF-8 text file, a folder of .txt files, "
                                 f"a saved datasets dataset, or one of: {', '.join(TEXT_KEYWORDS)}.")  # fmt: skip
    if path.is_file():
        return TextSample(str(path), f"text file {path.name}", tuple(_split_paragraphs(_read_utf8(path))))
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        return TextSample(str(path), f"datasets dataset {path.name}", tuple(_dataset_paragraphs(path)))
    files = sorted(path.rglob("*.txt"))
    if not files:
        raise IntrudimError(
            f"--text folder '{path}' holds no .txt files and is not a saved datasets dataset (no dataset_info.json). "
            f"Put UTF-8 .txt files in it, or give a file."
        )
    paragraphs = [p for file in files for p in _split_paragraphs(_read_utf8(file))]
    return TextSample(str(path), f"{len(files)} .txt file(s) in {path.name}", tuple(paragraphs))


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREVIATIONS = re.compile(r"\b(Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Gen|Col|Lt|Sgt|Capt|Gov|Sen|Rep|No|vs|etc|Inc|Ltd|Co|Corp|Mt|"
                            r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|[A-Z])\.$")  # fmt: skip


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of a paragraph: split after . ! ? before a capital or digit, not after common abbreviations."""
    pieces: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(paragraph):
        candidate = paragraph[start : match.start()].strip()
        if _ABBREVIATIONS.search(candidate):
            continue
        if candidate:
            pieces.append(candidate)
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
        pieces.append(tail)
    return pieces


def adjacent_sentence_pairs(sample: TextSample, min_words: int = 4) -> list[tuple[str, str]]:
    """(sentence, next sentence) within each paragraph, in the sample's order; fragments under ``min_words`` dropped.

    Pairs do not overlap, and a pair whose sentence already appeared in an earlier pair is dropped: a sentence
    that occurs twice would be a false negative of the in-batch loss (MiniLM's training also kept every text
    once per batch).
    """
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for paragraph in sample.paragraphs:
        sentences = [s for s in split_sentences(paragraph) if len(s.split()) >= min_words]
        for i in range(0, len(sentences) - 1, 2):
            first, second = sentences[i], sentences[i + 1]
            if first in seen or second in seen or first == second:
                continue
            seen.update((first, second))
            pairs.append((first, second))
    return pairs
