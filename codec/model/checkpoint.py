"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` (no pickled
code runs), and the 8-byte model fingerprint that bitstreams carry."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import typing as tp
import warnings
from pathlib import Path

import torch
from torch import nn

from codec.errors import UserError
from codec.files import atomic_path
from codec.model.codec import Codec, CodecConfig
from codec.model.config import REFERENCE_CHECKPOINT as REFERENCE_CHECKPOINT  # re-exported: tests and docs name it here

# The reference model shipped with the package (docs/reference_model.md): what `codec encode`
# uses before any training, and what the CPU demo fine-tunes from (train.init_from).


def unwrap(model: nn.Module) -> Codec:
    """The :class:`Codec` inside a DDP (or other ``.module``) wrapper."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "codec", inner)  # a ServingCodec
    if not isinstance(inner, Codec):
        raise TypeError(f"expected a Codec, got {type(inner).__name__}")
    return inner


def atomic_torch_save(obj: tp.Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, synced, then renamed over it."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(path: str | Path, model: nn.Module, extra: tp.Mapping[str, tp.Any] | None = None) -> None:
    """Write ``{"model_config", "model", **extra}`` atomically.

    ``extra`` must hold only what ``torch.load(weights_only=True)`` reads back: tensors,
    plain dicts/lists/tuples, numbers, strings (e.g. ``params``, ``optimizer``, ``step``,
    ``rng``).
    """
    codec = unwrap(model)
    state: dict[str, tp.Any] = {"model_config": codec.config.to_dict(), "model": codec.state_dict()}
    state.update(extra or {})
    atomic_torch_save(state, path)


def save_weights_only(path: str | Path, model: nn.Module, extra: tp.Mapping[str, tp.Any] | None = None) -> None:
    """A checkpoint to ship: the model's config and its tensors in float16 (half the size; the
    inference model and a fine-tune read them back as float32, so what ships is what is evaluated),
    plus ``extra`` plain data (params, target loudness, provenance); no optimizer or RNG state."""
    codec = unwrap(model)
    state = {k: v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()
             for k, v in codec.state_dict().items()}  # fmt: skip
    atomic_torch_save({"model_config": codec.config.to_dict(), "model": state, **(extra or {})}, path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, tp.Any]:
    """The checkpoint dict, read with ``weights_only=True``; ``UserError`` when unreadable.

    A file that holds pickled code or objects (anything but tensors and plain data) is
    refused as not a codec checkpoint. torch's own message for it advises loading with
    ``weights_only=False``, which would run that code: it is not passed on.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p} (train a model first: codec train, or dvc repro train)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler refused something
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (such as {found[1]})" if found else ""
        raise UserError(
            f"{p} is not a readable codec checkpoint: it holds pickled code or objects beyond tensors and "
            f"plain data{what}, which this tool refuses to load (unpickling them could run code); use a "
            "checkpoint written by codec train, or retrain"
        ) from None
    except Exception as e:  # a truncated file, or not a checkpoint at all
        reason = "the file is empty" if p.stat().st_size == 0 else _first_line(e)
        raise UserError(f"{p} is not a readable codec checkpoint ({reason}); retrain or restore it") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise UserError(f"{p} is not a codec checkpoint (no model_config/model entries)")
    return ckpt


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    text = text.splitlines()[0] if text else ""
    if "weights_only" in text:  # never relay torch's advice to load untrusted pickles
        text = "not a weights-only torch file"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_codec(path: str | Path, map_location: str | torch.device = "cpu") -> Codec:
    """The :class:`Codec` saved at ``path``, in eval mode."""
    ckpt = read_checkpoint(path, map_location)
    model = Codec(CodecConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval()


def model_fingerprint(model: nn.Module) -> bytes:
    """8 bytes identifying a model: SHA-256 of its config and weights (in key order).

    The bitstream carries it so that a decoder refuses codes from another model.
    """
    codec = unwrap(model)
    source = getattr(codec, "source_fingerprint", None)
    if isinstance(source, bytes):  # a copy made for serving: identified as the model it came from
        return source
    return state_fingerprint(codec.config.to_dict(), codec.state_dict())


def state_fingerprint(config: tp.Mapping[str, tp.Any], state: tp.Mapping[str, torch.Tensor]) -> bytes:
    """:func:`model_fingerprint` of the model with ``config`` (its ``to_dict()``) and ``state``
    (its ``state_dict()``, as a checkpoint stores it), without building it."""
    h = hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode())
    for key, tensor in sorted(state.items()):
        h.update(key.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.digest()[:8]
