"""Prompt text of a requested size in the target's tokens, made cheaply from precomputed pools.

Sizes are asked for in the *target's* tokens. `Sizer` makes text in fleetgate's own tokenizer
(`fleetgate.tokenizer.Tokenizer`) and converts with `ratio` = target tokens per fleetgate token, which the
runner measures once by sending `calibration_sample()` to the target's `/tokenize` (ratio = target count / our
count).

How text is made fast: each language has a pool, a long prose text generated once from a word list with a
fixed seed, kept as a list of *units* (an English word with its punctuation, a Chinese clause with its comma
or full stop) chosen so that the tokens of a concatenation of units are the concatenation of their tokens. The
token count of every unit is known, so a slice of `n` tokens is found with one bisection over running sums and
cut out of the pool string with one slice; no text is tokenized per request. Each text starts with a short
random head (a few random words) so that two prompts share no prefix and so no prefix-cache hits, and then
continues at a random sentence of the pool, wrapping around for texts longer than the pool.
"""

from __future__ import annotations

import random
import zlib
from bisect import bisect_right
from collections.abc import Sequence

import orjson

from fleetgate.tokenizer import Tokenizer


def _words(text: str) -> list[str]:
    return text.split()


# ---- English ----------------------------------------------------------------------------------------------

_DETS = _words("the this that our every each one their my her his its some")
_ADJS = _words(
    "old quiet busy narrow famous small local early late warm cold bright long short green ancient crowded "
    "hidden lively modern simple fresh cheap friendly sunny rainy peaceful historic wooden stone golden "
    "scenic "
    "popular careful tired happy curious patient slow quick wide steep calm noisy empty open clean"
)
_NOUNS = _words(
    "city river market temple station guide traveler street bridge museum garden hotel train ferry village "
    "valley mountain coast harbor festival shop tower palace square road trail island lake beach tour map "
    "ticket driver family visitor morning evening dinner lunch breakfast night week season route journey "
    "plan room window view path forest castle shrine kitchen menu noodle dumpling teahouse gate wall "
    "courtyard boat "
    "bus taxi airport platform lantern story photo camera guidebook backpack"
)
_VERBS = _words(
    "visited crossed followed explored found reached passed watched photographed described recommended "
    "booked "
    "left entered admired noticed shared planned joined missed climbed circled showed opened remembered "
    "tasted ordered mapped praised studied"
)
_PREPS = _words("near behind along across beside past beyond toward around through above below under")
_ADVS = _words("slowly quietly early later often finally suddenly carefully happily again soon still")
_CONJS = _words("and but so while because although")
_TIMES = (
    "in the morning",
    "after lunch",
    "before sunset",
    "by evening",
    "at night",
    "on the second day",
    "during the festival",
    "every weekend",
    "after the rain",
    "before breakfast",
    "on the last day",
    "in early spring",
)
# Short words for the random head of each text and for padding: one token with or without a leading space.
_SHORT = _words(
    "tea river map quiet old town road hill lake rain sun wind boat bus train city day night walk view park "
    "shop food rice soup fish fruit cake milk egg duck pork beef tofu bread salt sweet hot cold warm cool "
    "east west north south near far small big long short late early new fresh green blue red white black "
    "gold stone wood glass bell gate wall tower bridge inn room bed desk lamp key door step path trail "
    "camp fire snow ice cloud star moon sky sea bay cove port dock ship raft kayak bike car van cab taxi "
    "plane guide note plan trip tour stay rest nap meal lunch snack menu dish bowl cup pot pan jar box bag "
    "coat hat shoe sock map pen ink book page line word song dance drum art film photo frame home yard farm "
    "barn field crop corn bean nut seed leaf tree pine oak palm rose lily moss fern grass sand rock cliff "
    "cave peak ridge dune marsh pond creek falls spa bath pool gym club pub cafe bar hall fort camp"
)


def _capitalize(word: str) -> str:
    return word[:1].upper() + word[1:]


def _english_sentence(rng: random.Random) -> list[str]:
    """Words of one sentence, punctuation attached to the word before it."""

    def noun_phrase(first: bool = False) -> list[str]:
        det = rng.choice(_DETS)
        words = [_capitalize(det) if first else det]
        if rng.random() < 0.6:
            words.append(rng.choice(_ADJS))
        words.append(rng.choice(_NOUNS))
        return words

    def clause(first: bool = False) -> list[str]:
        words = noun_phrase(first)
        if rng.random() < 0.25:
            words.append(rng.choice(_ADVS))
        words.append(rng.choice(_VERBS))
        words += noun_phrase()
        if rng.random() < 0.5:
            words.append(rng.choice(_PREPS))
            words += noun_phrase()
        return words

    shape = rng.random()
    if shape < 0.35:
        words = clause(True)
    elif shape < 0.65:
        words = clause(True)
        words[-1] += ","
        words.append(rng.choice(_CONJS))
        words += clause()
    elif shape < 0.85:
        time = rng.choice(_TIMES).split()
        words = [_capitalize(time[0]), *time[1:]]
        words[-1] += ","
        words += clause()
    else:
        words = clause(True) + rng.choice(_TIMES).split()
    words[-1] += "?" if rng.random() < 0.05 else "."
    return words


def _english_units(tokens: int) -> tuple[list[str], list[int]]:
    """Word units of about `tokens` tokens of prose in paragraphs, and the indices of sentence starts."""
    rng = random.Random(0xE17)
    units: list[str] = []
    starts: list[int] = []
    chars = 0
    paragraph_left = 0
    while chars < tokens * 5:
        words = _english_sentence(rng)
        starts.append(len(units))
        if paragraph_left == 0 and units:
            units.append("\n\n" + words[0])
            paragraph_left = rng.randint(3, 7)
        else:
            units.append(" " + words[0])
            paragraph_left = max(paragraph_left - 1, 0)
        units += [" " + w for w in words[1:]]
        chars += sum(len(w) + 1 for w in words)
    return units, starts


# ---- Chinese ----------------------------------------------------------------------------------------------

_ZH_CITIES = _words(
    "北京 上海 成都 西安 杭州 桂林 厦门 丽江 重庆 广州 苏州 南京 青岛 大理 三亚 拉萨 昆明 长沙 武汉 哈尔滨 "
    "洛阳 黄山 张家界 乌镇 敦煌 香港 澳门 台北 天津 济南"
)
_ZH_SIGHTS = _words(
    "古城 老街 博物馆 夜市 寺庙 公园 湖边 古镇 城墙 步行街 美术馆 动物园 海滩 山顶 竹林 茶园 码头 "
    "植物园 小巷 广场 江边 古塔 石窟 峡谷 草原 雪山 瀑布 灯塔"
)
_ZH_FOODS = _words(
    "火锅 小笼包 烤鸭 米线 凉皮 肉夹馍 担担面 烧麦 糖水 海鲜 煎饼 臭豆腐 汤圆 烧烤 早茶 豆花 酸菜鱼"
)
_ZH_AREAS = _words("市中心 火车站 老城区 地铁站 江边 景区门口 商业街 大学城 机场")
_ZH_WEATHER = _words("凉爽 炎热 潮湿 干燥 舒服 多雨 晴朗")
_ZH_WHO = _words("一家人 朋友 情侣 同事 父母 孩子")
_ZH_TOPICS = _words("美食 夜景 古建筑 自然风光 博物馆 小吃 徒步 拍照 人文历史 购物 温泉 民宿")
_ZH_CLAUSES = (
    "我们计划{d}天去{c}旅行",
    "{c}的{s}非常值得一看",
    "早上可以先去{s}走走",
    "中午在附近吃{f}",
    "晚上去{a}附近散步",
    "{c}到{c2}坐高铁大约{h}个小时",
    "酒店最好订在{a}附近",
    "这个季节{c}的天气比较{w}",
    "当地人推荐的{f}味道很正宗",
    "记得提前在网上预订门票",
    "{s}的夜景特别漂亮",
    "带{o}出行可以选择{s}",
    "从机场打车到{a}大约需要{m}分钟",
    "人均消费大概在{p}元左右",
    "周末{s}的人会比较多",
    "第{d}天可以安排去{c2}",
    "坐地铁去{s}很方便",
    "门票价格是{p}元",
    "建议穿舒服的鞋子",
    "下午去{s}拍照",
    "这家店的{f}排队的人很多",
    "旅游视频里介绍了{c}的{t}",
    "如果时间充裕还可以去{s}看看",
    "沿着{s}一直走就能看到{s2}",
    "回酒店之前买一些{f}当夜宵",
    "整个行程预算大约{p}元",
    "{o}都很喜欢{c}的{t}",
    "晚饭后去{s}看灯光秀",
    "雨天可以改去{s}参观",
    "傍晚的{s}最适合散步",
)


def _zh_clause(rng: random.Random) -> str:
    template = rng.choice(_ZH_CLAUSES)
    return template.format(
        c=rng.choice(_ZH_CITIES),
        c2=rng.choice(_ZH_CITIES),
        s=rng.choice(_ZH_SIGHTS),
        s2=rng.choice(_ZH_SIGHTS),
        f=rng.choice(_ZH_FOODS),
        a=rng.choice(_ZH_AREAS),
        w=rng.choice(_ZH_WEATHER),
        o=rng.choice(_ZH_WHO),
        t=rng.choice(_ZH_TOPICS),
        d=rng.randint(2, 7),
        h=rng.randint(1, 9),
        m=rng.randint(15, 90),
        p=rng.randrange(50, 3000, 10),
    )


# ---- pools ------------------------------------------------------------------------------------------------


class _Pool:
    """Units whose tokens concatenate; `take` cuts exactly `tokens` of our tokens from a start unit on."""

    def __init__(
        self, units: Sequence[str], starts: Sequence[int], tokenizer: Tokenizer, fillers: Sequence[str]
    ) -> None:
        self._tokenizer = tokenizer
        counts: dict[str, int] = {}
        cum = [0]
        off = [0]
        for unit in units:
            n = counts.get(unit)
            if n is None:
                n = counts[unit] = tokenizer.count(unit)
            cum.append(cum[-1] + n)
            off.append(off[-1] + len(unit))
        self.units = list(units)
        self.text = "".join(units)
        self.cum = cum
        self.off = off
        self.total = cum[-1]
        self.starts = list(starts)
        self._fillers = list(fillers)  # one-token units used to pad instead of cutting a unit
        self._bounds: dict[str, list[int]] = {}

    def bounds(self, unit: str) -> list[int]:
        """Character offset after each token of `unit` (index k: after k tokens)."""
        found = self._bounds.get(unit)
        if found is None:
            encode = self._tokenizer.encode
            full = encode(unit)
            found = [0] * (len(full) + 1)
            for end in range(1, len(unit) + 1):
                ids = encode(unit[:end])
                k = len(ids)
                if k <= len(full) and not found[k] and ids == full[:k]:
                    found[k] = end
            found[len(full)] = len(unit)
            self._bounds[unit] = found
        return found

    def prefix(self, unit: str, tokens: int) -> str:
        return unit[: self.bounds(unit)[tokens]]

    def take(self, start: int, tokens: int) -> str:
        cum, off, text = self.cum, self.off, self.text
        parts: list[str] = []
        i = start
        while tokens > 0:
            available = self.total - cum[i]
            if tokens >= available:
                parts.append(text[off[i] :])
                tokens -= available
                i = 0
                continue
            target = cum[i] + tokens
            end = bisect_right(cum, target, i) - 1
            parts.append(text[off[i] : off[end]])
            rest = target - cum[end]
            if rest:
                if self._fillers:
                    n = len(self._fillers)
                    parts += [self._fillers[(end + k) % n] for k in range(rest)]
                else:
                    parts.append(self.prefix(self.units[end], rest))
            break
        return "".join(parts)


def _english_pool(tokenizer: Tokenizer) -> _Pool:
    units, starts = _english_units(40_000)
    fillers = [" " + w for w in _SHORT if tokenizer.count(" " + w) == 1]
    return _Pool(units, starts, tokenizer, fillers)


def _zh_pool(tokenizer: Tokenizer) -> _Pool:
    """Clauses joined by Chinese commas and full stops, sentences grouped into lines (paragraphs).

    A run of Chinese characters is tokenized as a whole (character pairs may merge), so a unit ends with its
    punctuation and a clause is only used when its first character does not merge with a comma or full stop
    before it: then every unit boundary is a token boundary and units concatenate.
    """
    rng = random.Random(0x2C4)
    encode = tokenizer.encode
    joins = [(p, encode(p)) for p in ("，", "。")]

    def fresh(clause: str) -> bool:
        ids = encode(clause)
        return all(encode(p + clause) == pids + ids for p, pids in joins)

    units: list[str] = []
    starts: list[int] = []
    chars = 0
    sentences_left = 0
    while chars < 24_000:
        n = rng.randint(2, 4)
        clauses: list[str] = []
        while len(clauses) < n:
            clause = _zh_clause(rng)
            if fresh(clause):
                clauses.append(clause)
        starts.append(len(units))
        for k, clause in enumerate(clauses):
            unit = clause + ("。" if k == n - 1 else "，")
            if k == 0 and sentences_left == 0 and units:
                unit = "\n" + unit
                sentences_left = rng.randint(3, 6)
            units.append(unit)
            chars += len(unit)
        sentences_left = max(sentences_left - 1, 0)
    return _Pool(units, starts, tokenizer, [])


def _zh_heads() -> list[str]:
    return [f"{city}{topic}，" for city in _ZH_CITIES for topic in _ZH_TOPICS]


# ---- the sizer --------------------------------------------------------------------------------------------

_HEAD_WORDS = 4  # words of the random head of an English text, then a full stop
_ID_POOL_BITS = 16
_ID_HEAD = 8  # fresh random ids in front of each id prompt


class Sizer:
    """Makes prompt text (or token ids) of a requested size in the target's tokens.

    `ratio` is target tokens per fleetgate-tokenizer token, measured once by the runner: send
    `calibration_sample()` to the target's `/tokenize` and divide its count by `Sizer().count(sample)`. Texts
    hit the size within half a ratio (the rounding of target tokens to ours); `ids` are exact. Everything is
    deterministic given the `random.Random` passed in; pools are built on first use.
    """

    def __init__(self, ratio: float = 1.0, vocab_size: int = 32000) -> None:
        if not ratio > 0 or ratio == float("inf"):
            raise ValueError(f"ratio must be a positive number, got {ratio}")
        if vocab_size <= 3000:
            raise ValueError(
                f"vocab_size must exceed 3000 (ids come from [1000, vocab_size - 1000)): {vocab_size}"
            )
        self.ratio = ratio
        self.vocab_size = vocab_size
        self.tokenizer = Tokenizer()
        self._en: _Pool | None = None
        self._zh: _Pool | None = None
        self._zh_heads: list[str] = []
        self._zh_head_counts: dict[int, int] = {}
        self._id_pool: list[int] = []
        self._head_words = [w for w in _SHORT if self._one_token(w)]
        self._head_caps = [_capitalize(w) for w in self._head_words]
        self._head_spaced = [" " + w for w in self._head_words]

    def _one_token(self, word: str) -> bool:
        count = self.tokenizer.count
        return count(word) == count(" " + word) == count(_capitalize(word)) == 1

    def ours(self, tokens: int) -> int:
        """Our tokens for `tokens` target tokens."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        if tokens == 0:
            return 0
        return max(1, round(tokens / self.ratio))

    @property
    def english(self) -> _Pool:
        if self._en is None:
            self._en = _english_pool(self.tokenizer)
        return self._en

    @property
    def chinese(self) -> _Pool:
        if self._zh is None:
            self._zh = _zh_pool(self.tokenizer)
            self._zh_heads = _zh_heads()
        return self._zh

    def text(self, tokens: int, rng: random.Random) -> str:
        """English-like prose of about `tokens` target tokens."""
        n = self.ours(tokens)
        if n == 0:
            return ""
        choices = len(self._head_words)
        picks = [rng.randrange(choices) for _ in range(min(n, _HEAD_WORDS))]
        head = self._head_caps[picks[0]] + "".join(self._head_spaced[i] for i in picks[1:])
        if n <= _HEAD_WORDS:
            return head
        if n == _HEAD_WORDS + 1:
            return head + "."
        pool = self.english
        start = pool.starts[rng.randrange(len(pool.starts))]
        return head + "." + pool.take(start, n - _HEAD_WORDS - 1)

    def text_zh(self, tokens: int, rng: random.Random) -> str:
        """Chinese travel-flavoured text of about `tokens` target tokens."""
        n = self.ours(tokens)
        if n == 0:
            return ""
        pool = self.chinese
        index = rng.randrange(len(self._zh_heads))
        head = self._zh_heads[index]
        head_tokens = self._zh_head_counts.get(index)
        if head_tokens is None:
            head_tokens = self._zh_head_counts[index] = self.tokenizer.count(head)
        if n <= head_tokens:
            return pool.prefix(head, n)
        start = pool.starts[rng.randrange(len(pool.starts))]
        return head + pool.take(start, n - head_tokens)

    def ids(self, tokens: int, rng: random.Random) -> list[int]:
        """Exactly `tokens` random ids in [1000, vocab_size - 1000): token-id prompts for /v1/completions."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        lo, hi = 1000, self.vocab_size - 1000
        head = [rng.randrange(lo, hi) for _ in range(min(tokens, _ID_HEAD))]
        rest = tokens - len(head)
        if rest <= 0:
            return head
        pool = self._ids_pool()
        size = len(pool)
        start = rng.randrange(size)
        while rest > 0:
            piece = pool[start : start + rest]
            head += piece
            rest -= len(piece)
            start = 0
        return head

    def _ids_pool(self) -> list[int]:
        if not self._id_pool:
            lo, hi = 1000, self.vocab_size - 1000
            self._id_pool = random.Random(0x1D5).choices(range(lo, hi), k=1 << _ID_POOL_BITS)
        return self._id_pool

    def count(self, text: str) -> int:
        """Estimated target tokens of a text: our count times `ratio`.

        Tokenizes the text (about 0.7 us per token) and the tokenizer caches it: for checks and calibration,
        not for every request; workloads know the sizes of the texts they made.
        """
        return round(self.tokenizer.count(text) * self.ratio)


def calibration_sample() -> str:
    """A fixed text of about 2,000 of our tokens mixing English prose, Chinese, JSON and numbers.

    The runner sends it to the target's `/tokenize` (as a plain prompt, no chat template) and sets `ratio =
    target_count / Sizer().count(calibration_sample())`.
    """
    sizer = Sizer()
    rng = random.Random(20240601)
    schema = {
        "name": "search_segments",
        "description": "Search travel video segments by topic and city.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "city": {"type": "string"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50},
            },
            "required": ["query", "city"],
        },
    }
    numbers = " ".join(f"{zlib.crc32(str(i).encode()) % 100000}" for i in range(40))
    parts = [
        sizer.text(1000, rng),
        sizer.text_zh(500, rng),
        orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode(),
        "Flight 2024-06-01 08:45, gate B12, seat 23A, total $1,249.50. " + numbers,
        sizer.text(300, rng),
    ]
    return "\n\n".join(parts)
