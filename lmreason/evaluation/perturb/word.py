"""Synonym substitution, and the meaning check every substituted sentence must pass.

Synonym sources (tried in the configured order, candidates merged):
- `EmbeddingNeighbours`: nearest neighbours of a word in the packaged encoder's input-embedding
  matrix (all-MiniLM-L6-v2's 30,522 WordPiece rows; cosine). Always available offline. Its
  neighbours are related words, not all synonyms (good -> bad is a close neighbour): the meaning
  check is what keeps an antonym out.
- `WordNetSynonyms`: lemma names of the word's WordNet synsets through nltk, where nltk and its
  wordnet data are installed (`python -m nltk.downloader wordnet`, or Debian's wordnet-base with
  NLTK_DATA pointing at it). Absent: skipped, said once.

`SentenceEncoder` is the sentence-transformers recipe of all-MiniLM-L6-v2 (mean pooling of the
last layer over real tokens, L2-normalised); `MeaningCheck` accepts a candidate when the cosine of
its embedding with the original's is >= the threshold (default 0.85).
"""

from __future__ import annotations

import re

import numpy as np

WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
# Function words carry the grammar, not the content: never substituted (nor counted as attack targets).
STOPWORDS = frozenset(
    """
a about above after again against all am an and any are as at be because been before being below between both but by
can could did do does doing down during each few for from further had has have having he her here hers herself him
himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or other
our ours ourselves out over own same she should so some such than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which while who whom why will
with would you your yours yourself yourselves isn't wasn't don't doesn't didn't can't won't it's
""".split()
)


# The meaning check does not catch antonyms: all-MiniLM-L6-v2 puts "it 's too bad that the helping hand
# he uses ..." and the same sentence with "good" at cosine 0.993, and the input-embedding neighbours of
# a word include its opposite (good -> bad, best -> worst). A greedy attack selects exactly those swaps
# (about half of its successes on SST-2 before this filter). So a candidate that is a known opposite of
# the word is never offered: the pairs below (polar evaluative words, frequency, quantity, direction),
# a negating prefix (pleasant/unpleasant, understanding/misunderstanding), and WordNet's antonyms where
# nltk has its data. A list, not a model: an opposite it does not know still gets through.
ANTONYM_PAIRS = frozenset(
    frozenset(pair.split())
    for pair in """
good bad|better worse|best worst|well badly|well poorly|great terrible|great awful|excellent terrible|excellent poor
always never|often rarely|often seldom|commonly rarely|frequently rarely|usually rarely|sometimes never|ever never
right wrong|correct wrong|true false|real fake|love hate|loved hated|loves hates|loving hating|like dislike
liked disliked|likes dislikes|success failure|successful failed|successes failures|succeed fail|succeeds fails
succeeded failed|win lose|wins loses|won lost|winner loser|gain loss|increase decrease|increases decreases
increasing decreasing|increased decreased|rise fall|positive negative|optimistic pessimistic|optimism pessimism
happy sad|happy unhappy|joy sorrow|funny unfunny|funny boring|interesting boring|interesting dull|exciting boring
exciting dull|entertaining boring|fascinating boring|fast slow|faster slower|fastest slowest|quick slow|quickly slowly
easy hard|easy difficult|strong weak|stronger weaker|strongest weakest|strength weakness|high low|higher lower
highest lowest|rich poor|beautiful ugly|beauty ugliness|clever stupid|smart stupid|smart dumb|wise foolish
intelligent stupid|brilliant dull|brilliant stupid|bright dull|bright dark|light dark|hot cold|warm cold|early late
first last|more less|most least|many few|much little|big small|large small|bigger smaller|biggest smallest|long short
longer shorter|old new|old young|older younger|best awful|wonderful terrible|wonderful awful|amazing awful
perfect flawed|fresh stale|original derivative|clever dumb|deep shallow|rich thin|safe dangerous|calm tense|alive dead
life death|friend enemy|hero villain|beginning end|begin end|start end|start finish|open closed|full empty|top bottom
up down|above below|inside outside|before after|with without|yes no|all none|everything nothing|everyone nobody
something nothing|worth worthless|useful useless|meaningful meaningless|careful careless|hopeful hopeless
""".replace("\n", "|").split("|")
    if pair.strip()
)
NEGATING_PREFIXES = ("un", "in", "im", "ir", "il", "dis", "mis", "non", "non-", "anti", "a")


def is_antonym(a: str, b: str) -> bool:
    """True for a known opposite pair (either order, any case) or a word and its negating-prefix form."""
    a, b = a.lower(), b.lower()
    if frozenset((a, b)) in ANTONYM_PAIRS:
        return True
    return any(b == p + a or a == p + b for p in NEGATING_PREFIXES)


def content_words(text: str) -> list[re.Match]:
    """Word spans that may be substituted: letters only, not a function word."""
    return [m for m in WORD.finditer(text) if m.group().lower() not in STOPWORDS and len(m.group()) > 1]


def match_case(new: str, old: str) -> str:
    if old.isupper() and len(old) > 1:
        return new.upper()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


def _same_stem(a: str, b: str) -> bool:
    """film/films, boring/bored, story/stories: forms of one word are not substitutes for it.

    The same stem here: a common prefix of at least 3 letters and of all but 2 letters of the shorter word.
    """
    common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        common += 1
    return common >= max(3, min(len(a), len(b)) - 2)


class EmbeddingNeighbours:
    """Nearest whole-word neighbours in an input-embedding matrix. `embeddings`: (V, D); `vocab`: V tokens."""

    name = "embedding"

    def __init__(self, embeddings: np.ndarray, vocab: list[str], k: int = 8, min_similarity: float = 0.4):
        self.k, self.min_similarity = k, min_similarity
        self.index = {token: i for i, token in enumerate(vocab)}
        self.vocab = vocab
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        self.unit = (embeddings / np.maximum(norms, 1e-12)).astype(np.float32)  # (V, D)
        # only whole lower-case words may come back (no ##pieces, [unused], digits or function words)
        self.allowed = np.array([t.isalpha() and t.islower() and len(t) > 2 and t not in STOPWORDS for t in vocab])
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_encoder(cls, encoder: SentenceEncoder, **kwargs) -> EmbeddingNeighbours:
        weights = encoder.model.get_input_embeddings().weight.detach().float().cpu().numpy()
        vocab = encoder.tokenizer.convert_ids_to_tokens(list(range(weights.shape[0])))
        return cls(weights, vocab, **kwargs)

    def synonyms(self, word: str) -> list[str]:
        key = word.lower()
        if key not in self._cache:
            self.prefetch([key])
        return self._cache[key]

    def prefetch(self, words) -> None:
        """Neighbours of many words at once: one (chunk, D) @ (D, V) product per 256 words, not a pass per word."""
        todo = list(dict.fromkeys(w.lower() for w in words if w.lower() not in self._cache))
        for key in [w for w in todo if w not in self.index or w in STOPWORDS]:
            self._cache[key] = []
        todo = [w for w in todo if w in self.index and w not in STOPWORDS]
        top = min(self.k * 4, len(self.vocab) - 1)  # room for the inflections dropped below
        for start in range(0, len(todo), 256):
            chunk = todo[start : start + 256]
            sims = self.unit[[self.index[w] for w in chunk]] @ self.unit.T  # (chunk, V)
            sims[:, ~self.allowed] = -1.0
            best = np.argpartition(-sims, top, axis=1)[:, :top]  # (chunk, top), unordered
            for row, key in enumerate(chunk):
                ranked = best[row][np.argsort(-sims[row, best[row]])]
                found: list[str] = []
                for j in ranked:
                    if sims[row, j] < self.min_similarity or len(found) == self.k:
                        break
                    if not _same_stem(self.vocab[j], key):
                        found.append(self.vocab[j])
                self._cache[key] = found


class WordNetSynonyms:
    """WordNet lemma names through nltk; `available()` is False without nltk or its wordnet data."""

    name = "wordnet"

    def __init__(self, k: int = 8):
        self.k = k
        self.opposites: dict[str, set] = {}  # word -> its WordNet antonyms (filled as words are looked up)
        self._wordnet = None
        self._cache: dict[str, list[str]] = {}

    def available(self) -> bool:
        try:
            from nltk.corpus import wordnet

            wordnet.synsets("good")  # raises LookupError when the data is missing
        except (ImportError, LookupError, OSError):
            return False
        self._wordnet = wordnet
        return True

    def synonyms(self, word: str) -> list[str]:
        key = word.lower()
        if key not in self._cache:
            found: list[str] = []
            if self._wordnet is not None and key not in STOPWORDS:
                opposites = set()
                for synset in self._wordnet.synsets(key):
                    for lemma in getattr(synset, "lemmas", lambda: [])():
                        opposites |= {a.name().lower() for a in lemma.antonyms()}
                self.opposites[key] = opposites
                for synset in self._wordnet.synsets(key):
                    for lemma in synset.lemma_names():
                        lemma = lemma.lower()
                        if lemma.isalpha() and lemma != key and lemma not in found and not _same_stem(lemma, key):
                            found.append(lemma)
            self._cache[key] = found[: self.k]
        return self._cache[key]


class Synonyms:
    """Candidates from several sources, in order, without repeats and without known opposites (`is_antonym`,
    WordNet antonyms); `antonyms_dropped` counts the (word, opposite) pairs held back."""

    def __init__(self, sources: list):
        self.sources = sources
        self.dropped: set[tuple[str, str]] = set()

    @property
    def antonyms_dropped(self) -> int:
        return len(self.dropped)

    def _opposite(self, word: str, candidate: str) -> bool:
        if is_antonym(word, candidate):
            return True
        return any(candidate in getattr(source, "opposites", {}).get(word.lower(), ()) for source in self.sources)

    def prefetch(self, words) -> None:
        for source in self.sources:
            if hasattr(source, "prefetch"):
                source.prefetch(words)

    def __call__(self, word: str) -> list[str]:
        out: list[str] = []
        offered = [source.synonyms(word) for source in self.sources]  # first: a WordNet lookup also fills its antonyms
        for candidates in offered:
            for candidate in candidates:
                if candidate in out:
                    continue
                if self._opposite(word, candidate):
                    self.dropped.add((word.lower(), candidate))
                    continue
                out.append(candidate)
        return out


class SentenceEncoder:
    """Mean-pooled, L2-normalised last-layer embeddings of a BERT-like encoder (sentence-transformers' recipe)."""

    def __init__(self, model, tokenizer, device="cpu", batch_size: int = 64, max_length: int = 128):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.batch_size, self.max_length = batch_size, max_length
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, name_or_path: str, device="cpu", cache_dir=None, **kwargs) -> SentenceEncoder:
        """Raises UserError: the model cannot be resolved (see models.packaged)."""
        from transformers import AutoModel, AutoTokenizer

        from lmreason.models.packaged import resolve_model_path

        path = resolve_model_path(name_or_path, cache_dir)
        model = AutoModel.from_pretrained(path).to(device).eval()
        return cls(model, AutoTokenizer.from_pretrained(path), device, **kwargs)

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, D) unit vectors, batched longest-first; repeated texts are encoded once."""
        import torch

        from lmreason.training.batching import sorted_batches

        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            encoded = self.tokenizer(todo, truncation=True, max_length=self.max_length)
            lengths = np.array([len(ids) for ids in encoded["input_ids"]])
            keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
            with torch.inference_mode():
                for batch in sorted_batches(lengths, self.batch_size):
                    padded = self.tokenizer.pad(
                        {k: [encoded[k][i] for i in batch] for k in keys},
                        padding_side="right",
                        return_attention_mask=True,
                        return_tensors="pt",
                    )
                    padded = {k: v.to(self.device) for k, v in padded.items()}
                    hidden = self.model(**padded).last_hidden_state.float()  # (B, T, D)
                    mask = padded["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                    unit = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
                    for row, i in enumerate(batch):
                        self._cache[todo[i]] = unit[row]
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 1))


class MeaningCheck:
    """Accept a reworded sentence when cos(embed(original), embed(candidate)) >= threshold."""

    def __init__(self, encoder: SentenceEncoder, threshold: float = 0.85):
        self.encoder, self.threshold = encoder, threshold

    def similarities(self, originals: list[str], candidates: list[str]) -> np.ndarray:
        """(N,) cosine per (original, candidate) pair, all encoded in one batched pass."""
        if not candidates:
            return np.zeros(0)
        vectors = self.encoder.encode(list(originals) + list(candidates))
        n = len(originals)
        return np.einsum("nd,nd->n", vectors[:n], vectors[n:])

    def accept(self, originals: list[str], candidates: list[str]) -> np.ndarray:
        return self.similarities(originals, candidates) >= self.threshold


def substitute_synonyms(text: str, rng, synonyms, rate: float = 0.2) -> tuple[str, bool]:
    """About `rate` of the content words (at least one) replaced by a random synonym; applied=False
    when no content word has one. The meaning check is applied afterwards, in a batch."""
    spans = [m for m in content_words(text) if synonyms(m.group())]
    if not spans:
        return text, False
    count = min(len(spans), max(1, round(rate * len(content_words(text)))))
    chosen = sorted(rng.sample(spans, count), key=lambda m: m.start())
    pieces, at = [], 0
    for m in chosen:
        pieces += [text[at : m.start()], match_case(rng.choice(synonyms(m.group())), m.group())]
        at = m.end()
    out = "".join(pieces) + text[at:]
    return out, out != text


WORDNET_MISSING = (
    "WordNet skipped (nltk or its wordnet data is not installed; "
    "python -m nltk.downloader wordnet, or NLTK_DATA=<dir of Debian's wordnet-base>)"
)


def build_synonyms(sources, load_encoder, k: int = 8, min_similarity: float = 0.4) -> tuple[Synonyms, list[str]]:
    """The synonym sources named in `sources` (embedding, wordnet; in that order of preference), and notes
    on the ones skipped. `load_encoder()` gives the SentenceEncoder whose input embeddings are searched:
    called only when `embedding` is named."""
    found, notes = [], []
    for name in sources:
        if name == "embedding":
            found.append(EmbeddingNeighbours.from_encoder(load_encoder(), k=k, min_similarity=min_similarity))
        elif name == "wordnet":
            source = WordNetSynonyms(k=k)
            if source.available():
                found.append(source)
            else:
                notes.append(f"word synonyms: {WORDNET_MISSING}")
    return Synonyms(found), notes
