"""Sans-I/O outbound pacing for transports with no carrier-side buffer (AudioSocket).

Asterisk writes every AudioSocket packet to the channel the moment it arrives: there is no
queue and no re-timing (``apps/app_audiosocket.c``, ``channels/chan_audiosocket.c``; see
``docs/protocols/asterisk.md`` §3). So the gateway must send exactly one 20 ms frame per
tick itself, and must keep sending (silence) while idle, because the ``AudioSocket()``
application hangs up after 2000 ms without activity (``MAX_WAIT_TIMEOUT_MSEC``).

Two pieces, both clock-free (time is passed in as ``now``, in seconds, from any monotonic
clock the glue owns; tests drive it by hand):

* :class:`FramePacer` says how many frames are owed at ``now`` on a fixed grid anchored at
  the start time (so errors never accumulate), and caps the catch-up burst after a stall.
* :class:`OutboundAudio` is the playout queue: one frame per tick, silence when idle,
  ``clear()`` for barge-in, a frame clock of what was really played, and marks that fire
  when the frame clock passes their position.

The glue loop is, per tick: ``for _ in range(pacer.due(now)): write(proto.frame(q.next_frame()))``,
then ``q.pop_played_marks()``, then sleep until ``pacer.next_deadline()``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Final

from gateway.telephony.events import AudioFormat, Encoding, MarkPlayed

FRAME_MS: Final = 20
DEFAULT_MAX_BURST: Final = 3  # frames (60 ms) a stalled loop may send at once to catch up
# Sub-microsecond slack so a tick that lands exactly on a deadline counts it as due despite
# float rounding ((0.06 - 0.0) / 0.02 == 2.9999999999999996).
_EPSILON_FRAMES: Final = 1e-6
# Drop the consumed head of the queue buffer once it is this large (amortised compaction).
_COMPACT_BYTES: Final = 32768

# G.711 silence: μ-law 0xFF (also 0x7F), A-law 0xD5 (ITU-T G.711 tables; Asterisk's own
# ulaw silence frames are 0xff, seen in the 23.4.1 transcripts); PCM16 zero.
_SILENCE_BYTE: Final = {Encoding.ULAW: 0xFF, Encoding.ALAW: 0xD5, Encoding.PCM16: 0x00}
_NO_MARKS: Final[tuple[MarkPlayed, ...]] = ()


def silence(audio_format: AudioFormat, nbytes: int) -> bytes:
    """``nbytes`` of digital silence in ``audio_format``'s encoding."""
    return bytes((_SILENCE_BYTE[audio_format.encoding],)) * nbytes


class FramePacer:
    """Frame clock on a fixed grid: frame ``k`` is due at ``start + k * frame_ms``.

    ``due(now)`` returns how many frames are owed since the last call, computed against the
    start time rather than by adding periods, so scheduling jitter never accumulates into
    drift. If the caller stalled so long that more than ``max_burst`` frames are owed, it
    returns ``max_burst`` and *resyncs*: the grid is moved so that the last frame returned is
    due ``now`` and the next one a period later. The skipped frames are counted in
    ``skipped_frames`` (they are not owed any more: sending them late in a burst would only
    be heard as a glitch, and the caller already heard the gap).
    """

    def __init__(self, frame_ms: int = FRAME_MS, *, max_burst: int = DEFAULT_MAX_BURST) -> None:
        if frame_ms <= 0 or max_burst <= 0:
            raise ValueError("frame_ms and max_burst must be positive")
        self._period = frame_ms / 1000.0
        self._max_burst = max_burst
        self._t0: float | None = None
        self._count = 0
        self.resyncs = 0
        self.skipped_frames = 0

    @property
    def period(self) -> float:
        """Frame period in seconds."""
        return self._period

    @property
    def frames(self) -> int:
        """Frames handed out by :meth:`due` since :meth:`start`."""
        return self._count

    def start(self, now: float) -> None:
        """Anchor the grid: the first frame is due at ``now``."""
        self._t0 = now
        self._count = 0

    def due(self, now: float) -> int:
        """Frames owed at ``now`` (0 if called early); at most ``max_burst``."""
        if self._t0 is None:
            raise RuntimeError("FramePacer.due() before start()")
        target = int((now - self._t0) / self._period + _EPSILON_FRAMES) + 1
        owed = target - self._count
        if owed <= 0:
            return 0
        if owed > self._max_burst:
            self.resyncs += 1
            self.skipped_frames += owed - self._max_burst
            owed = self._max_burst
            # Re-anchor so frame (count + owed - 1), the last one returned now, is due `now`.
            self._t0 = now - (self._count + owed - 1) * self._period
        self._count += owed
        return owed

    def next_deadline(self) -> float:
        """When the next frame is due (seconds, same clock as ``now``).

        ``now - next_deadline()`` just before :meth:`due` is the tick's lateness; the glue
        observes it into the pacing-lateness histogram.
        """
        if self._t0 is None:
            raise RuntimeError("FramePacer.next_deadline() before start()")
        return self._t0 + self._count * self._period


class OutboundAudio:
    """Playout queue that yields exactly one frame per tick.

    Audio is pushed in any chunk size; :meth:`next_frame` returns one ``frame_bytes`` frame
    of it, or a (shared, preallocated) silence frame when fewer than ``frame_bytes`` are
    queued, so the line never goes quiet at the socket level. A trailing partial frame waits
    for more audio until :meth:`flush` pads it with silence (call it at the end of an
    utterance); :meth:`mark` flushes implicitly, because a mark means "everything queued so
    far".

    Positions are counted in bytes of the queued stream (real audio plus flush padding, never
    idle silence). ``played_bytes`` / ``played_ms`` is the frame clock of what the caller
    has really been sent; a mark is played once that clock reaches the position where it
    was set, and is reported by :meth:`pop_played_marks` after the tick that played it.
    """

    def __init__(self, frame_bytes: int, *, frame_ms: int = FRAME_MS, silence_byte: int = 0):
        if frame_bytes <= 0 or frame_ms <= 0:
            raise ValueError("frame_bytes and frame_ms must be positive")
        self._fb = frame_bytes
        self._bytes_per_ms = frame_bytes / frame_ms
        self._silence = bytes((silence_byte,)) * frame_bytes
        self._buf = bytearray()
        self._rd = 0  # read offset into _buf
        self._marks: deque[tuple[int, str]] = deque()
        self._fired: list[MarkPlayed] = []
        self.played_bytes = 0
        self.idle_frames = 0

    @classmethod
    def for_format(cls, audio_format: AudioFormat, frame_ms: int = FRAME_MS) -> OutboundAudio:
        """A queue of ``frame_ms`` frames in ``audio_format`` with that encoding's silence."""
        return cls(
            audio_format.frame_bytes(frame_ms),
            frame_ms=frame_ms,
            silence_byte=_SILENCE_BYTE[audio_format.encoding],
        )

    @property
    def frame_bytes(self) -> int:
        return self._fb

    @property
    def silence_frame(self) -> bytes:
        """The shared silence frame :meth:`next_frame` returns when idle."""
        return self._silence

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not yet played (including a waiting partial frame)."""
        return len(self._buf) - self._rd

    @property
    def queued_ms(self) -> float:
        return self.queued_bytes / self._bytes_per_ms

    @property
    def played_ms(self) -> float:
        """Milliseconds of queued audio handed out so far (the what-was-heard clock)."""
        return self.played_bytes / self._bytes_per_ms

    def push(self, audio: bytes) -> None:
        """Queue audio (any length, in the queue's format)."""
        self._buf += audio

    def flush(self) -> None:
        """Pad a trailing partial frame with silence so it plays on the next free tick."""
        partial = (len(self._buf) - self._rd) % self._fb
        if partial:
            self._buf += self._silence[: self._fb - partial]

    def mark(self, name: str) -> None:
        """Report ``name`` once everything queued so far has been played."""
        self.flush()
        self._marks.append((self.played_bytes + self.queued_bytes, name))

    def clear(self) -> list[MarkPlayed]:
        """Drop all unplayed audio (barge-in); return the pending marks.

        Marks whose position was already reached are returned with ``played=True``; the
        others with ``played=False`` (their audio was dropped, never heard).
        """
        retired = self._fired
        self._fired = []
        for position, name in self._marks:
            retired.append(MarkPlayed(name, played=position <= self.played_bytes))
        self._marks.clear()
        self._buf.clear()
        self._rd = 0
        return retired

    def next_frame(self) -> bytes:
        """One frame for this tick: queued audio if a whole frame is there, else silence."""
        fb = self._fb
        rd = self._rd
        if len(self._buf) - rd >= fb:
            frame = bytes(self._buf[rd : rd + fb])
            rd += fb
            if rd >= _COMPACT_BYTES:
                del self._buf[:rd]
                rd = 0
            self._rd = rd
            self.played_bytes += fb
        else:
            frame = self._silence
            self.idle_frames += 1
        marks = self._marks
        while marks and marks[0][0] <= self.played_bytes:
            self._fired.append(MarkPlayed(marks.popleft()[1], played=True))
        return frame

    def pop_played_marks(self) -> Sequence[MarkPlayed]:
        """Marks played since the last call (an empty shared tuple when none: no allocation)."""
        if not self._fired:
            return _NO_MARKS
        fired = self._fired
        self._fired = []
        return fired
