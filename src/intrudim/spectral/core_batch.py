"""The structured cores of many LoRA updates of one base matrix, their products with the base factors batched.

A matrix-major scan (issue "scan at the read floor") analyses every adapter's factors for one base matrix in a
row. Built one by one (:func:`~intrudim.spectral.structured.lora_core`), each core multiplies the base factors
by that adapter's r columns: U₀ᵀB, V₀ᵀAᵀ and, for a :class:`~intrudim.spectral.structured.GramCore`, W₀Aᵀ and
U₀ᵀ(W₀Aᵀ). Products of width r = 16 run far below the machine's GEMM rate (memory-bound: every column block
streams all of U₀), and each GramCore converts W₀ to U₀'s dtype again. Here the adapters' columns are stacked,
U₀ᵀ[B₁ … B_N] is one GEMM, W₀ is converted once, and the cores are cut out of the stacked products: the same
cores as :func:`lora_core` builds, to float rounding (a wider GEMM sums in another order).

A side whose base factor does not span the space (B of a tall matrix, out > p) also needs the part of each B
outside span(U₀): :func:`lora_core` orthogonalises it twice (classical Gram-Schmidt, 3 more products of the
width of B) and takes its QR. The analysis needs only T_B (Q_B is for the repair, which builds its own cores):
the core's singular values and its left vectors' first p coordinates depend on T_B through T_BᵀT_B alone
(another T'_B = Q'T_B, Q' orthogonal, rotates the core's last rows), and T_BᵀT_B = BᵀB − B₀ᵀB₀ since the residual
is (I − U₀U₀ᵀ)B. So T_B is the Cholesky factor of that r × r difference, no product of the width of B needed. The
difference cancels where B lies nearly inside span(U₀); an adapter whose residual is not well inside its own norm
(:data:`CHOLESKY_MIN_RESIDUAL`) takes :func:`lora_core`'s orthogonalisation instead, as does any failure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from intrudim.spectral.structured import (
    GramCore,
    LoraCore,
    _check_factor_shapes,
    _split_against_basis,
    check_gram_base,
)
from intrudim.spectral.svd import SVDFactors

Factors = tuple[torch.Tensor, torch.Tensor, float]
"""One adapter's (B (out, r), A (r, in), scale) for one base matrix."""

STACK_COLUMNS = 512
"""Columns stacked in one product (32 adapters of r = 16): wide enough for the GEMM's full rate, narrow enough
that the stacked copies of a 7B MLP matrix's side stay ~22 MB each."""

CHOLESKY_MIN_RESIDUAL = 0.25
"""The Cholesky form of T_B is taken when the residual's smallest singular value is at least this fraction of
‖B‖₂: its rounding error is then at most 1/this (4×) that of the two orthogonalisation passes, both far below the
float32 products' own error; below it, :func:`_split_against_basis` as :func:`lora_core` does."""


def lora_cores(base: SVDFactors, factors: Sequence[Factors], W0: torch.Tensor | None = None) -> list[LoraCore | GramCore]:
    """The core of W₀ + scale·B·A for each adapter's factors, as :func:`lora_core` would build it one at a time (to
    float rounding), with the products against the base factors stacked over the adapters. A base SVD without right
    vectors gives :class:`GramCore` objects, which need ``W0``. The cores carry no Q_out/Q_in (the analysis needs
    none; the repair builds its cores with :func:`lora_core`)."""
    if not factors:
        return []
    if base.Vh is None:
        if W0 is None:
            raise ValueError("This base SVD has no right vectors (Vh); pass W0 to express the tuned matrices.")
        return _gram_cores(base, W0, factors)
    U0, V0 = base.U, base.Vh.T
    S0 = base.S.to(torch.float64)
    out_dim, in_dim, p = int(U0.shape[0]), int(V0.shape[0]), int(S0.shape[0])
    for B, A, _ in factors:
        _check_factor_shapes(out_dim, in_dim, B, A)
    B_coords = _coordinates(U0, [B for B, _, _ in factors], full_span=(p == out_dim))
    A_coords = _coordinates(V0, [A.T for _, A, _ in factors], full_span=(p == in_dim))
    return [LoraCore(S0=S0, B_coords=b * scale, A_coords=a, p=p)
            for b, a, (_, _, scale) in zip(B_coords, A_coords, factors, strict=True)]  # fmt: skip


def _chunks(items: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices of ``items`` (each (dim, r)) in runs of at most :data:`STACK_COLUMNS` columns (at least one item)."""
    runs: list[list[int]] = [[]]
    width = 0
    for index, item in enumerate(items):
        if runs[-1] and width + int(item.shape[1]) > STACK_COLUMNS:
            runs.append([])
            width = 0
        runs[-1].append(index)
        width += int(item.shape[1])
    return runs


def _coordinates(basis: torch.Tensor, blocks: Sequence[torch.Tensor], full_span: bool) -> list[torch.Tensor]:
    """Each block X (dim, r)'s coordinates [basisᵀX; T] (float64), as :func:`_split_against_basis` gives them, the
    products basisᵀX stacked; T from the Cholesky form where it is well conditioned (module docstring)."""
    coordinates: list[torch.Tensor] = [torch.empty(0)] * len(blocks)
    dtype = basis.dtype
    for run in _chunks(blocks):
        stacked = torch.cat([blocks[i].to(dtype) for i in run], dim=1)
        inside = (stacked.T @ basis).T.to(torch.float64)  # (p, Σr): written as (Xᵀ·basis)ᵀ, see _split_against_basis
        start = 0
        for i in run:
            width = int(blocks[i].shape[1])
            block_inside = inside[:, start : start + width]
            start += width
            if full_span:
                coordinates[i] = block_inside
                continue
            T = _cholesky_residual(blocks[i], block_inside)
            coordinates[i] = (torch.cat([block_inside, T], dim=0) if T is not None
                              else _split_against_basis(blocks[i], basis, full_span=False)[0])  # fmt: skip
    return coordinates


def _cholesky_residual(X: torch.Tensor, inside: torch.Tensor) -> torch.Tensor | None:
    """T with TᵀT = XᵀX − insideᵀinside (the residual's Gram matrix), upper triangular, or None when the residual is
    not at least :data:`CHOLESKY_MIN_RESIDUAL` of ‖X‖₂ in every direction (or the factorisation fails)."""
    X64 = X.to(torch.float64)
    gram_X = X64.T @ X64
    residual_gram = gram_X - inside.T @ inside
    residual_gram = (residual_gram + residual_gram.T) / 2
    norm_sq = float(torch.linalg.eigvalsh(gram_X)[-1]) if gram_X.numel() else 0.0
    if norm_sq <= 0.0:
        return None
    lowest = float(torch.linalg.eigvalsh(residual_gram)[0])
    if lowest < CHOLESKY_MIN_RESIDUAL**2 * norm_sq:
        return None
    L, info = torch.linalg.cholesky_ex(residual_gram)
    if int(info) != 0:
        return None
    return L.T


def _gram_cores(base: SVDFactors, W0: torch.Tensor, factors: Sequence[Factors]) -> list[GramCore]:
    """:func:`~intrudim.spectral.structured.gram_core` for each adapter: W₀ converted once, U₀ᵀB, W₀Aᵀ and
    U₀ᵀ(W₀Aᵀ) each one product per run of stacked adapters."""
    U0 = base.U
    out_dim, in_dim, p = check_gram_base(base, W0)
    for B, A, _ in factors:
        _check_factor_shapes(out_dim, in_dim, B, A)
    dtype = U0.dtype
    W = W0.to(dtype)
    S0 = base.S.to(torch.float64)
    cores: list[GramCore] = []
    for run in _chunks([B for B, _, _ in factors]):
        Bs = torch.cat([factors[i][0].to(dtype) for i in run], dim=1)  # (out, Σr)
        As = torch.cat([factors[i][1].to(dtype) for i in run], dim=0)  # (Σr, in)
        WA = W @ As.T  # (out, Σr)
        B_coords = (Bs.T @ U0).T.to(torch.float64)
        C = (WA.T @ U0).T.to(torch.float64)
        start = 0
        for i in run:
            B, A, scale = factors[i]
            width = int(B.shape[1])
            A64 = A.to(torch.float64)
            cores.append(GramCore(
                S0=S0, B_coords=B_coords[:, start : start + width] * scale, C=C[:, start : start + width].contiguous(),
                AAt=A64 @ A64.T, p=p,
            ))  # fmt: skip
            start += width
    return cores
