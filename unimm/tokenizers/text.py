"""Text tokenizer: a real byte-level BPE for small models, the checkpoint's own for real backbones."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..config import ConfigError


@dataclass
class TextTokenizerConfig:
    # Local directory or hub id of a tokenizer; None trains a byte-level BPE on `corpus`.
    pretrained: str | None = None
    # "shapes" (built-in shapes-world text) or a path to a UTF-8 text file, one sentence a line.
    corpus: str = "shapes"
    vocab_size: int = 512
    # Special tokens unimm adds; Janus checkpoints use "<image_placeholder>" etc.
    image_token: str = "<image>"
    boi_token: str = "<begin_of_image>"
    eoi_token: str = "<end_of_image>"

    def __post_init__(self):
        if self.vocab_size < 300:  # 256 bytes + the special tokens
            raise ValueError(f"tokenizer vocab_size must be >= 300 for a byte-level BPE, got {self.vocab_size}")


def read_corpus(corpus: str) -> list[str]:
    """The lines of a text file, the training corpus of a new BPE (named corpora such as
    "shapes" are resolved by the caller, which knows the data: unimm.data.corpus.corpus_lines)."""
    path = Path(corpus)
    if not path.is_file():
        raise ConfigError(f"tokenizer corpus {corpus!r} is neither a named corpus ('shapes') nor a readable text file")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_bpe_tokenizer(lines: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with the `tokenizers` library; any text stays encodable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<bos>", "<eos>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        clean_up_tokenization_spaces=False,
    )


def build_text_tokenizer(config: TextTokenizerConfig, corpus: list[str] | None = None) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, or a BPE trained on `corpus` (lines; default: config.corpus as a file)."""
    if config.pretrained:
        tok = AutoTokenizer.from_pretrained(config.pretrained)
    else:
        tok = train_bpe_tokenizer(read_corpus(config.corpus) if corpus is None else corpus, config.vocab_size)
    return add_unimm_tokens(tok, config)


def add_unimm_tokens(tok: PreTrainedTokenizerBase, config: TextTokenizerConfig) -> PreTrainedTokenizerBase:
    """Make sure the image placeholder, begin/end-of-image and a pad token exist."""
    new = [t for t in (config.image_token, config.boi_token, config.eoi_token) if t not in tok.get_vocab()]
    if new:
        tok.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": "<pad>"})
    if tok.eos_token is None:
        raise ConfigError("the text tokenizer has no end-of-sequence token; chat cannot know where to stop")
    return tok


def load_text_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(directory))
