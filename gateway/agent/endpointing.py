"""Endpointing and barge-in detection: VAD decisions in, utterance events out (sans-I/O).

No clock: time is the frame count (``frame_ms`` per pushed frame, 20 ms by default), so the
same audio always gives the same events. Event times (``at_ms``) are stream positions: the
end of the frame that decided the event, counted from the first frame pushed.

States: *idle* until ``onset_voiced`` of the last ``onset_frames`` frames are voiced
(:class:`SpeechStarted`); then *in speech* until one of:

* ``trailing_silence_ms`` of consecutive unvoiced frames: :class:`UtteranceEnded`, or
  :class:`UtteranceDiscarded` when the voiced span is under ``min_speech_ms`` (such a blip
  is dropped already after ``min_speech_ms`` of silence, so speech right after it starts
  an utterance of its own);
* speech going on for ``max_utterance_ms`` since its onset: a forced
  :class:`UtteranceEnded` (the next voiced frames start a new utterance; no audio is lost).

While in speech, :class:`SustainedSpeech` fires once, on a voiced frame at least
``barge_in_min_ms`` after the onset, when at least ``barge_in_ratio`` of that last stretch
is voiced. The call session uses it as the barge-in trigger during playout, so a cough or
a short "mm" (under ``barge_in_min_ms``) never cuts the agent off.

WebRTC's VAD keeps saying "speech" for about 4 frames (80 ms) after a sound stops (its
hangover), so a sound is seen about 80 ms longer than it is: with the defaults a cough of
100 ms is discarded (seen as 180 ms < 200 ms) and a barge-in needs about 220 ms of sound.

The utterance audio starts ``pre_roll_ms`` (or more) before the onset window, so the first
syllable reaches STT whole, and keeps at most ``post_roll_ms`` of the trailing silence.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The caller started speaking. ``onset_ms``: start of the first voiced onset frame."""

    at_ms: int
    onset_ms: int


@dataclass(frozen=True, slots=True)
class SustainedSpeech:
    """Speech has lasted ``barge_in_min_ms`` (mostly voiced): a real barge-in, not a cough."""

    at_ms: int
    onset_ms: int


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    """An utterance is complete; send ``pcm`` to STT.

    ``pcm`` is PCM16 at the stream's rate: pre-roll + speech + up to ``post_roll_ms`` of the
    trailing silence. ``speech_ms`` is the span from the first to the last voiced frame;
    ``trailing_silence_ms`` the silence that closed it (the endpointing delay; 0 when
    ``forced`` by ``max_utterance_ms``). ``speech_end_ms`` is the stream position where the
    caller stopped speaking (the start of the turn-latency clock).
    """

    at_ms: int
    pcm: bytes
    speech_ms: int
    trailing_silence_ms: int
    speech_end_ms: int
    forced: bool = False


@dataclass(frozen=True, slots=True)
class UtteranceDiscarded:
    """Voiced audio too short to be speech (a click, a cough): dropped as noise."""

    at_ms: int
    speech_ms: int


EndpointEvent: TypeAlias = SpeechStarted | SustainedSpeech | UtteranceEnded | UtteranceDiscarded


class Endpointer:
    """Turns per-frame VAD decisions into utterance and barge-in events; one per call.

    Durations are in ms and rounded down to whole frames (at least one frame).
    """

    __slots__ = (
        "_audio",
        "_barge_frames",
        "_barge_need",
        "_barge_sent",
        "_first_voiced",
        "_frame_bytes",
        "_frame_ms",
        "_frames",
        "_history",
        "_in_speech",
        "_last_voiced",
        "_max_frames",
        "_min_speech_frames",
        "_onset_frames",
        "_onset_voiced",
        "_post_roll_frames",
        "_ring",
        "_silence_run",
        "_trailing_frames",
        "_voiced_in_history",
    )

    def __init__(
        self,
        *,
        frame_ms: int = 20,
        onset_frames: int = 5,
        onset_voiced: int = 3,
        trailing_silence_ms: int = 600,
        min_speech_ms: int = 200,
        max_utterance_ms: int = 15_000,
        pre_roll_ms: int = 200,
        post_roll_ms: int = 200,
        barge_in_min_ms: int = 300,
        barge_in_ratio: float = 0.8,
    ) -> None:
        if not 1 <= onset_voiced <= onset_frames:
            raise ValueError("need 1 <= onset_voiced <= onset_frames")
        if not 0.0 < barge_in_ratio <= 1.0:
            raise ValueError("barge_in_ratio must be in (0, 1]")

        def frames(ms: int) -> int:
            return max(1, ms // frame_ms)

        self._frame_ms = frame_ms
        self._frame_bytes = 0  # size of the last frame pushed
        self._onset_frames = onset_frames
        self._onset_voiced = onset_voiced
        self._trailing_frames = frames(trailing_silence_ms)
        self._min_speech_frames = frames(min_speech_ms)
        self._max_frames = frames(max_utterance_ms)
        self._post_roll_frames = min(self._trailing_frames, max(0, post_roll_ms) // frame_ms)
        self._barge_frames = frames(barge_in_min_ms)
        self._barge_need = max(1, round(barge_in_ratio * self._barge_frames))
        # Audio kept while idle: the pre-roll plus the onset window.
        self._ring: deque[bytes] = deque(maxlen=frames(pre_roll_ms) + onset_frames)
        # Voiced flags of the last max(onset, barge-in) frames, with a running count.
        self._history: deque[bool] = deque(maxlen=max(onset_frames, self._barge_frames))
        self._voiced_in_history = 0
        self._audio = bytearray()
        self._frames = 0  # frames pushed so far (the clock)
        self._in_speech = False
        self._silence_run = 0
        self._first_voiced = 0  # frame index of the first voiced frame of the utterance
        self._last_voiced = 0
        self._barge_sent = False

    @property
    def in_speech(self) -> bool:
        """True between SpeechStarted and the utterance's end."""
        return self._in_speech

    @property
    def position_ms(self) -> int:
        """Stream position: the end of the last pushed frame."""
        return self._frames * self._frame_ms

    def push(self, frame_pcm: bytes, is_speech: bool) -> list[EndpointEvent]:
        """One frame and its VAD decision; return the events it caused (usually none).

        ``frame_pcm`` is kept by reference (pre-roll), so it must be immutable ``bytes``.
        """
        index = self._frames
        self._frame_bytes = len(frame_pcm)
        self._frames += 1
        history = self._history
        if len(history) == history.maxlen and history[0]:
            self._voiced_in_history -= 1
        history.append(is_speech)
        if is_speech:
            self._voiced_in_history += 1

        if not self._in_speech:
            self._ring.append(frame_pcm)
            if is_speech and self._onset_count() >= self._onset_voiced:
                return self._start(index)
            return []

        self._audio += frame_pcm
        events: list[EndpointEvent] = []
        if is_speech:
            self._silence_run = 0
            self._last_voiced = index
        else:
            self._silence_run += 1
        span = index - self._first_voiced + 1  # frames since the speech onset
        if (
            is_speech
            and not self._barge_sent
            and span >= self._barge_frames
            and self._barge_count() >= self._barge_need
        ):
            self._barge_sent = True
            events.append(SustainedSpeech(self.position_ms, self._first_voiced * self._frame_ms))
        if self._silence_run >= self._trailing_frames or (
            # A blip shorter than the minimum followed by as much silence is noise: drop it
            # now rather than after the full trailing silence, so that speech right after
            # it starts an utterance of its own.
            self._silence_run >= self._min_speech_frames
            and self._last_voiced - self._first_voiced + 1 < self._min_speech_frames
        ):
            events.append(self._end(forced=False))
        elif is_speech and span >= self._max_frames:
            events.append(self._end(forced=True))
        return events

    def finish(self) -> list[EndpointEvent]:
        """End of the caller's audio (hang-up): close an utterance in progress."""
        if not self._in_speech:
            return []
        return [self._end(forced=True)]

    def reset(self) -> None:
        """Forget any utterance in progress and the pre-roll (the clock keeps running)."""
        self._in_speech = False
        self._audio = bytearray()
        self._ring.clear()
        self._history.clear()
        self._voiced_in_history = 0

    # ------------------------------------------------------------------ internals

    def _onset_count(self) -> int:
        tail = self._onset_frames
        history = self._history
        n = len(history)
        return sum(history[i] for i in range(max(0, n - tail), n))

    def _barge_count(self) -> int:
        if self._barge_frames == len(self._history):
            return self._voiced_in_history
        history = self._history
        n = len(history)
        return sum(history[i] for i in range(max(0, n - self._barge_frames), n))

    def _start(self, index: int) -> list[EndpointEvent]:
        # The first voiced frame inside the onset window is the speech onset.
        window = min(self._onset_frames, len(self._history))
        first = index
        for back in range(window):
            if self._history[len(self._history) - 1 - back]:
                first = index - back
        self._in_speech = True
        self._first_voiced = first
        self._last_voiced = index
        self._silence_run = 0
        self._barge_sent = False
        self._audio = bytearray(b"".join(self._ring))
        self._ring.clear()
        return [SpeechStarted(self.position_ms, first * self._frame_ms)]

    def _end(self, forced: bool) -> EndpointEvent:
        self._in_speech = False
        frame_bytes = self._frame_bytes
        trailing = self._silence_run
        keep_silence = min(trailing, self._post_roll_frames)
        audio = self._audio
        if trailing > keep_silence:
            del audio[len(audio) - (trailing - keep_silence) * frame_bytes :]
        self._audio = bytearray()
        speech_frames = self._last_voiced - self._first_voiced + 1
        speech_ms = speech_frames * self._frame_ms
        at_ms = self.position_ms
        if speech_frames < self._min_speech_frames:
            return UtteranceDiscarded(at_ms, speech_ms)
        return UtteranceEnded(
            at_ms=at_ms,
            pcm=bytes(audio),
            speech_ms=speech_ms,
            trailing_silence_ms=0 if forced else trailing * self._frame_ms,
            speech_end_ms=(self._last_voiced + 1) * self._frame_ms,
            forced=forced,
        )
