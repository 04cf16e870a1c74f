"""sft-bench: does supervised fine-tuning (SFT) beat fine-tuning with few labels?"""

__version__ = "0.1.0"
