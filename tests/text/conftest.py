"""Fixtures for the text tests: a tiny random T5 with a locally trained tokenizer, built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded in tests

_SENTENCES = [
    "a red circle to the left of a blue square",
    "two green triangles above a yellow star",
    "three small blue squares in a row",
    "a large purple circle below a tiny orange triangle",
    "one white star to the right of two black circles",
    "the stock market fell sharply today",
    "an empty grey background with nothing on it",
    "four red squares and a green circle",
    "a crimson circle next to a teal square",
    "five yellow stars scattered on a black background",
]


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A save_pretrained folder with a random 2-layer T5 (d_model 32) and a WordLevel tokenizer."""
    import torch
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    folder = tmp_path_factory.mktemp("tiny_t5")
    tokenizer = Tokenizer(WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    # special tokens first, so <pad> is id 0 as in T5
    tokenizer.train_from_iterator(_SENTENCES, WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                      unk_token="<unk>")
    wrapped.save_pretrained(folder)

    config = T5Config(vocab_size=128, d_model=32, num_layers=2, num_heads=2, d_kv=8, d_ff=64,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    assert tokenizer.get_vocab_size() <= config.vocab_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        T5EncoderModel(config).save_pretrained(folder)
    return folder
