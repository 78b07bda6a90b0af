"""Random-weight T5 models, a tokenizer trained on the spot and a LoRA adapter, all offline.

`make_tiny_model(folder)` writes a model of a few MB for tests and offline try-outs;
`build_t5(folder, shape)` writes any shape (the benchmark uses flan-t5-base's exact one).
Everything is deterministic from the seed. No Django imports.
"""

import json
import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# The tokenizer's fixed ids match T5's: the decoder starts from <pad>, generation ends at </s>.
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
EOS_ID = 1
BYTE_PIECES = [f"<0x{value:02X}>" for value in range(256)]
MAX_INPUT_TOKENS = 512

_WORD_LINES = (
    "the a an model node batch token stream river stone light garden music table window",
    "tenant key limit queue answer question small large quick slow bright quiet green blue",
    "runs reads writes sends waits stops starts turns holds brings finds keeps makes says",
    "over under after before with without near far again always never often today tomorrow",
)
_WORDS = [word for line in _WORD_LINES for word in line.split()]
# Multi-byte characters the tokenizer learns as pieces; emoji and CJK are left out of the
# corpus on purpose so they are spelled with byte pieces (<0xF0> ...), as sentencepiece's
# byte fallback does, which makes half-finished characters visible to the detokenizer.
_ACCENTED = ("café naïve façade Grüße déjà", "señor crème brûlée €5 £3 Ωmega")
_ACCENTED_WORDS = [word for line in _ACCENTED for word in line.split()]


@dataclass(frozen=True)
class T5Shape:
    """The dimensions of a T5 v1.1 (gated-gelu) model; defaults make a tiny one."""

    d_model: int = 64
    d_kv: int = 16
    d_ff: int = 128
    num_layers: int = 2
    num_decoder_layers: int = 2
    num_heads: int = 4
    vocab_size: int = 0  # 0: exactly the tokenizer's size
    lm_head_std: float = 1.0
    # Scales the end-of-sequence row of lm_head: at 2.0 about a third of the tiny model's
    # greedy outputs end by themselves within 60 tokens, the rest run to max_tokens.
    eos_scale: float = 2.0


FLAN_T5_BASE = T5Shape(
    d_model=768,
    d_kv=64,
    d_ff=2048,
    num_layers=12,
    num_decoder_layers=12,
    num_heads=12,
    vocab_size=32128,
    lm_head_std=0.05,
    eos_scale=1.0,
)


def _corpus(seed: int, sentences: int = 3000) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), rng.choice(_ACCENTED_WORDS))
        lines.append(" ".join(words).capitalize() + rng.choice(".?!,;"))
    return lines


def build_tokenizer(seed: int = 0, vocab_size: int = 400) -> Any:
    """A sentencepiece-style Unigram tokenizer (Metaspace ▁, byte fallback) trained here,
    wrapped as a transformers PreTrainedTokenizerFast."""
    from transformers import PreTrainedTokenizerFast

    # transformers leaves this class's __init__ unannotated.
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=_train_unigram(seed, vocab_size),
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=MAX_INPUT_TOKENS,
    )


def _train_unigram(seed: int, vocab_size: int) -> Any:
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from tokenizers.trainers import UnigramTrainer

    draft = Tokenizer(models.Unigram())
    draft.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    draft.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = UnigramTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, EOS, UNK], unk_token=UNK, shrinking_factor=0.75
    )
    corpus = _corpus(seed)
    draft.train_from_iterator(corpus, trainer=trainer)
    trained = [piece for piece, _ in json.loads(draft.to_str())["model"]["vocab"]]
    pieces = [(piece, 0.0) for piece in trained[:3]] + _rescore(trained[3:], corpus)
    floor = min(score for _, score in pieces) - 10.0
    known = {piece for piece, _ in pieces}
    pieces += [(byte, floor) for byte in BYTE_PIECES if byte not in known]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=True))
    tok.normalizer, tok.pre_tokenizer = draft.normalizer, draft.pre_tokenizer
    return _with_decoder(tok)


def _with_decoder(tok: Any) -> Any:
    from tokenizers import decoders
    from tokenizers.processors import TemplateProcessing

    # The same decoder chain as sentencepiece/Llama: ▁ → space, bytes → characters, drop the
    # space the pre-tokenizer prepended to the first word.
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.post_processor = TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, EOS_ID)]
    )
    return tok


def _rescore(pieces: list[str], corpus: list[str]) -> list[tuple[str, float]]:
    # The trainer's scores differ in their last bits from run to run (it sums in parallel);
    # score the learned pieces again by their frequency in the corpus so the file is the
    # same for the same seed.
    text = "".join("▁" + line.replace(" ", "▁") for line in corpus)
    counts = {piece: text.count(piece) + 1 for piece in pieces}
    total = sum(counts.values())
    ranked = sorted((-math.log(counts[piece] / total), piece) for piece in pieces)
    return [(piece, -round(cost, 6)) for cost, piece in ranked]


def _t5_config(shape: T5Shape, vocab_size: int) -> Any:
    from transformers import T5Config

    # T5Config is a dataclass: its typed __init__ lists the declared fields only; other
    # keywords (the two below) reach PreTrainedConfig's __post_init__ at run time.
    config = T5Config(  # type: ignore[call-arg]
        d_model=shape.d_model,
        d_kv=shape.d_kv,
        d_ff=shape.d_ff,
        num_layers=shape.num_layers,
        num_decoder_layers=shape.num_decoder_layers,
        num_heads=shape.num_heads,
        vocab_size=vocab_size,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        # transformers 5 turns this into scale_decoder_outputs=False (flan-t5 does not scale
        # the decoder output) and then forces tie_word_embeddings=True (see docs/engine.md).
        tie_word_embeddings=False,
    )
    return config


def build_t5(folder: Path, shape: T5Shape, tokenizer: Any, seed: int = 0) -> int:
    """Write a random-weight T5 with an untied lm_head into folder; returns its parameter count."""
    from transformers import T5ForConditionalGeneration

    vocab_size = shape.vocab_size or len(tokenizer)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(_t5_config(shape, vocab_size))
    # transformers leaves PreTrainedModel.eval unannotated.
    model.eval()  # type: ignore[no-untyped-call]
    # A separate output matrix (flan-t5 has one). A large std on the tiny model gives peaked
    # logits, so greedy choices are far from ties and batch-invariance tests are meaningful.
    head = torch.empty(vocab_size, shape.d_model).normal_(0.0, shape.lm_head_std)
    head[EOS_ID] *= shape.eos_scale
    model.lm_head.weight = torch.nn.Parameter(head)
    # Only now mark the output untied: set before construction, transformers 5 would also
    # untie the encoder/decoder input embeddings from `shared`, which T5 always shares.
    model.config.tie_word_embeddings = False
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


# Every Linear of a gated T5 block: what the per-tenant adapters of make_tiny_model adapt.
ALL_T5_LINEARS = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")


def build_adapter(
    base_folder: Path,
    adapter_folder: Path,
    seed: int = 0,
    rank: int = 8,
    strength: float = 0.05,
    targets: tuple[str, ...] = ("q", "v"),
) -> None:
    """Write a LoRA adapter (of `targets`) whose update is `strength` times each weight's norm."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    base = AutoModelForSeq2SeqLM.from_pretrained(base_folder)
    torch.manual_seed(seed + 1)
    # init_lora_weights=False draws B at random too (the default leaves B = 0, a no-op adapter).
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=list(targets),
        task_type=TaskType.SEQ_2_SEQ_LM,
        init_lora_weights=False,
    )
    with warnings.catch_warnings():
        # peft calls a transformers property deprecated in 5.x; nothing to act on here.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        peft_model = get_peft_model(base, config)
    _set_strength(peft_model, strength)
    peft_model.save_pretrained(str(adapter_folder))


def _set_strength(peft_model: Any, strength: float) -> None:
    # Random A and B give updates several times larger than the weights they adapt, which
    # a trained adapter never has (and which floods bitsandbytes with activation outliers).
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                a, b = _weight(module.lora_A["default"]), _weight(module.lora_B["default"])
                delta = (b @ a) * module.scaling["default"]
                b.mul_(strength * _weight(module.base_layer).norm() / delta.norm())


def _weight(layer: torch.nn.Module) -> torch.Tensor:
    # LoRA's A and B and the layers it adapts (q and v) are all Linear: a weight tensor each.
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def make_tiny_model(folder: Path, seed: int = 0, adapters: int = 0) -> Path:
    """Write folder/ (tiny T5 + tokenizer), folder/adapter/ (LoRA of q and v) and `adapters`
    further LoRA adapters of every Linear in folder/adapters/1..N, each from its own seed;
    returns folder."""
    folder = Path(folder)
    tokenizer = build_tokenizer(seed)
    build_t5(folder, T5Shape(), tokenizer, seed)
    # A strong adapter, so tests see it change what the tiny model writes.
    build_adapter(folder, folder / "adapter", seed, rank=4, strength=1.0)
    for number in range(1, adapters + 1):
        build_adapter(
            folder,
            folder / "adapters" / str(number),
            seed + 1000 * number,
            rank=4,
            strength=1.0,
            targets=ALL_T5_LINEARS,
        )
    return folder
