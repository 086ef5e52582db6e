"""The multi-turn workload: conversations that send their whole history each turn."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from fleetgate.bench.records import RequestSpec
from fleetgate.bench.sizing import Sizer
from fleetgate.bench.workloads.base import Message, _Base, _stream, chat_tokens
from fleetgate.bench.workloads.lengths import length_dist
from fleetgate.bench.workloads.settings import WorkloadSettings

# ---- multi-turn -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Session:
    id: str
    rng: random.Random
    turns: int
    lang: Literal["en", "zh"]
    messages: list[Message] = field(default_factory=list)
    content_tokens: int = 0
    turn: int = 0
    busy: bool = False


class MultiTurnWorkload(_Base):
    """Conversations: each turn sends the whole history; the next turn waits for the answer to this one.

    Keeps a pool of up to `sessions` open conversations. `next_request` starts a new session while the pool
    has room, otherwise sends the next turn of an idle session (one whose last answer came back through
    `on_response`; a random one of them). When every session is busy and the pool is full it starts an extra
    session anyway, so it never blocks; `extra_sessions` counts those (a sign the offered rate exceeds what
    `sessions` conversations can carry). The first user message has `input_len` tokens, later ones
    `turn_input_len`; a session has `turns` turns (drawn per session) and then ends, freeing its place. A
    failed turn (`text` None) ends its session. Session ids are `w<worker>-<n>`; `RequestSpec.turn` counts
    from 0. Each request carries a copy of the history, so earlier specs never change.
    """

    name = "multi-turn"
    needs_text = True

    def __init__(self, settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int) -> None:
        super().__init__(settings, sizer, seed, worker)
        self.first_len = length_dist(settings.input_len)
        self.turn_len = length_dist(settings.turn_input_len)
        self.turns_dist = length_dist(settings.turns)
        self.active: dict[str, _Session] = {}
        self._idle: list[_Session] = []
        self.started = 0
        self.finished = 0
        self.failed = 0
        self.extra_sessions = 0

    def _new_session(self) -> _Session:
        n = self.started
        self.started += 1
        rng = _stream(self.seed, self.worker, "session", n)
        session = _Session(
            id=f"w{self.worker}-{n}", rng=rng, turns=self.turns_dist(rng), lang=self.language(rng)
        )
        self.active[session.id] = session
        return session

    def next_request(self) -> RequestSpec:
        if len(self.active) < self.settings.sessions:
            session = self._new_session()
        elif self._idle:
            idle = self._idle
            k = self.rng.randrange(len(idle))
            idle[k], idle[-1] = idle[-1], idle[k]
            session = idle.pop()
        else:
            self.extra_sessions += 1
            session = self._new_session()
        rng = session.rng
        tokens = (self.first_len if session.turn == 0 else self.turn_len)(rng)
        session.messages.append({"role": "user", "content": self.make_text(tokens, rng, session.lang)})
        session.content_tokens += tokens
        session.busy = True
        max_tokens = self.output_len(rng)
        messages = list(session.messages)
        if self.settings.api == "completions":
            planned = session.content_tokens + 3 * len(messages) + 2  # "User:", "\n\n" each, "Assistant:"
        else:
            planned = chat_tokens(session.content_tokens, len(messages))
        return self.spec(
            self.messages_body(messages, max_tokens),
            planned,
            max_tokens,
            session=session.id,
            turn=session.turn,
        )

    def on_response(self, spec: RequestSpec, text: str | None) -> None:
        session = self.active.get(spec.session or "")
        if session is None or not session.busy or spec.turn != session.turn:
            return  # not ours, or stale
        session.busy = False
        if text is None:
            self.failed += 1
            del self.active[session.id]
            return
        session.messages.append({"role": "assistant", "content": text})
        session.content_tokens += self.sizer.count(text)
        session.turn += 1
        if session.turn >= session.turns:
            self.finished += 1
            del self.active[session.id]
        else:
            self._idle.append(session)
