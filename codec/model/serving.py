"""The copy of a codec that serves: weight norm folded, channels-last 2-D convolutions (fast on
a CPU), the same codes, audio and fingerprint as the trained model. ``codec encode``/``decode``,
evaluation and the MLflow model (:mod:`codec.inference.served`, which runs the whole inference
path) build it from a checkpoint with :func:`inference_codec`.

Audio ``[B, 1, T]`` float32 at the model's sample rate."""

from __future__ import annotations

import typing as tp

import torch
from torch import Tensor, nn

from codec.model.checkpoint import model_fingerprint, state_fingerprint, unwrap
from codec.model.codec import Codec, CodecConfig
from codec.model.layers import ChannelsLastConv, plain_convolutions


def fold_weight_norm(model: nn.Module) -> Codec:
    """A copy of the codec with weight normalization folded into plain weights.

    Same outputs; folded weights skip the norm computation at inference. Its ``state_dict``
    keys differ from a training checkpoint's (``weight`` instead of
    ``parametrizations.weight.original0/1``).
    """
    from torch.nn.utils import parametrize

    codec = unwrap(model)
    if codec.channels_last_2d:
        raise ValueError("fold_weight_norm needs the trained model, not a for_inference() copy")
    copy = Codec(codec.config)
    copy.load_state_dict(codec.state_dict())
    for module in copy.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    # Bitstreams name the model they were coded with: a folded copy answers to its source's name.
    copy.source_fingerprint = model_fingerprint(codec)
    return copy.eval()


def for_inference(model: nn.Module) -> Codec:
    """A copy of the codec for fast CPU inference: weight normalization folded, and every
    convolution run as a channels-last ``1 × k`` 2-D one (:class:`codec.model.layers.ChannelsLastConv`).

    Same codes and audio as ``model`` up to float rounding (tested), 1.5-2x faster on a
    CPU, and the same :func:`model_fingerprint`. Not for training, and its
    ``state_dict`` is not a checkpoint's: save the original.
    """
    return _channels_last(fold_weight_norm(model))


WN_G, WN_V = ".parametrizations.weight.original0", ".parametrizations.weight.original1"


def fold_state(state: tp.Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A weight-normalized model's ``state_dict`` with each (g, v) pair folded into the weight it
    makes, ``torch._weight_norm(v, g, 0)``: the parametrization's own computation, so the result
    is what :func:`fold_weight_norm` leaves, bit for bit (tested). Floating tensors as float32."""
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        t = tensor.float() if tensor.is_floating_point() else tensor
        if key.endswith(WN_G):
            base = key.removesuffix(WN_G)
            v = state[base + WN_V].float()
            out[base + ".weight"] = torch._weight_norm(v, t, 0)
        elif not key.endswith(WN_V):
            out[key] = t
    return out


def inference_codec(config: CodecConfig, state: tp.Mapping[str, Tensor], *, channels_last: bool = True) -> Codec:
    """:func:`for_inference` of the model with ``config`` and checkpoint weights ``state``, built
    without the trainable model: on the ``meta`` device with plain convolutions (nothing is
    allocated from the config, so an untrusted checkpoint costs no more memory than its own
    tensors), then given the folded weights (``load_state_dict(strict=True, assign=True)``, which
    refuses a missing, extra or misshapen tensor). Same outputs and fingerprint as
    ``for_inference(model)``; about a second less start-up than building the weight-normalized
    model on ``meta`` (see :func:`codec.model.layers.plain_convolutions`). ``channels_last=False``
    keeps plain 1-D convolutions (what the ONNX export traces)."""
    with torch.device("meta"), plain_convolutions():
        model = Codec(config)
    model.load_state_dict(fold_state(state), strict=True, assign=True)
    model.source_fingerprint = state_fingerprint(config.to_dict(), state)
    return _channels_last(model.eval()) if channels_last else model.eval()


def _channels_last(fast: Codec) -> Codec:
    """Every convolution of ``fast`` (weight norm folded) run as a channels-last 2-D one, in place.
    Not for the frame architecture: its layers run at 50-100 Hz, where the layout gains nothing."""
    if fast.config.architecture == "frame":
        return fast.eval()
    for parent in list(fast.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.Conv1d, nn.ConvTranspose1d)):
                setattr(parent, name, ChannelsLastConv(child))
    fast.channels_last_2d = True
    return fast.eval()
