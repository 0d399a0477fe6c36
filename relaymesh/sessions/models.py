"""
Models: the short name of a Claude model id, its prices per million tokens,
its context window, and what a message's usage costs.

The numbers are claudectl 0.49.2's built-in profiles. A model id that names
none of the known families is priced as opus and marked unverified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Tokens in a million: prices are per million tokens.
PER_MILLION = 1_000_000

#: The context window claudectl assumes when it knows nothing better.
DEFAULT_CONTEXT_WINDOW = 200_000  # claudectl 0.49: 200,000

#: Where the profiles come from, as claudectl names it.
PROFILE_SOURCE = "built-in"


@dataclass(frozen=True)
class Prices:
    """
    US dollars per million tokens.

    @ivar input: Uncached input tokens.
    @ivar output: Output tokens.
    @ivar cache_read: Input tokens read from the prompt cache.
    @ivar cache_write: Input tokens written to the prompt cache.
    """

    input: float
    output: float
    cache_read: float
    cache_write: float


@dataclass(frozen=True)
class Usage:
    """
    The token counts of one message's C{usage}.
    """

    input: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0

    @property
    def prompt(self) -> int:
        """
        All the input tokens: uncached, cache reads and cache writes.
        """
        return self.input + self.cache_read + self.cache_write


@dataclass(frozen=True)
class ModelProfile:
    """
    What relaymesh knows of one model.

    @ivar short_name: e.g. C{"opus-4.6"}, or the id itself when unknown.
    @ivar family: C{"opus"}, C{"sonnet"}, C{"haiku"}, or C{None} when unknown.
    @ivar prices: Its prices.
    @ivar context_window: Its context window in tokens.
    @ivar verified: Whether the prices are known rather than assumed.
    """

    short_name: str
    family: str | None
    prices: Prices
    context_window: int
    verified: bool


OPUS = Prices(input=15.0, output=75.0, cache_read=1.875, cache_write=18.75)
SONNET = Prices(input=3.0, output=15.0, cache_read=0.375, cache_write=3.75)
HAIKU = Prices(input=0.80, output=4.0, cache_read=0.10, cache_write=1.0)

#: Family -> prices.
FAMILY_PRICES = {"opus": OPUS, "sonnet": SONNET, "haiku": HAIKU}

#: (family, version) -> context window, where it differs from the default.
WIDE_WINDOWS = {("opus", "4.6"): 1_000_000}

_FAMILY = re.compile(r"(opus|sonnet|haiku)", re.IGNORECASE)
# "claude-opus-4-6", "claude-sonnet-4-6-20260401", "claude-3-5-haiku-20241022"
_AFTER = re.compile(r"^-(\d{1,2})(?:-(\d{1,2}))?(?=-|$|\[)")
_BEFORE = re.compile(r"(\d{1,2})(?:-(\d{1,2}))?-$")


def _version(model_id: str, start: int, end: int) -> str | None:
    after = _AFTER.match(model_id[end:])
    if after is None:
        after = _BEFORE.search(model_id[:start])
    if after is None:
        return None
    major, minor = after.group(1), after.group(2)
    return f"{major}.{minor}" if minor is not None else major


def profile(model_id: str | None) -> ModelProfile:
    """
    The profile of C{model_id}: a known family's prices and window, or opus
    prices marked unverified.
    """
    model_id = model_id or ""
    found = _FAMILY.search(model_id)
    if found is None:
        return ModelProfile(
            short_name=model_id or "unknown",
            family=None,
            prices=OPUS,
            context_window=DEFAULT_CONTEXT_WINDOW,
            verified=False,
        )
    family = found.group(1).lower()
    version = _version(model_id, found.start(), found.end())
    return ModelProfile(
        short_name=f"{family}-{version}" if version else family,
        family=family,
        prices=FAMILY_PRICES[family],
        context_window=WIDE_WINDOWS.get((family, version or ""), DEFAULT_CONTEXT_WINDOW),
        verified=True,
    )


def cost(prices: Prices, usage: Usage) -> float:
    """
    What C{usage} costs at C{prices}, in US dollars.
    """
    return (
        usage.input * prices.input
        + usage.output * prices.output
        + usage.cache_read * prices.cache_read
        + usage.cache_write * prices.cache_write
    ) / PER_MILLION
