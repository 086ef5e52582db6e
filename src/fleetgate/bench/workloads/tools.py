"""The tools workload: travel-assistant chat requests with function tools and JSON-schema output."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from fleetgate.bench.records import RequestSpec
from fleetgate.bench.sizing import Sizer
from fleetgate.bench.workloads.base import (
    TOOL_ROUND_TOKENS,
    TOOLS_PREAMBLE_TOKENS,
    Message,
    _Base,
    _stream,
    chat_tokens,
)
from fleetgate.bench.workloads.settings import WorkloadSettings


def _words(text: str) -> list[str]:
    return text.split()


# ---- tools ------------------------------------------------------------------------------------------------

SEARCH_SEGMENTS: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search_segments",
        "description": "Search the travel video library for segments about a topic in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to look for, e.g. 'night market food'."},
                "city": {"type": "string", "description": "City name, e.g. 'Chengdu'."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50, "description": "Most results."},
            },
            "required": ["query", "city"],
        },
    },
}
PLAN_ITINERARY: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "plan_itinerary",
        "description": "Arrange video segments (by id) into a day-by-day itinerary.",
        "parameters": {
            "type": "object",
            "properties": {
                "segments": {"type": "array", "items": {"type": "integer"}, "description": "Segment ids."},
                "days": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 30,
                    "description": "Trip length in days.",
                },
            },
            "required": ["segments", "days"],
        },
    },
}
BOOK_HOTEL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "book_hotel",
        "description": "Book a hotel room.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "check_in": {"type": "string", "format": "date", "description": "YYYY-MM-DD"},
                "nights": {"type": "integer", "minimum": 1},
                "guests": {"type": "integer", "minimum": 1, "default": 2},
                "max_price": {"type": "number", "description": "Per night, in the local currency."},
            },
            "required": ["city", "check_in", "nights"],
        },
    },
}
TRIP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 1},
        "stops": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "day": {"type": "integer", "minimum": 1},
                    "name": {"type": "string"},
                    "segment_id": {"type": "integer"},
                },
                "required": ["day", "name"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["city", "days", "stops"],
    "additionalProperties": False,
}

_SYSTEM = {
    "en": "You are the travel assistant of a video travel guide. Use the tools to find video segments, plan "
    "itineraries and book hotels. Keep answers short and practical.",
    "zh": "你是一个旅游视频指南的旅行助手。请使用工具查找视频片段、规划行程和预订酒店。回答要简洁实用。",
}
_CITIES = {
    "en": _words(
        "Chengdu Xi'an Hangzhou Guilin Xiamen Lijiang Chongqing Kyoto Osaka Taipei Hanoi Bangkok Lisbon Rome"
    ),
    "zh": _words("成都 西安 杭州 桂林 厦门 丽江 重庆 京都 大阪 台北 河内 曼谷 里斯本 罗马"),
}
_TOPICS = {
    "en": ["night markets", "street food", "temples", "old towns", "hiking trails", "museums", "tea houses"],
    "zh": ["夜市", "街头小吃", "寺庙", "古镇", "徒步路线", "博物馆", "茶馆"],
}
_WHO = {
    "en": ["my parents", "two kids", "friends", "my partner"],
    "zh": ["父母", "两个孩子", "朋友", "另一半"],
}
_ASKS = {
    "en": [
        "Find short videos about {topic} in {city} and plan a {days}-day trip around them.",
        "I am going to {city} for {days} days with {who}. Which {topic} should we see?",
        "Show me video clips of {topic} in {city}.",
        "Plan {days} days in {city} focused on {topic}, and book a hotel for {who} from {date}.",
        "Book a hotel in {city} for {days} nights from {date}, under {price} per night.",
    ],
    "zh": [
        "帮我找一些{city}{topic}的短视频，并围绕它们安排一个{days}天的行程。",
        "我要和{who}去{city}玩{days}天，有哪些{topic}值得看？",
        "给我看看{city}{topic}的视频片段。",
        "规划{city}{days}天的行程，主要看{topic}，再帮{who}订一家{date}入住的酒店。",
        "帮我在{city}订{days}晚的酒店，{date}入住，每晚不超过{price}元。",
    ],
}
_JSON_ASK = {
    "en": "Plan a {days}-day trip to {city} for {who}, around {topic}. Reply only with JSON: city, days, and "
    "stops (day, name, segment_id).",
    "zh": "为{who}规划一个{days}天的{city}行程，围绕{topic}。"
    "只用JSON回答：city、days和stops（day、name、segment_id）。",
}


@dataclass(slots=True, frozen=True)
class _ToolPools:
    """Prompts of one language made once (with their token counts), so requests only pick from them."""

    asks: list[tuple[str, int, bool]]  # text, tokens, mentions hotels
    json_asks: list[tuple[str, int]]
    rounds: list[tuple[Message, Message, int]]  # assistant tool call, tool result, tokens of both


class ToolsWorkload(_Base):
    """Travel-assistant chat requests with function tools (chat API only).

    Each request has the assistant's system message and a user message (en or zh by `language`) asking for
    trip videos, itineraries or hotels, with 2-3 tools (search_segments, plan_itinerary, and book_hotel when
    hotels come up) and `tool_choice: auto`. Every 3rd request instead asks for JSON output with
    `response_format: json_schema` (schema "trip", no tools, no ignore_eos). About 40% of the tool requests
    are follow-ups: the assistant's search_segments call and its tool result are already in the history.
    User messages and tool rounds come from pools made once per language from the run seed (the same in
    every worker). `input_len` is not used; `input_tokens` is estimated from the contents, the tool schemas,
    the preamble a Hermes-style template wraps them in (`TOOLS_PREAMBLE_TOKENS`) and the template.
    """

    name = "tools"
    POOL = 256

    def __init__(self, settings: WorkloadSettings, sizer: Sizer, seed: int, worker: int) -> None:
        if settings.api != "chat":
            raise ValueError(f"the tools workload sends chat requests only (api: chat), got {settings.api}")
        super().__init__(settings, sizer, seed, worker)
        self._tools = {2: [SEARCH_SEGMENTS, PLAN_ITINERARY], 3: [SEARCH_SEGMENTS, PLAN_ITINERARY, BOOK_HOTEL]}
        self._tools_tokens = {
            n: TOOLS_PREAMBLE_TOKENS + sum(sizer.count(orjson.dumps(t).decode()) for t in tools)
            for n, tools in self._tools.items()
        }
        self._system_tokens = {lang: sizer.count(text) for lang, text in _SYSTEM.items()}
        self._pools: dict[str, _ToolPools] = {}

    def _pool(self, lang: Literal["en", "zh"]) -> _ToolPools:
        found = self._pools.get(lang)
        if found is None:
            rng = _stream(self.seed, "tools", lang)
            count = self.sizer.count
            asks = []
            for _ in range(self.POOL):
                index = rng.randrange(len(_ASKS[lang]))
                text = _fill(_ASKS[lang][index], lang, rng)
                asks.append((text, count(text), index >= 3 or rng.random() < 0.3))
            json_asks = [
                (t, count(t)) for t in (_fill(_JSON_ASK[lang], lang, rng) for _ in range(self.POOL // 4))
            ]
            rounds = []
            for _ in range(self.POOL // 2):
                call, result = _search_round(lang, rng)
                arguments = call["tool_calls"][0]["function"]["arguments"]
                rounds.append((call, result, count(arguments) + count(result["content"]) + TOOL_ROUND_TOKENS))
            found = self._pools[lang] = _ToolPools(asks, json_asks, rounds)
        return found

    def next_request(self) -> RequestSpec:
        rng = self.rng
        lang = self.language(rng)
        pool = self._pool(lang)
        max_tokens = self.output_len(rng)
        system: Message = {"role": "system", "content": _SYSTEM[lang]}
        tokens = self._system_tokens[lang]
        if self.count % 3 == 2:
            ask, ask_tokens = pool.json_asks[rng.randrange(len(pool.json_asks))]
            messages = [system, {"role": "user", "content": ask}]
            body: dict[str, Any] = {
                "messages": messages,
                "max_tokens": max_tokens,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "trip", "schema": TRIP_SCHEMA},
                },
            }
            return self.spec(body, chat_tokens(tokens + ask_tokens, len(messages)), max_tokens)
        ask, ask_tokens, hotel = pool.asks[rng.randrange(len(pool.asks))]
        tools = self._tools[3 if hotel else 2]
        messages = [system, {"role": "user", "content": ask}]
        tokens += ask_tokens + self._tools_tokens[len(tools)]
        if rng.random() < 0.4:
            call, result, round_tokens = pool.rounds[rng.randrange(len(pool.rounds))]
            messages += [call, result]
            tokens += round_tokens
        body = {"messages": messages, "max_tokens": max_tokens, "tools": tools, "tool_choice": "auto"}
        return self.spec(self.finish(body), chat_tokens(tokens, len(messages)), max_tokens)


def _fill(template: str, lang: str, rng: random.Random) -> str:
    return template.format(
        city=rng.choice(_CITIES[lang]),
        topic=rng.choice(_TOPICS[lang]),
        who=rng.choice(_WHO[lang]),
        days=rng.randint(2, 7),
        date=f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        price=rng.randrange(300, 2000, 50),
    )


def _search_round(lang: str, rng: random.Random) -> tuple[Message, Message]:
    """An assistant search_segments call and the tool's answer."""
    city = rng.choice(_CITIES[lang])
    topic = rng.choice(_TOPICS[lang])
    call_id = f"call_{rng.getrandbits(96):024x}"
    arguments = orjson.dumps({"query": topic, "city": city, "limit": 5}).decode()
    function = {"name": "search_segments", "arguments": arguments}
    call: Message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": call_id, "type": "function", "function": function}],
    }
    segments = [
        {
            "id": rng.randrange(10_000, 99_999),
            "title": f"{city} {topic} #{k + 1}",
            "start": round(rng.uniform(0, 600), 1),
            "duration": round(rng.uniform(20, 240), 1),
            "views": rng.randrange(1_000, 2_000_000),
        }
        for k in range(rng.randint(3, 8))
    ]
    content = orjson.dumps({"segments": segments}).decode()
    result: Message = {"role": "tool", "tool_call_id": call_id, "content": content}
    return call, result
