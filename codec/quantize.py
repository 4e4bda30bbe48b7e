"""Residual vector quantization with factorized, l2-normalized codes and quantizer dropout.

Residual VQ (Zeghidour et al. 2021, SoundStream): quantizer ``i`` codes what quantizers
``0..i-1`` left over, so the first ``n`` codebooks alone are a coarser code and one
model serves several bitrates. Quantizer dropout trains exactly that: for a share of
the batch only the first ``n`` quantizers count.

Factorized, l2-normalized codes (Yu et al. 2022, "Vector-quantized image modeling with
improved VQGAN"; DAC, Kumar et al. 2023): each quantizer projects the latent down to a
few dimensions (``codebook_dim``), looks up the nearest code by cosine similarity, and
projects back up. Low-dimensional unit-norm codes are what keep most of a 1024-entry
codebook in use without k-means initialization or dead-code restarts; the usage is
measured (:func:`codebook_usage`) and logged, so a collapse would show.

Shapes: ``B`` batch, ``D`` latent channels, ``F`` frames, ``Q`` quantizers.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codec.layers import wn_conv1d


@dataclasses.dataclass
class QuantizedResult:
    """What :class:`ResidualVQ` returns.

    - ``z``: quantized latent ``[B, D, F]`` (straight-through gradient to the encoder)
    - ``codes``: ``[B, Q, F]`` long, one code index per quantizer and frame
    - ``commitment_loss`` / ``codebook_loss``: scalars, averaged over the batch
    """

    z: Tensor
    codes: Tensor
    commitment_loss: Tensor
    codebook_loss: Tensor


class VectorQuantizer(nn.Module):
    """One factorized, l2-normalized vector quantizer.

    ``[B, D, F]`` latent → (quantized ``[B, D, F]``, codes ``[B, F]``,
    per-item commitment and codebook losses ``[B]``).
    """

    def __init__(self, latent_dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.in_proj = wn_conv1d(latent_dim, codebook_dim, kernel_size=1)
        self.out_proj = wn_conv1d(codebook_dim, latent_dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def _nearest(self, z_e: Tensor) -> Tensor:
        """Code indices ``[B, F]`` of the codes nearest (by cosine) to ``z_e`` ``[B, d, F]``."""
        b, d, f = z_e.shape
        flat = F.normalize(z_e.transpose(1, 2).reshape(b * f, d), dim=1)
        book = F.normalize(self.codebook.weight, dim=1)
        # For unit vectors the nearest code is the one of largest dot product.
        return (flat @ book.t()).argmax(dim=1).view(b, f)

    def lookup(self, codes: Tensor) -> Tensor:
        """Codes ``[B, F]`` → the code vectors, still projected down: ``[B, d, F]``."""
        return self.codebook(codes).transpose(1, 2)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[B, F]`` → the quantized latent ``[B, D, F]``."""
        return self.out_proj(self.lookup(codes))

    @torch.no_grad()
    def init_codebook(self, z: Tensor, generator: torch.Generator | None = None) -> None:
        """Set the codes to projected latent vectors drawn from ``z`` ``[B, D, F]``.

        Random-init codes sit far from where the encoder's outputs are, so early in
        training every latent picks the same few codes and the rest never learn (one
        code in use was measured with random init). Codes drawn from the data start
        all in use; this is k-means' usual seeding without the iterations.
        """
        z_e = self.in_proj(z).transpose(1, 2).reshape(-1, self.codebook.weight.shape[1])
        n = self.codebook.weight.shape[0]
        pick = (
            torch.randint(z_e.shape[0], (n,), generator=generator)
            if z_e.shape[0] < n
            else torch.randperm(z_e.shape[0], generator=generator)[:n]
        )
        codes = z_e[pick.to(z_e.device)]
        # Duplicates (fewer vectors than codes) are spread apart a little.
        noise = torch.randn(codes.shape, generator=generator).to(codes.device)
        self.codebook.weight.copy_(codes + 0.01 * codes.std() * noise)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        z_e = self.in_proj(z)
        codes = self._nearest(z_e.detach())
        z_q = self.lookup(codes)
        commitment = F.mse_loss(z_e, z_q.detach(), reduction="none").mean(dim=(1, 2))
        codebook = F.mse_loss(z_q, z_e.detach(), reduction="none").mean(dim=(1, 2))
        z_q = z_e + (z_q - z_e).detach()  # straight-through estimator
        return self.out_proj(z_q), codes, commitment, codebook


class ResidualVQ(nn.Module):
    """``n_codebooks`` quantizers applied to successive residuals.

    ``forward(z [B, D, F], n_quantizers)`` where ``n_quantizers`` is ``None`` (all, or
    quantizer dropout in training), an ``int`` (the same for every item), or a long
    tensor ``[B]`` (one setting per item, as the trainer draws it for the whole global
    batch so that a DDP run sees the same draws as a single process).
    """

    def __init__(
        self,
        latent_dim: int,
        n_codebooks: int,
        codebook_size: int,
        codebook_dim: int,
        quantizer_dropout: float = 0.0,
        dropout_choices: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.n_codebooks = n_codebooks
        self.quantizer_dropout = quantizer_dropout
        self.dropout_choices = dropout_choices or tuple(range(1, n_codebooks + 1))
        self.quantizers = nn.ModuleList(
            [VectorQuantizer(latent_dim, codebook_size, codebook_dim) for _ in range(n_codebooks)]
        )

    def sample_n_quantizers(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Quantizer dropout: ``[B]`` long; a ``quantizer_dropout`` share of items gets a
        setting drawn from ``dropout_choices`` (the served bitrates), the rest get all."""
        n = torch.full((batch,), self.n_codebooks, dtype=torch.long)
        if self.quantizer_dropout > 0:
            choices = torch.tensor(self.dropout_choices, dtype=torch.long)
            pick = choices[torch.randint(len(choices), (batch,), generator=generator)]
            drop = torch.rand(batch, generator=generator) < self.quantizer_dropout
            n = torch.where(drop, pick, n)
        return n

    def forward(self, z: Tensor, n_quantizers: int | Tensor | None = None) -> QuantizedResult:
        b = z.shape[0]
        if n_quantizers is None:
            n_q = self.sample_n_quantizers(b) if self.training else torch.full((b,), self.n_codebooks)
        elif isinstance(n_quantizers, int):
            if not 1 <= n_quantizers <= self.n_codebooks:
                raise ValueError(f"n_quantizers={n_quantizers} is outside 1..{self.n_codebooks}")
            n_q = torch.full((b,), n_quantizers)
        else:
            n_q = n_quantizers
        n_q = n_q.to(z.device)
        # In training every quantizer runs on every item and a mask drops its share, so
        # every parameter is in the graph (DDP needs no find_unused_parameters). At
        # inference, quantizers beyond the largest setting are skipped.
        n_run = self.n_codebooks if self.training else int(n_q.max())
        # Distances and losses in fp32 even under bf16 autocast: argmax over 1024 close
        # cosines is not stable in bf16.
        with torch.autocast(device_type=z.device.type, enabled=False):
            residual = z.float()
            z_hat = torch.zeros_like(residual)
            commitment = residual.new_zeros(())
            codebook = residual.new_zeros(())
            codes = []
            for i, vq in enumerate(self.quantizers[:n_run]):
                z_i, codes_i, commit_i, book_i = vq(residual)
                mask = (n_q > i).to(residual.dtype)
                z_hat = z_hat + z_i * mask[:, None, None]
                residual = residual - z_i
                commitment = commitment + (commit_i * mask).mean()
                codebook = codebook + (book_i * mask).mean()
                codes.append(codes_i)
        return QuantizedResult(
            z=z_hat, codes=torch.stack(codes, dim=1), commitment_loss=commitment, codebook_loss=codebook
        )

    @torch.no_grad()
    def init_codebooks(self, z: Tensor, generator: torch.Generator | None = None) -> None:
        """Data-driven codebook init (see :meth:`VectorQuantizer.init_codebook`): each
        quantizer from the residual the ones before it leave of ``z`` ``[B, D, F]``."""
        residual = z.float()
        for vq in self.quantizers:
            assert isinstance(vq, VectorQuantizer)
            vq.init_codebook(residual, generator)
            residual = residual - vq(residual)[0]

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[B, Q, F]`` (``Q`` ≤ ``n_codebooks``) → quantized latent ``[B, D, F]``."""
        if codes.shape[1] > self.n_codebooks:
            raise ValueError(f"codes have {codes.shape[1]} quantizers; this model has {self.n_codebooks}")
        z: Tensor | None = None
        for i, vq in enumerate(self.quantizers[: codes.shape[1]]):
            assert isinstance(vq, VectorQuantizer)
            z_i = vq.decode(codes[:, i])
            z = z_i if z is None else z + z_i
        if z is None:
            raise ValueError("codes have no quantizers (shape [B, 0, F])")
        return z


def codebook_usage(codes: Tensor, codebook_size: int) -> tuple[Tensor, Tensor]:
    """How much of each codebook ``codes`` ``[B, Q, F]`` uses.

    Returns (fraction of codes used ``[Q]``, perplexity ``[Q]``: ``exp`` of the entropy
    of the code histogram, ``codebook_size`` when all codes are equally used).
    """
    q = codes.shape[1]
    flat = codes.transpose(0, 1).reshape(q, -1)
    counts = torch.zeros(q, codebook_size, device=codes.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))
    used = (counts > 0).float().mean(dim=1)
    p = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1)
    return used, entropy.exp()
