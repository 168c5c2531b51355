"""lmreason: fine-tune pretrained language models and measure where their reasoning breaks."""

__version__ = "0.1.0"
