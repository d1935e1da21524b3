"""Cut streaming reply text into sentences for TTS, as the text arrives.

The agent's reply streams in as arbitrary deltas; each finished sentence goes to Hamsa TTS
at once so the caller hears the first sentence while the agent is still writing the rest
(the original system's biggest latency lever, see docs/protocols/agent-webhook.md).

Rules, applied to the pending text from its start (the first rule that matches wins):

1. **Sentence end**: a run of ``. ! ? ؟ ۔ …`` (plus closing quotes/brackets) followed by
   whitespace, or a newline. A run counts once, so ``...`` or ``?!`` is one end. The end is
   only decided once the character after the run is known, so ``3.5`` (a decimal) and
   ``v1.2`` are never cut and a chunk ending in ``.`` waits for the next chunk.
2. **Clause end** (``، , ؛ ;`` followed by whitespace): only once the piece is at least
   ``clause_chars`` long (default ``max_chars // 2``): long sentences start speaking early,
   short ones stay whole.
3. **Hard cut**: pending text longer than ``max_chars`` with no cut above within the first
   ``max_chars`` characters is cut at the last whitespace in them (or, for one huge word, at
   ``max_chars`` exactly).

A cut under rules 1-2 is taken only if the piece is at least ``min_chars`` long: shorter
fragments merge with what follows, because Hamsa answers very short texts with empty or
near-empty audio. The one exception is the tail returned by :meth:`SentenceSplitter.flush`:
the previous sentence is already on its way to TTS, so a short last sentence is sent alone
(a whole reply shorter than ``min_chars`` is of course sent as it is).

Every decision depends only on the text, never on how it was chunked: feeding the same text
in any pieces yields the same sentences (a property test checks it). Sentences are returned
with whitespace runs collapsed to one space; no other character is added or removed.
"""

from __future__ import annotations

# Sentence-final marks: Latin . ! ?, Arabic question mark U+061F, Urdu/Arabic full stop
# U+06D4, horizontal ellipsis U+2026.
_SENTENCE_END = frozenset(".!?\u061f\u06d4\u2026")
# Clause marks: Latin , ; and Arabic comma U+060C, Arabic semicolon U+061B.
_CLAUSE_END = frozenset(",;\u060c\u061b")
# Characters that may follow a sentence-final mark and still belong to the sentence.
_CLOSERS = frozenset("\"')]}»”’")


class SentenceSplitter:
    """Incremental sentence splitter for one reply (create one per reply).

    ``push(delta)`` returns the sentences completed by ``delta`` (often none);
    ``flush()`` returns the rest at the end of the reply and resets the splitter.
    Each returned sentence is non-empty, at most ``max_chars`` long and, except for the
    flushed tail, at least ``min_chars`` long (see rule 3 for the one exception).
    """

    __slots__ = ("_clause_chars", "_max", "_min", "_pending")

    def __init__(
        self, min_chars: int = 30, max_chars: int = 250, *, clause_chars: int | None = None
    ) -> None:
        if not 1 <= min_chars <= max_chars:
            raise ValueError("need 1 <= min_chars <= max_chars")
        self._min = min_chars
        self._max = max_chars
        clause = max_chars // 2 if clause_chars is None else clause_chars
        self._clause_chars = max(min_chars, clause)
        self._pending = ""

    def push(self, delta: str) -> list[str]:
        """Add streamed text; return the sentences it completed, in order."""
        if not delta:
            return []
        self._pending = (self._pending + delta) if self._pending else delta.lstrip()
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of reply: return every remaining sentence (the last may be short)."""
        out = self._drain(final=True)
        tail = " ".join(self._pending.split())
        self._pending = ""
        if tail:
            out.append(tail)
        return out

    # ------------------------------------------------------------------ internals

    def _drain(self, final: bool) -> list[str]:
        out: list[str] = []
        while self._pending:
            cut = self._find_cut(self._pending, final)
            if cut is None:
                break
            piece = " ".join(self._pending[:cut].split())
            self._pending = self._pending[cut:].lstrip()
            if piece:
                out.append(piece)
        return out

    def _find_cut(self, text: str, final: bool) -> int | None:
        """Index to cut ``text`` at, or None to wait for more text.

        Only positions up to ``max_chars`` are considered, and a position is only chosen
        when the characters that decide it are present, so the answer never depends on how
        the text was chunked. ``final`` means the text ends here (end of text acts as
        whitespace).
        """
        n = len(text)
        limit = min(n, self._max)
        i = 0
        while i < limit:
            ch = text[i]
            if ch == "\n":
                if i >= self._min and len(text[:i].strip()) >= self._min:
                    return i
                i += 1
                continue
            if ch in _SENTENCE_END or ch in _CLAUSE_END:
                is_sentence = ch in _SENTENCE_END
                j = i + 1
                if is_sentence:
                    # One run of marks and closers counts once ("...", "?!", '."').
                    while j < n and (text[j] in _SENTENCE_END or text[j] in _CLOSERS):
                        j += 1
                else:
                    while j < n and text[j] in _CLOSERS:
                        j += 1
                if j >= n and not final:
                    return None  # the run may continue, or a digit may follow: wait
                if j > self._max:
                    break  # the piece would be too long: leave it to the hard cut
                if j >= n or text[j].isspace():
                    need = self._min if is_sentence else self._clause_chars
                    if j >= need and len(text[:j].strip()) >= need:
                        return j
                i = j
                continue
            i += 1
        if n <= self._max:
            return None
        # Rule 3: nothing to cut at within max_chars; cut at the last whitespace in the
        # first max_chars + 1 characters (the character at max_chars may be the space),
        # keeping the piece at least min_chars long; one huge word is cut at max_chars (if the
        # window ends in whitespace, that piece is shorter than min_chars once stripped: no
        # cut within max_chars could be longer).
        window = text[: self._max + 1]
        for k in range(self._max, self._min - 1, -1):
            if window[k].isspace() and len(window[:k].strip()) >= self._min:
                return k
        return self._max
