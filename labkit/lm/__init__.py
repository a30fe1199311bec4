"""Causal language models: WikiText-2 blocks, perplexity, and the fine-tune loop (QAT and its float baseline)."""

from labkit.lm.finetune import fine_tune
from labkit.lm.perplexity import perplexity, wikitext_blocks

__all__ = ["fine_tune", "perplexity", "wikitext_blocks"]
