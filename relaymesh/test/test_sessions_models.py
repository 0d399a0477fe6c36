"""
Tests for L{relaymesh.sessions.models}: short names, prices, windows, cost.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaymesh.sessions.models import HAIKU, OPUS, SONNET, Usage, cost, profile


class ProfileTests(SynchronousTestCase):
    """
    The families claudectl knows, and the rest.
    """

    def test_families(self) -> None:
        """
        Opus, Sonnet and Haiku ids get their family's prices (per million
        tokens: input / output / cache read / cache write).
        """
        self.assertEqual(profile("claude-opus-4-6").prices, OPUS)
        self.assertEqual((OPUS.input, OPUS.output, OPUS.cache_read, OPUS.cache_write), (15, 75, 1.875, 18.75))
        self.assertEqual(profile("claude-sonnet-4-6-20260401").prices, SONNET)
        self.assertEqual((SONNET.input, SONNET.output, SONNET.cache_read, SONNET.cache_write), (3, 15, 0.375, 3.75))
        self.assertEqual(profile("claude-3-5-haiku-20241022").prices, HAIKU)
        self.assertEqual((HAIKU.input, HAIKU.output, HAIKU.cache_read, HAIKU.cache_write), (0.80, 4, 0.10, 1.0))

    def test_short_names(self) -> None:
        self.assertEqual(profile("claude-opus-4-6").short_name, "opus-4.6")
        self.assertEqual(profile("claude-sonnet-4-6-20260401").short_name, "sonnet-4.6")
        self.assertEqual(profile("claude-3-5-haiku-20241022").short_name, "haiku-3.5")
        self.assertEqual(profile("claude-opus-4-20250514").short_name, "opus-4")

    def test_windows(self) -> None:
        """
        Opus 4.6 has a 1,000,000-token window; the others 200,000.
        """
        self.assertEqual(profile("claude-opus-4-6").context_window, 1_000_000)
        self.assertEqual(profile("claude-opus-4-1-20250805").context_window, 200_000)
        self.assertEqual(profile("claude-sonnet-4-6").context_window, 200_000)
        self.assertEqual(profile("claude-haiku-4-5").context_window, 200_000)

    def test_unknown(self) -> None:
        """
        An unknown model (or none) is priced as opus and unverified.
        """
        for model in ("gpt-5", "", None):
            known = profile(model)
            self.assertEqual(known.prices, OPUS)
            self.assertFalse(known.verified)
            self.assertEqual(known.context_window, 200_000)
        self.assertTrue(profile("claude-opus-4-6").verified)


class CostTests(SynchronousTestCase):
    def test_cost(self) -> None:
        """
        Each kind of token at its price.
        """
        used = Usage(input=1_000_000, cache_read=1_000_000, cache_write=1_000_000, output=1_000_000)
        self.assertAlmostEqual(cost(SONNET, used), 3 + 0.375 + 3.75 + 15)
        self.assertAlmostEqual(cost(OPUS, Usage(input=5, output=40)), (5 * 15 + 40 * 75) / 1e6)
        self.assertEqual(used.prompt, 3_000_000)
