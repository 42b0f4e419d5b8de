"""EDA text augmentation with an offline WordNet synonym source.

Paper: Wei & Zou, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text
Classification Tasks", EMNLP 2019 (arXiv:1901.11196): synonym replacement, random insertion,
random swap and random deletion, each touching a share ``alpha`` of the words. CleanCLIP uses it
for its in-modal text term.

Synonyms come from the WordNet 3.0 database files (``data.noun``, ``data.verb``, ``data.adj``,
``data.adv``) that Debian's ``wordnet-base`` package installs in ``/usr/share/wordnet``
(``make test``/``make demo`` install it). The files are plain text: each synset line lists its
word count (hex) and words; two words are synonyms when they share a synset. No corpus download,
no NLTK data path.
"""

from __future__ import annotations

import functools
import logging
import random
from pathlib import Path

from poisonlab.errors import InputError

log = logging.getLogger(__name__)
DEFAULT_WORDNET = Path("/usr/share/wordnet")
POS_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
STOP_WORDS = frozenset("a an the of on in at to is are there this that and or with for by it its".split())


@functools.lru_cache(maxsize=4)
def load_synonyms(folder: str = str(DEFAULT_WORDNET)) -> dict[str, tuple[str, ...]]:
    """Word -> sorted synonyms (single words only), read from WordNet ``data.*`` files.

    Raises:
        InputError: none of the data files is in ``folder``.
    """
    root = Path(folder)
    files = [root / f for f in POS_FILES if (root / f).is_file()]
    if not files:
        raise InputError(f"no WordNet data files in {root}; install Debian's wordnet-base (make test does)")
    groups: dict[str, set[str]] = {}
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" "):
                    continue
                fields = line.split()
                count = int(fields[3], 16)
                words = [w.split("(")[0].lower() for w in fields[4 : 4 + 2 * count : 2]]
                words = [w for w in words if "_" not in w and w.isalpha()]
                for w in words:
                    groups.setdefault(w, set()).update(x for x in words if x != w)
    return {w: tuple(sorted(s)) for w, s in groups.items() if s}


class EDA:
    """Easy Data Augmentation on a caption, every random choice from ``rng``.

    Args:
        alpha: share of words changed by each operation (CleanCLIP: 0.1 each).
        wordnet: folder with the WordNet data files.
    """

    def __init__(self, alpha: float = 0.1, wordnet: str | Path = DEFAULT_WORDNET) -> None:
        self.alpha = alpha
        self.synonyms = load_synonyms(str(wordnet))

    def synonym_replace(self, words: list[str], n: int, rng: random.Random) -> list[str]:
        out = list(words)
        candidates = [i for i, w in enumerate(out) if w not in STOP_WORDS and self.synonyms.get(w.lower())]
        rng.shuffle(candidates)
        for i in candidates[:n]:
            out[i] = rng.choice(self.synonyms[out[i].lower()])
        return out

    def random_insert(self, words: list[str], n: int, rng: random.Random) -> list[str]:
        out = list(words)
        pool = [w for w in words if w.lower() not in STOP_WORDS and self.synonyms.get(w.lower())]
        for _ in range(n if pool else 0):
            out.insert(rng.randint(0, len(out)), rng.choice(self.synonyms[rng.choice(pool).lower()]))
        return out

    @staticmethod
    def random_swap(words: list[str], n: int, rng: random.Random) -> list[str]:
        out = list(words)
        for _ in range(n if len(out) > 1 else 0):
            i, j = rng.randrange(len(out)), rng.randrange(len(out))
            out[i], out[j] = out[j], out[i]
        return out

    def random_delete(self, words: list[str], rng: random.Random) -> list[str]:
        kept = [w for w in words if rng.random() > self.alpha]
        return kept or [rng.choice(words)]

    def __call__(self, caption: str, rng: random.Random) -> str:
        """One augmented caption: one EDA operation chosen at random, as in the paper's code."""
        words = caption.replace(".", " ").split()
        if not words:
            return caption
        n = max(1, int(self.alpha * len(words)))
        op = rng.randrange(4)
        if op == 0:
            words = self.synonym_replace(words, n, rng)
        elif op == 1:
            words = self.random_insert(words, n, rng)
        elif op == 2:
            words = self.random_swap(words, n, rng)
        else:
            words = self.random_delete(words, rng)
        return " ".join(words)
