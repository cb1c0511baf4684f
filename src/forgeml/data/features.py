"""Features: how a raw column becomes numbers the model sees.

Each feature type registers under its YAML ``type`` with its config class, and follows one life
cycle: ``parse`` raw values (no fitted state; marks bad rows), ``fit`` on the training split only,
``transform`` to arrays, and ``state``/``load_state`` to round-trip the fitted statistics through
JSON. ``Features`` bundles the input features and the target, and is what ``features.json`` holds.
"""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
from pydantic import Field

from forgeml.config import Section
from forgeml.data.resize import resize_bilinear
from forgeml.data.table import Table
from forgeml.errors import ConfigError, DataError
from forgeml.inputs import InputSpec
from forgeml.registry import FEATURES

MISSING = {"", "na", "nan", "null", "none", "n/a"}
FORECAST = "__target__"  # the parsed target's key when it shares its raw column with an input (forecasting)
# Pillow's Image.MAX_IMAGE_PIXELS (a test checks it), kept here so configs need no Pillow import
PILLOW_MAX_IMAGE_PIXELS = 89_478_485


class Parsed:
    """Parsed values of one column, with the rows that could not be read and why.

    ``drop`` marks rows that are fine but cannot be used, whatever ``on_bad_row`` says: the first
    rows of a series before a whole window of history exists, the last rows of a forecast target.
    """

    def __init__(
        self, values: np.ndarray, bad: np.ndarray | None = None, reasons: dict[int, str] | None = None, drop: np.ndarray | None = None
    ):
        self.values = values
        self.bad = np.zeros(len(values), dtype=bool) if bad is None else bad
        self.reasons = reasons or {}
        self.drop = np.zeros(len(values), dtype=bool) if drop is None else drop


def _natural_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


# --------------------------------------------------------------------------------------------------
# number


class NumberConfig(Section):
    """A numeric column."""

    type: Literal["number"] = Field(description="A numeric column.")
    name: str = Field(description="Column name.")
    normalize: Literal["standard", "minmax", "none"] = Field(
        "standard", description="standard: (x - mean) / std; minmax: to [0, 1]; none: as is. Fitted on the training split."
    )
    lead: int = Field(
        0, ge=0, description="Target only: predict the value this many rows ahead in the same file (forecasting; rows are in time order)."
    )


def parse_numbers(column: np.ndarray) -> Parsed:
    """Floats from a column of numbers or strings; missing and unreadable values are bad rows."""
    if column.dtype != object:
        values = column.astype(np.float64)
        bad = ~np.isfinite(values)
        return Parsed(values, bad, {int(i): "missing or not finite" for i in np.flatnonzero(bad)})
    values = np.zeros(len(column), dtype=np.float64)
    bad = np.zeros(len(column), dtype=bool)
    reasons: dict[int, str] = {}
    for i, raw in enumerate(column):
        text = "" if raw is None else str(raw).strip()
        if text.lower() in MISSING:
            bad[i], reasons[i] = True, "missing value"
            continue
        try:
            values[i] = float(text)
        except ValueError:
            bad[i], reasons[i] = True, f"cannot read {text!r} as a number"
            continue
        if not math.isfinite(values[i]):
            bad[i], reasons[i] = True, f"{text!r} is not a finite number"
    return Parsed(values, bad, reasons)


def same_run(table: Table, offset: int) -> np.ndarray:
    """For each row i, whether row i + offset exists and comes from the same file, on the same side:
    a window or a lead never reaches across two files."""
    n = len(table)
    ok = np.zeros(n, dtype=bool)
    if abs(offset) >= n:
        return ok
    here = np.arange(max(0, -offset), min(n, n - offset))
    there = here + offset
    ok[here] = (table.origin_index[here] == table.origin_index[there]) & (
        np.sign(offset) * (table.line[there] - table.line[here]) > 0
    )
    return ok


@FEATURES.register("number", NumberConfig)
class NumberFeature:
    kind = "vector"

    def __init__(self, cfg: NumberConfig):
        self.cfg = cfg
        self.shift, self.scale = 0.0, 1.0
        self.width = 1

    def parse(self, column: np.ndarray, table: Table) -> Parsed:
        parsed = parse_numbers(column)
        lead = self.cfg.lead
        if lead == 0:
            return parsed
        # row i's target is the value `lead` rows later; the last rows have none yet
        n = len(column)
        usable = same_run(table, lead)
        source = np.minimum(np.arange(n) + lead, n - 1)
        values = np.where(usable, parsed.values[source], 0.0)
        bad = usable & parsed.bad[source]
        reasons = {int(i): f"the value {lead} row(s) ahead ({table.where(int(source[i]))}): {parsed.reasons.get(int(source[i]), 'bad value')}" for i in np.flatnonzero(bad)}
        return Parsed(values, bad, reasons, drop=~usable)

    def fit(self, values: np.ndarray) -> None:
        if self.cfg.normalize == "standard":
            std = float(values.std())
            self.shift, self.scale = float(values.mean()), std if std > 0 else 1.0
        elif self.cfg.normalize == "minmax":
            low, high = float(values.min()), float(values.max())
            self.shift, self.scale = low, (high - low) if high > low else 1.0

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.shift) / self.scale).astype(np.float32).reshape(-1, 1)

    def inverse(self, encoded: np.ndarray) -> np.ndarray:
        return encoded.astype(np.float64) * self.scale + self.shift

    def state(self) -> dict[str, Any]:
        return {"shift": self.shift, "scale": self.scale}

    def load_state(self, state: dict[str, Any]) -> None:
        self.shift, self.scale = float(state["shift"]), float(state["scale"])


# --------------------------------------------------------------------------------------------------
# category


class CategoryConfig(Section):
    """A column of labels: one-hot encoded as an input, class indices as a target."""

    type: Literal["category"] = Field(description="A column of labels.")
    name: str = Field(description="Column name.")
    min_count: int = Field(1, ge=1, description="Input only: values seen fewer times in training go to the unknown bucket.")


@FEATURES.register("category", CategoryConfig)
class CategoryFeature:
    kind = "vector"
    UNKNOWN = "<unknown>"

    def __init__(self, cfg: CategoryConfig):
        self.cfg = cfg
        self.vocabulary: list[str] = []
        self.as_target = False

    @property
    def width(self) -> int:
        return len(self.vocabulary)

    def parse(self, column: np.ndarray, table: Table) -> Parsed:
        if column.dtype.kind in "iub":
            return Parsed(np.array([str(v) for v in column], dtype=object))
        values = np.empty(len(column), dtype=object)
        bad = np.zeros(len(column), dtype=bool)
        reasons: dict[int, str] = {}
        for i, raw in enumerate(column):
            if isinstance(raw, float) and raw.is_integer():
                raw = int(raw)
            text = "" if raw is None else str(raw).strip()
            if text == "" or (isinstance(raw, float) and math.isnan(raw)):
                bad[i], reasons[i] = True, "missing value"
            values[i] = text
        return Parsed(values, bad, reasons)

    def fit(self, values: np.ndarray) -> None:
        names, counts = np.unique(values.astype(str), return_counts=True)
        kept = [str(n) for n, c in zip(names, counts) if self.as_target or c >= self.cfg.min_count]
        kept.sort(key=_natural_key)
        self.vocabulary = kept if self.as_target else [self.UNKNOWN, *kept]

    def indices(self, values: np.ndarray, table: Table | None = None) -> np.ndarray:
        lookup = {name: i for i, name in enumerate(self.vocabulary)}
        out = np.empty(len(values), dtype=np.int64)
        for i, value in enumerate(values):
            index = lookup.get(str(value))
            if index is None:
                if self.as_target:
                    where = f"{table.where(i)}: " if table is not None else ""
                    raise DataError(
                        f"{where}column {self.cfg.name!r}: label {value!r} never occurs in the training split "
                        f"(known: {', '.join(self.vocabulary[:20])})"
                    )
                index = 0
            out[i] = index
        return out

    def transform(self, values: np.ndarray) -> np.ndarray:
        return np.eye(self.width, dtype=np.float32)[self.indices(values)]

    def state(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary}

    def load_state(self, state: dict[str, Any]) -> None:
        self.vocabulary = list(state["vocabulary"])


# --------------------------------------------------------------------------------------------------
# image


class ImageConfig(Section):
    """An image: an array column (built-in datasets) or a column of image file paths (PNG, JPEG, ...)."""

    type: Literal["image"] = Field(description="An image column.")
    name: str = Field(description="Column name.")
    size: Optional[tuple[int, int]] = Field(None, description="Resize to [height, width]; null: the size of the first image.")
    channels: Optional[Literal[1, 3]] = Field(None, description="1 (grey) or 3 (RGB); null: from the data.")
    normalize: Literal["standard", "none"] = Field(
        "standard", description="standard: per-channel mean/std fitted on the training split; none: pixels in [0, 1]."
    )
    max_image_pixels: int = Field(
        PILLOW_MAX_IMAGE_PIXELS,
        ge=1,
        description="Refuse an image file of more pixels (width x height, read from its header before decoding): "
        "a decompression bomb. Default: Pillow's own limit.",
    )


# Pillow modes wider than 8 bits, and the pixel value that is white. Pillow reads 16-bit PNG and TIFF
# greys as I;16 (older Pillow: I); its L and RGB conversions clip such pixels at 255 instead of scaling.
_FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}
# Pillow's decompression-bomb limit is one module-wide setting; each image feature applies its own
# max_image_pixels instead, so Pillow's is lifted while a header is read (under a lock: serve uses threads).
_PILLOW_LIMIT = threading.Lock()


def _open_image(source: Path | io.BytesIO, label: str, max_pixels: int) -> Any:
    """Open an image file lazily (the header only), refusing one of more than ``max_pixels`` pixels.

    Raises:
        ValueError: the image has more pixels than ``max_pixels``.
        OSError: the file is missing or not an image Pillow can read.
    """
    from PIL import Image

    with _PILLOW_LIMIT:
        pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(source)
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ValueError(
            f"image {label} has {width * height:,} pixels ({width} wide, {height} high), over max_image_pixels "
            f"({max_pixels:,}): refused unread as a possible decompression bomb "
            "(raise the image feature's max_image_pixels if it is genuine)"
        )
    return image


def _deep_pixels(image: Any, label: str) -> np.ndarray:
    """The H x W pixels of a 16-bit or 32-bit grey image, scaled by its mode's white to [0, 1].

    Raises:
        ValueError: 32-bit integer pixels beyond 16 bits, or float pixels outside [0, 1].
    """
    full_scale = _FULL_SCALE[image.mode]
    pixels = np.asarray(image).astype(np.float32)
    if image.mode in ("I", "F") and pixels.size:
        lowest, highest = float(pixels.min()), float(pixels.max())
        if not (math.isfinite(lowest) and math.isfinite(highest) and 0.0 <= lowest and highest <= full_scale):
            what = "16-bit integers (0 to 65535)" if image.mode == "I" else "floats in [0, 1]"
            raise ValueError(f"image {label} has pixels from {lowest:g} to {highest:g}; forgeml reads {image.mode!r} pixels as {what}")
    return pixels / np.float32(full_scale)


def _inside_folder(path: Path, data_file: str, remedy: str) -> tuple[Path, str]:
    """An image path written in ``data_file``, resolved against the file's folder: the real path to
    open (symlinks followed, so what is checked is what is read) and how a message names it.

    The refusal reads the same whether or not the target exists, so a data file cannot be used to
    probe for files outside its folder.

    Raises:
        ValueError: the path leads out of the folder (absolute elsewhere, ``..``, a symlink out).
    """
    folder = Path(data_file).parent
    try:
        real_folder = folder.resolve()
        real = (real_folder / path).resolve()
    except (OSError, RuntimeError):  # a symlink loop: where it leads cannot be told
        real = None
    if real is None or not real.is_relative_to(real_folder):
        raise ValueError(f"{str(path)!r} lies outside the folder of {data_file}; {remedy}")
    return real, repr(str(folder / path))


@FEATURES.register("image", ImageConfig)
class ImageFeature:
    kind = "image"

    def __init__(self, cfg: ImageConfig):
        self.cfg = cfg
        self.mean: list[float] = []
        self.std: list[float] = []
        self.shape: tuple[int, int, int] | None = None  # C, H, W after parsing
        self.fitted = False

    @property
    def _size(self) -> tuple[int, int] | None:
        """Resize to: the configured size; once fitted, the training size (new images of any size
        can then be predicted); else None (images must all have one size)."""
        if self.cfg.size is not None:
            return tuple(self.cfg.size)  # type: ignore[return-value]
        return tuple(self.shape[1:]) if self.fitted and self.shape else None  # type: ignore[return-value]

    def _as_chw(self, image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            image = image[:, :, None]
        channels = self.cfg.channels or (self.shape[0] if self.shape else image.shape[2])
        if image.shape[2] != channels:
            image = image.mean(axis=2, keepdims=True) if channels == 1 else np.repeat(image[:, :, :1], 3, axis=2)
        return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)

    def _resize(self, images: np.ndarray) -> np.ndarray:
        if self._size is None or tuple(images.shape[-2:]) == self._size:
            return images
        return resize_bilinear(images, self._size)

    def _read_file(self, path: Path | io.BytesIO, label: str) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with _open_image(path, label, self.cfg.max_image_pixels) as image:
                if image.mode in _FULL_SCALE:  # scaled to [0, 1] before resizing; channels follow in _as_chw
                    pixels = _deep_pixels(image, label)
                    if self._size is None or pixels.shape == self._size:
                        return pixels
                    return resize_bilinear(pixels[None, None], self._size)[0, 0]
                image = image.convert("L" if self.cfg.channels == 1 else "RGB" if self.cfg.channels == 3 else image.mode)
                if image.mode not in ("L", "RGB"):
                    image = image.convert("RGB")
                if self._size is not None:
                    image = image.resize((self._size[1], self._size[0]), Image.BILINEAR)
                return np.asarray(image, dtype=np.float32) / 255.0
        except FileNotFoundError:
            raise ValueError(f"no such image file {label}") from None
        except Image.DecompressionBombError:  # a frame or tile that Pillow checks while decoding
            raise ValueError(f"image {label} holds a frame over Pillow's decompression-bomb limit") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot decode image {label} ({exc.__class__.__name__})") from None

    @staticmethod
    def _source(raw: Any, table: Table, i: int) -> tuple[Path | io.BytesIO, str]:
        """Where row i's image is read from, and how a message names it: a file path (relative to
        the file that names it), or the bytes of an encoded image (an upload to ``forgeml serve``).

        Raises:
            ValueError: the row comes from a confined data file (``Table.confine``) and the path
                leads out of that file's folder.
        """
        if isinstance(raw, (bytes, bytearray)):
            return io.BytesIO(raw), "bytes"
        path = Path(str(raw).strip())
        origin_name = table.origins[table.origin_index[i]]
        if origin_name in table.confined:
            return _inside_folder(path, origin_name, table.confined[origin_name])
        if not path.is_absolute():
            origin = Path(origin_name)
            base = origin.parent if origin.is_file() else (table.base_dir or Path.cwd())
            path = base / path
        return path, repr(str(path))

    def parse(self, column: np.ndarray, table: Table) -> Parsed:
        if column.dtype != object:  # an array column: N x H x W (grey) or N x H x W x C
            images = column.astype(np.float32)
            images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
            # once fitted, new images take the training images' channels (as files do in _as_chw)
            channels = self.cfg.channels or (self.shape[0] if self.fitted and self.shape else None)
            if channels == 3 and images.shape[1] == 1:
                images = np.repeat(images, 3, axis=1)
            elif channels == 1 and images.shape[1] == 3:
                images = images.mean(axis=1, keepdims=True)
            images = self._resize(images)
            if self.fitted and self.shape and tuple(images.shape[1:]) != tuple(self.shape):
                raise DataError(
                    f"column {self.cfg.name!r}: images of {images.shape[1]} channels, {images.shape[2]}x{images.shape[3]}; "
                    f"this model takes {self.shape[0]} channels, {self.shape[1]}x{self.shape[2]}"
                )
            self.shape = self.shape or tuple(images.shape[1:])  # type: ignore[assignment]
            return Parsed(images)
        loaded: list[np.ndarray | None] = []
        bad = np.zeros(len(column), dtype=bool)
        reasons: dict[int, str] = {}
        for i, raw in enumerate(column):
            try:
                source, label = self._source(raw, table, i)
                image = self._as_chw(self._read_file(source, label))
                if self.shape is None:
                    self.shape = image.shape  # type: ignore[assignment]
                elif image.shape != self.shape:
                    raise ValueError(f"image {label} is {image.shape[1]}x{image.shape[2]}, others are "
                                     f"{self.shape[1]}x{self.shape[2]}; set `size` to resize")
                loaded.append(image)
            except ValueError as exc:
                bad[i], reasons[i] = True, str(exc)
                loaded.append(None)
        shape = self.shape or (1, 1, 1)
        images = np.stack([im if im is not None else np.zeros(shape, np.float32) for im in loaded]) if loaded else np.zeros((0, *shape), np.float32)
        return Parsed(images, bad, reasons)

    def fit(self, values: np.ndarray) -> None:
        self.shape = tuple(values.shape[1:])  # type: ignore[assignment]
        self.fitted = True
        if self.cfg.normalize == "standard":
            self.mean = [float(m) for m in values.mean(axis=(0, 2, 3))]
            self.std = [float(s) if s > 0 else 1.0 for s in values.std(axis=(0, 2, 3))]
        else:
            self.mean, self.std = [0.0] * values.shape[1], [1.0] * values.shape[1]

    def transform(self, values: np.ndarray) -> np.ndarray:
        mean = np.array(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.array(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return ((values - mean) / std).astype(np.float32)

    def spec(self) -> InputSpec:
        return InputSpec("image", tuple(self.shape or ()))

    def state(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "shape": list(self.shape or ())}

    def load_state(self, state: dict[str, Any]) -> None:
        self.mean, self.std = list(state["mean"]), list(state["std"])
        self.shape = tuple(state["shape"])  # type: ignore[assignment]
        self.fitted = True


# --------------------------------------------------------------------------------------------------
# text


class TextConfig(Section):
    """A column of text, split into tokens by a tokenizer trained on the training split (or a pretrained model's own)."""

    type: Literal["text"] = Field(description="A text column.")
    name: str = Field(description="Column name.")
    tokenizer: Literal["word", "bpe", "pretrained"] = Field(
        "word",
        description="word: one token per word or punctuation mark; bpe: byte-pair-encoded subwords (fewer unknown words); "
        "pretrained: the tokenizer of the `pretrained` model, unchanged (for model type hf).",
    )
    pretrained: Optional[str] = Field(
        None,
        description="tokenizer pretrained: a local model directory or Hugging Face hub id; null: all-MiniLM-L6-v2 (bundled, offline).",
    )
    vocab_size: int = Field(20000, ge=10, description="word / bpe: most tokens kept, the two special tokens [PAD] and [UNK] included.")
    min_frequency: int = Field(2, ge=1, description="word / bpe: tokens seen fewer times in training become [UNK].")
    lowercase: bool = Field(True, description="word / bpe: lowercase and strip accents before tokenizing.")
    max_length: Optional[int] = Field(
        None, ge=1, description="Tokens kept per text (longer texts are truncated, shorter padded); null: enough for 99% of training texts."
    )
    scrub_pii: bool = Field(
        False,
        description="Replace e-mail addresses, URLs, IP addresses, IBANs, payment cards, phone numbers and long ID-like digit runs "
        "with [EMAIL], [URL], [IP], [IBAN], [CARD], [PHONE], [ID] before tokenizing, in training and prediction alike.",
    )


PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1: models read ids == 0 as padding, augmentation writes 1 for a dropped token


@FEATURES.register("text", TextConfig)
class TextFeature:
    """Token ids padded to a fixed length, from a Hugging Face ``tokenizers`` tokenizer.

    The fitted tokenizer (vocabulary, normalisation, truncation and padding) is saved whole as the
    run's ``tokenizer.json``, which any ``tokenizers`` user can load with ``Tokenizer.from_file``.
    """

    kind = "tokens"
    FILE = "tokenizer.json"

    def __init__(self, cfg: TextConfig):
        self.cfg = cfg
        self.tokenizer: Any = None
        self.pii_found: dict[str, int] = {}  # scrub_pii: what the last parse replaced, per kind

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.padding["length"])

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    @property
    def pad_id(self) -> int:
        """The id padding is written with: 0 ([PAD]) for word / bpe, the model's own for a pretrained tokenizer."""
        return int(self.tokenizer.padding["pad_id"])

    def parse(self, column: np.ndarray, table: Table) -> Parsed:
        values = np.empty(len(column), dtype=object)
        bad = np.zeros(len(column), dtype=bool)
        reasons: dict[int, str] = {}
        for i, raw in enumerate(column):
            text = "" if raw is None or (isinstance(raw, float) and math.isnan(raw)) else str(raw)
            if not text.strip():
                bad[i], reasons[i] = True, "missing text"
            values[i] = text
        if self.cfg.scrub_pii:
            from forgeml.data.pii import add_counts, scrub

            self.pii_found = {}
            for i, text in enumerate(values):
                values[i], found = scrub(text)
                add_counts(self.pii_found, found)
        return Parsed(values, bad, reasons)

    def _new_tokenizer(self) -> Any:
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        model = models.WordLevel(unk_token=UNK) if self.cfg.tokenizer == "word" else models.BPE(unk_token=UNK)
        tokenizer = Tokenizer(model)
        if self.cfg.lowercase:
            tokenizer.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
        return tokenizer

    def _pretrained_tokenizer(self) -> tuple[Any, str, int, int | None]:
        from forgeml.pretrained import load_tokenizer, resolve

        loaded = load_tokenizer(resolve(self.cfg.pretrained))
        if self.cfg.max_length is not None and loaded.max_length is not None and self.cfg.max_length > loaded.max_length:
            raise ConfigError(
                f"text feature {self.cfg.name!r}: max_length {self.cfg.max_length} is longer than the pretrained model takes ({loaded.max_length})"
            )
        return loaded.tokenizer, loaded.pad_token, loaded.pad_id, loaded.max_length

    def fit(self, values: np.ndarray) -> None:
        texts = [str(v) for v in values]
        if self.cfg.tokenizer == "pretrained":
            # the model's vocabulary is fixed: nothing is trained, only the length is chosen from the data
            tokenizer, pad_token, pad_id, model_limit = self._pretrained_tokenizer()
        else:
            tokenizer, pad_token, pad_id, model_limit = self._trained_tokenizer(texts), PAD, 0, None
        max_length = self.cfg.max_length
        if max_length is None:
            lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)] or [1]
            max_length = max(1, int(math.ceil(np.percentile(lengths, 99) / 8) * 8))  # a multiple of 8 suits kernels
            if model_limit is not None:
                max_length = min(max_length, model_limit)
        # truncation keeps the special tokens the tokenizer adds ([CLS] ... [SEP] stays whole)
        tokenizer.enable_truncation(max_length)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, length=max_length)
        self.tokenizer = tokenizer

    def _trained_tokenizer(self, texts: list[str]) -> Any:
        from tokenizers import trainers

        tokenizer = self._new_tokenizer()
        trainer_class = trainers.WordLevelTrainer if self.cfg.tokenizer == "word" else trainers.BpeTrainer
        trainer = trainer_class(
            vocab_size=self.cfg.vocab_size, min_frequency=self.cfg.min_frequency, special_tokens=[PAD, UNK], show_progress=False
        )
        tokenizer.train_from_iterator(texts, trainer)
        return tokenizer

    def transform(self, values: np.ndarray) -> np.ndarray:
        encodings = self.tokenizer.encode_batch([str(v) for v in values])
        if not encodings:
            return np.zeros((0, self.max_length), dtype=np.int64)
        return np.array([e.ids for e in encodings], dtype=np.int64)

    def lengths(self, values: np.ndarray) -> np.ndarray:
        """Tokens per text before truncation (for data inspect)."""
        length, padding = self.max_length, dict(self.tokenizer.padding)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        try:
            return np.array([len(e.ids) for e in self.tokenizer.encode_batch([str(v) for v in values])], dtype=np.int64)
        finally:
            self.tokenizer.enable_truncation(length)
            self.tokenizer.enable_padding(pad_id=padding["pad_id"], pad_token=padding["pad_token"], length=length)

    def spec(self) -> InputSpec:
        unk_token = getattr(self.tokenizer.model, "unk_token", None)  # WordLevel, WordPiece and BPE models name theirs
        unk_id = self.tokenizer.token_to_id(unk_token) if unk_token else None
        special = sorted(
            int(index) for index, token in self.tokenizer.get_added_tokens_decoder().items() if token.special and index not in (self.pad_id, unk_id)
        )
        return InputSpec("tokens", (self.max_length,), vocab_size=self.vocab_size, pad_id=self.pad_id, unk_id=unk_id, special_ids=tuple(special))

    def state(self) -> dict[str, Any]:
        state = {"tokenizer": self.FILE, "vocab_size": self.vocab_size, "max_length": self.max_length}
        if self.cfg.scrub_pii:  # what was replaced in the rows the run read, all splits together
            state["pii_scrubbed"] = dict(sorted(self.pii_found.items()))
        return state

    def files(self) -> dict[str, bytes]:
        return {self.FILE: self.tokenizer.to_str(pretty=True).encode()}

    def load_state(self, state: dict[str, Any], read: Callable[[str], bytes] | None = None) -> None:
        from tokenizers import Tokenizer

        if read is None:
            raise DataError(f"the text feature {self.cfg.name!r} needs its {state['tokenizer']} to be loaded")
        self.tokenizer = Tokenizer.from_str(read(state["tokenizer"]).decode())


# --------------------------------------------------------------------------------------------------
# numeric sequence


class SequenceConfig(Section):
    """Sliding windows over a numeric column whose rows are in time order (forecasting)."""

    type: Literal["sequence"] = Field(description="Windows over a numeric series.")
    name: str = Field(description="Column name.")
    length: int = Field(ge=1, description="Time steps per window: row i sees the values of rows i-length+1 .. i.")
    normalize: Literal["standard", "minmax", "none"] = Field(
        "standard", description="standard: (x - mean) / std; minmax: to [0, 1]; none: as is. Fitted on the training split."
    )


@FEATURES.register("sequence", SequenceConfig)
class SequenceFeature(NumberFeature):
    """Row i becomes the window of the last ``length`` values up to and including row i; the first
    rows of each file, which have less history, are left out. Pair it with a ``number`` target with
    ``lead: 1`` on the same column to forecast the next value."""

    kind = "sequence"

    def parse(self, column: np.ndarray, table: Table) -> Parsed:
        parsed = parse_numbers(column)
        n, length = len(column), self.cfg.length
        usable = same_run(table, -(length - 1)) if length > 1 else np.ones(n, dtype=bool)
        # window row i = values[i - length + 1 .. i]; rows without a full window are filled with 0 and dropped
        index = np.arange(n)[:, None] + np.arange(-length + 1, 1)[None, :]
        index = np.clip(index, 0, max(n - 1, 0))
        windows = parsed.values[index] if n else np.zeros((0, length))
        bad_in_window = parsed.bad[index] if n else np.zeros((0, length), dtype=bool)
        bad = usable & bad_in_window.any(axis=1)
        reasons = {}
        for i in np.flatnonzero(bad):
            first = int(index[i][bad_in_window[i]][0])
            reasons[int(i)] = (
                parsed.reasons.get(int(i), "bad value") if first == i
                else f"its window of {length} rows includes a bad value at {table.where(first)} ({parsed.reasons.get(first, 'bad value')})"
            )
        return Parsed(np.where(usable[:, None], windows, 0.0), bad, reasons, drop=~usable)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.shift) / self.scale).astype(np.float32)[:, :, None]


# --------------------------------------------------------------------------------------------------
# the bundle


def build_feature(cfg: Section) -> Any:
    return FEATURES.build(cfg)


class Features:
    """The input features and the target of a model: fit on train, transform any split, save as JSON.

    Args:
        inputs: feature configs of the model inputs.
        target: feature config of the column to predict (category: classification; number: regression).
    """

    VERSION = 1

    def __init__(self, inputs: list[Section], target: Section):
        if not inputs:
            raise DataError("no input features: list them under data.features")
        self.inputs = [build_feature(cfg) for cfg in inputs]
        names = [f.cfg.name for f in self.inputs]
        if len(set(names)) != len(names):
            raise DataError(f"data.features names a column twice: {names}")
        if target.type not in ("category", "number"):
            raise DataError(f"data.target: a {target.type!r} column cannot be predicted; use category or number")
        lead = getattr(target, "lead", 0)
        windows = [f for f in self.inputs if f.kind == "sequence"]
        if target.name in names and not (lead > 0 and any(f.cfg.name == target.name for f in windows)):
            raise DataError(
                f"data.target: column {target.name!r} is also an input feature"
                + ("; to forecast it from its own past, give the target lead: 1" if windows else "")
            )
        if any(getattr(f.cfg, "lead", 0) for f in self.inputs):
            raise DataError("data.features: `lead` is for the target (the value to forecast), not for an input")
        self.target = build_feature(target)
        self.target.as_target = True
        # where parsed tables keep the target: its column name, unless an input parses that column too
        self.target_key = FORECAST if target.name in names else target.name
        kinds = {f.kind for f in self.inputs}
        for kind, what in (("image", "an image"), ("tokens", "a text")):
            if kind in kinds and len(self.inputs) > 1:
                raise DataError(f"{what} feature cannot be combined with other input features yet; use one {what[2:].strip()} column")
        if windows and len(windows) != len(self.inputs):
            raise DataError("sequence features cannot be combined with other kinds of input features; use sequence features only")
        if len({f.cfg.length for f in windows}) > 1:
            raise DataError(f"sequence features need one window length; got {sorted({f.cfg.length for f in windows})}")

    # -- properties of the fitted features

    @property
    def task(self) -> str:
        return "classification" if self.target.cfg.type == "category" else "regression"

    @property
    def label_names(self) -> list[str]:
        return list(self.target.vocabulary) if self.task == "classification" else []

    @property
    def num_outputs(self) -> int:
        return len(self.label_names) if self.task == "classification" else 1

    @property
    def input_spec(self) -> InputSpec:
        """What the model is given (kind and per-example shape), once fitted."""
        first = self.inputs[0]
        if first.kind == "sequence":
            return InputSpec("sequence", (first.cfg.length, len(self.inputs)))
        if first.kind != "vector":
            return first.spec()
        return InputSpec("vector", (sum(f.width for f in self.inputs),))

    @property
    def columns(self) -> list[str]:
        return [f.cfg.name for f in self.inputs]

    @property
    def image_normalisation(self) -> tuple[list[float], list[float]] | None:
        """An image input's per-channel (mean, std): the model reads (pixels - mean) / std; else None."""
        first = self.inputs[0]
        return (list(first.mean), list(first.std)) if first.kind == "image" else None

    # -- parse / fit / transform

    def parse(self, table: Table, on_bad_row: str = "error", with_target: bool = True, hint: str = "set data.on_bad_row: skip to drop such rows") -> Table:
        """Parse raw columns; bad rows raise a DataError naming file, line and column, or are dropped.

        ``hint`` ends the error message (what the user can do about a bad row).

        Returns a table of parsed values; ``table.skipped`` counts dropped rows per reason column.
        """
        features = self.inputs + ([self.target] if with_target else [])
        missing = [f.cfg.name for f in features if f.cfg.name not in table.columns]
        if missing:
            raise DataError(
                f"{', '.join(table.origins[:3])}: no column named {', '.join(map(repr, missing))} "
                f"(columns: {', '.join(table.columns)})"
            )
        results = [feature.parse(table.columns[feature.cfg.name], table) for feature in features]
        # rows without a full window or a forecast target are left out whatever on_bad_row says
        drop = np.logical_or.reduce([r.drop for r in results]) if results else np.zeros(len(table), dtype=bool)
        bad = np.zeros(len(table), dtype=bool)
        skipped: dict[str, int] = {}
        for feature, result in zip(features, results):
            failed = result.bad & ~drop
            if failed.any():
                first = int(np.flatnonzero(failed)[0])
                if on_bad_row == "error":
                    raise DataError(
                        f"{table.where(first)}: column {feature.cfg.name!r}: {result.reasons.get(first, 'bad value')}"
                        + (f" ({hint})" if hint else "")
                    )
                skipped[feature.cfg.name] = skipped.get(feature.cfg.name, 0) + int((failed & ~bad).sum())
                bad |= failed
        # a target and an input on one column (forecasting) parse to different values: the target gets its own key
        parsed = {(self.target_key if f is self.target else f.cfg.name): r.values for f, r in zip(features, results)}
        out = Table(parsed, table.origins, table.origin_index, table.line, table.split, table.base_dir)
        if (bad | drop).any():
            out = out.take(~(bad | drop))
        out.skipped = skipped
        return out

    def fit(self, train: Table) -> None:
        """Fit normalisation statistics and vocabularies on the (parsed) training split only."""
        for feature in self.inputs:
            feature.fit(train.columns[feature.cfg.name])
        self.target.fit(train.columns[self.target_key])

    def encode_inputs(self, table: Table) -> np.ndarray:
        """Model inputs of parsed rows as a numpy array (see ``forgeml.inputs``): N x D floats for numbers
        and categories, N x C x H x W for an image, N x L int64 token ids for a text, N x T x F windows
        for sequences. The edge runtime feeds this to ONNX Runtime; training wraps it in a tensor."""
        parts = [f.transform(table.columns[f.cfg.name]) for f in self.inputs]
        if len(parts) == 1:
            array = parts[0]
        else:  # vectors side by side; sequences as the features of each time step
            array = np.concatenate(parts, axis=2 if self.inputs[0].kind == "sequence" else 1)
        dtype = np.int64 if self.inputs[0].kind == "tokens" else np.float32
        return np.ascontiguousarray(array, dtype=dtype)

    def encode_target(self, table: Table) -> np.ndarray:
        """Class indices (int64) or normalised numbers (float32) of parsed rows."""
        values = table.columns[self.target_key]
        if self.task == "classification":
            return self.target.indices(values, table)
        return self.target.transform(values).reshape(-1)

    def transform_inputs(self, table: Table) -> Any:
        """``encode_inputs`` as a torch tensor (torch is imported here, not by this module: the edge
        runtime uses these features without it)."""
        import torch

        return torch.from_numpy(self.encode_inputs(table))

    def transform_target(self, table: Table) -> Any:
        """``encode_target`` as a torch tensor."""
        import torch

        return torch.from_numpy(self.encode_target(table))

    def persistence(self, table: Table) -> tuple[np.ndarray, np.ndarray] | None:
        """For a forecast of a series from its own windows: the last value of each window (the
        persistence forecast) and the true target, both in the data's units; otherwise None."""
        if self.target_key != FORECAST or not getattr(self.target.cfg, "lead", 0):
            return None
        window = table.columns[self.target.cfg.name]
        return window[:, -1].astype(np.float64), table.columns[FORECAST].astype(np.float64)

    def decode_regression(self, outputs: np.ndarray) -> np.ndarray:
        """Model outputs back in the target column's units."""
        return self.target.inverse(outputs.reshape(-1))

    # -- JSON state

    def to_state(self) -> dict[str, Any]:
        def entry(feature: Any) -> dict[str, Any]:
            return {"config": feature.cfg.model_dump(mode="json"), "state": feature.state()}

        return {
            "version": self.VERSION,
            "task": self.task,
            "inputs": [entry(f) for f in self.inputs],
            "target": entry(self.target),
            "input": self.input_spec.to_dict(),
            "label_names": self.label_names,
        }

    def files(self) -> dict[str, bytes]:
        """Fitted state kept in files of its own beside features.json (a text feature's tokenizer.json)."""
        out: dict[str, bytes] = {}
        for feature in self.inputs:
            out.update(feature.files() if hasattr(feature, "files") else {})
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any], read: Callable[[str], bytes] | None = None) -> "Features":
        """Rebuild fitted features from ``to_state()`` output (features.json); ``read(name)`` gives the
        bytes of a file from ``files()`` (e.g. tokenizer.json in the run directory)."""
        if state.get("version") != cls.VERSION:
            raise DataError(f"features.json has version {state.get('version')!r}; this forgeml reads version {cls.VERSION}")
        entries = [*state["inputs"], state["target"]]
        configs = [FEATURES.get(e["config"]["type"]).config.model_validate(e["config"]) for e in entries]
        features = cls(configs[:-1], configs[-1])
        for feature, entry in zip([*features.inputs, features.target], entries):
            if hasattr(feature, "files"):
                feature.load_state(entry["state"], read)
            else:
                feature.load_state(entry["state"])
        return features
