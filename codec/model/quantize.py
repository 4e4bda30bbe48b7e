"""Residual vector quantization with quantizer dropout: Euclidean EMA codebooks (default) or
factorized, l2-normalized codes.

Residual VQ (Zeghidour et al. 2021, SoundStream): quantizer ``i`` codes what quantizers
``0..i-1`` left over, so the first ``n`` codebooks alone are a coarser code and one model
serves several bitrates; quantizer dropout trains exactly that.

- ``ema`` (:class:`EMAVectorQuantizer`, SoundStream/EnCodec): Euclidean codebooks fitted by
  k-means on the latents, updated by exponential moving averages, dead codes restarted.
- ``factorized`` (:class:`VectorQuantizer`, DAC, Kumar et al. 2023): each quantizer projects
  the latent to ``codebook_dim`` dimensions and picks the nearest unit-norm code by cosine
  similarity; codes trained by gradients.

Codebook usage (:func:`code_usage`) is logged, so a collapse shows. Shapes: ``B`` batch,
``D`` latent channels, ``F`` frames, ``Q`` quantizers.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codec.model.layers import wn_conv1d


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


class EMAVectorQuantizer(nn.Module):
    """One Euclidean vector quantizer whose codebook follows the data by exponential
    moving averages (van den Oord et al. 2017, appendix; SoundStream; EnCodec).

    Same interface as :class:`VectorQuantizer`: ``[B, D, F]`` latent → (quantized
    ``[B, D, F]``, codes ``[B, F]``, per-item commitment loss ``[B]``, a zero codebook
    loss ``[B]``: the codebook is not trained by gradients).

    Why this one for short runs: codes are k-means centroids of the latents from the
    start (:meth:`init_codebook`), each training step moves every used code to the
    running mean of the latents it codes, and a code unused for a few hundred steps
    (running count below ``dead_threshold``) is restarted on a latent of the current
    batch, so the codebook stays in use. The factorized, gradient-trained codes
    collapsed to a handful in use in a 5-minute CPU run (measured); these do not.
    Under DDP the statistics are summed over ranks and restarts taken from rank 0,
    so every rank keeps the same codebook.
    """

    embed: Tensor
    embed_avg: Tensor
    cluster_size: Tensor
    restarts: Tensor

    def __init__(self, dim: int, codebook_size: int, decay: float = 0.99, dead_threshold: float = 0.05) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.decay = decay
        self.dead_threshold = dead_threshold
        self.register_buffer("embed", torch.zeros(codebook_size, dim))
        self.register_buffer("embed_avg", torch.zeros(codebook_size, dim))
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))

    def _nearest(self, flat: Tensor) -> Tensor:
        book = self.embed
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
        return dist.argmin(dim=1)

    def lookup(self, codes: Tensor) -> Tensor:
        """Codes ``[B, F]`` → code vectors ``[B, D, F]``."""
        return nn.functional.embedding(codes, self.embed).transpose(1, 2)

    def decode(self, codes: Tensor) -> Tensor:
        return self.lookup(codes)

    @torch.no_grad()
    def init_codebook(self, z: Tensor, generator: torch.Generator | None = None, iters: int = 10) -> None:
        """k-means (``iters`` Lloyd steps, seeded from random latents) on ``z`` ``[B, D, F]``."""
        flat = z.transpose(1, 2).reshape(-1, z.shape[1]).float()
        n = self.codebook_size
        pick = (
            torch.randint(flat.shape[0], (n,), generator=generator)
            if flat.shape[0] < n
            else torch.randperm(flat.shape[0], generator=generator)[:n]
        )
        centers = flat[pick.to(flat.device)].clone()
        for _ in range(iters):
            assign = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ centers.t() + centers.pow(2).sum(1)[None]).argmin(1)
            counts = torch.bincount(assign, minlength=n).to(flat.dtype)
            sums = torch.zeros_like(centers).index_add_(0, assign, flat)
            centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
        self.embed.copy_(centers)
        self.embed_avg.copy_(centers)
        self.cluster_size.fill_(1.0)

    @torch.no_grad()
    def _update(self, flat: Tensor, codes: Tensor) -> None:
        onehot = F.one_hot(codes, self.codebook_size).to(flat.dtype)
        counts = onehot.sum(0)
        sums = onehot.t() @ flat
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        size = (self.cluster_size + 1e-5) / (total + self.codebook_size * 1e-5) * total
        self.embed.copy_(self.embed_avg / size[:, None])
        dead = torch.lt(self.cluster_size, self.dead_threshold)
        n_dead = int(dead.sum())
        if n_dead:
            # Deterministic choice (no RNG: resume and DDP stay in step); rank 0's batch wins.
            idx = (torch.arange(n_dead, device=flat.device) * 7919 + int(self.restarts) * 104729) % flat.shape[0]
            fresh = flat[idx]
            if distributed:
                torch.distributed.broadcast(fresh, src=0)
            self.embed[dead] = fresh
            self.embed_avg[dead] = fresh
            self.cluster_size[dead] = 1.0
            self.restarts.add_(1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, d, f = z.shape
        flat = z.transpose(1, 2).reshape(b * f, d)
        codes = self._nearest(flat.detach())
        if self.training:
            self._update(flat.detach(), codes)
        z_q = self.lookup(codes.view(b, f))
        commitment = F.mse_loss(z, z_q.detach(), reduction="none").mean(dim=(1, 2))
        z_q = z + (z_q - z).detach()  # straight-through estimator
        return z_q, codes.view(b, f), commitment, torch.zeros_like(commitment)


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
        kind: str = "factorized",
        ema_decay: float = 0.99,
    ) -> None:
        super().__init__()
        self.n_codebooks = n_codebooks
        self.quantizer_dropout = quantizer_dropout
        self.dropout_choices = dropout_choices or tuple(range(1, n_codebooks + 1))
        vqs: list[nn.Module]
        if kind == "ema":
            vqs = [EMAVectorQuantizer(latent_dim, codebook_size, ema_decay) for _ in range(n_codebooks)]
        elif kind == "factorized":
            vqs = [VectorQuantizer(latent_dim, codebook_size, codebook_dim) for _ in range(n_codebooks)]
        else:
            raise ValueError(f"unknown quantizer kind {kind!r}: 'ema' or 'factorized'")
        self.quantizers = nn.ModuleList(vqs)

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
        was_training = self.training
        self.eval()  # no EMA update while measuring the residuals
        for vq in self.quantizers:
            assert isinstance(vq, (VectorQuantizer, EMAVectorQuantizer))
            vq.init_codebook(residual, generator)
            residual = residual - vq(residual)[0]
        self.train(was_training)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[B, Q, F]`` (``Q`` ≤ ``n_codebooks``) → quantized latent ``[B, D, F]``."""
        if codes.shape[1] > self.n_codebooks:
            raise ValueError(f"codes have {codes.shape[1]} quantizers; this model has {self.n_codebooks}")
        z: Tensor | None = None
        for i, vq in enumerate(self.quantizers[: codes.shape[1]]):
            assert isinstance(vq, (VectorQuantizer, EMAVectorQuantizer))
            z_i = vq.decode(codes[:, i])
            z = z_i if z is None else z + z_i
        if z is None:
            raise ValueError("codes have no quantizers (shape [B, 0, F])")
        return z


def code_usage(codes: Tensor, codebook_size: int) -> tuple[Tensor, Tensor]:
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
