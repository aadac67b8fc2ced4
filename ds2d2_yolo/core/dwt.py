"""One-level 2-D discrete wavelet transform as a stride-2 conv, with PyWavelets' conventions, and the HF map.

`DWT2d` reproduces `pywt.dwt2` (and so `pytorch_wavelets.DWTForward(J=1)`, which follows it): same filters, same
signal extension for every PyWavelets mode, same output sizes and band order (LL, then LH, HL, HH as pywt's cA, cH,
cV, cD). It is a plain `nn.Module` with the filter bank in buffers, so it follows `.to(device)`, supports autograd,
and needs nothing but torch at run time (PyWavelets only supplies the filter taps when the module is built).
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

import numpy as np
import pywt
import torch
import torch.nn as nn
import torch.nn.functional as F

# PyWavelets' signal-extension modes. Every one is linear in the signal, so each padded sample is a fixed
# combination of real samples; `_extension` below builds that combination once per (length, pads, mode).
MODES = (
    "zero",
    "constant",
    "symmetric",
    "reflect",
    "periodic",
    "smooth",
    "antisymmetric",
    "antireflect",
    "periodization",
)


def is_discrete_wavelet(wave: object) -> bool:
    """Whether `wave` names a discrete PyWavelets wavelet (the only kind a DWT filter bank can use)."""
    return isinstance(wave, str) and wave in pywt.wavelist(kind="discrete")


def _wavelet(wave: str) -> pywt.Wavelet:
    """Return the discrete PyWavelets wavelet `wave`, or raise a one-line ValueError naming the fix."""
    if not is_discrete_wavelet(wave):
        raise ValueError(
            f"unknown wavelet {wave!r}: use a discrete PyWavelets name such as 'haar', 'db2', 'sym4' or 'bior2.2' "
            "(see pywt.wavelist(kind='discrete'))"
        )
    return pywt.Wavelet(wave)


def _band_kernels(lo: list[float], hi: list[float]) -> np.ndarray:
    """Return the (4, 1, L, L) float64 outer-product kernels for LL, LH, HL, HH (first axis = height, second = width).

    LH is low-pass along the width and high-pass along the height (pywt's cH, the horizontal detail), HL the reverse.
    """
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    pairs = ((lo, lo), (hi, lo), (lo, hi), (hi, hi))  # (height filter, width filter) per band
    return np.stack([np.outer(fh, fw) for fh, fw in pairs])[:, None]


def _ext_index(p: int, n: int, mode: str) -> list[tuple[int, float]]:
    """Express sample `p` of the extended signal (real samples are 0..n-1) as [(index, coefficient), ...]."""
    if 0 <= p < n:
        return [(p, 1.0)]
    if mode == "zero":
        return []
    if mode in {"symmetric", "antisymmetric"}:  # half-sample mirror: ... x1 x0 | x0 x1 ... x(n-1) | x(n-1) ...
        r = p % (2 * n)
        sign = -1.0 if mode == "antisymmetric" and (p // n) % 2 else 1.0
        return [(r if r < n else 2 * n - 1 - r, sign)]
    if mode in {"periodic", "periodization"}:
        return [(p % n, 1.0)]
    if mode == "constant" or n == 1:  # one sample has no slope or mirror partner (pywt rejects reflect here)
        return [(min(max(p, 0), n - 1), 1.0)]
    if mode == "reflect":  # whole-sample mirror: ... x2 x1 | x0 x1 ... x(n-2) x(n-1) | x(n-2) ...
        r = p % (2 * n - 2)
        return [(r if r < n else 2 * n - 2 - r, 1.0)]
    if mode == "smooth":  # first-order extrapolation from the slope at each edge
        if p < 0:
            return [(0, 1.0 - p), (1, float(p))]
        k = p - n + 1
        return [(n - 1, 1.0 + k), (n - 2, -float(k))]
    if mode == "antireflect":  # point mirror about the edge sample, repeated: x[-k] = 2 x[0] - x[k]
        edge, mirror = (0, -p) if p < 0 else (n - 1, 2 * (n - 1) - p)
        # The mirror image may itself lie outside the signal for long extensions: expand it recursively.
        return [(edge, 2.0)] + [(i, -c) for i, c in _ext_index(mirror, n, mode)]
    raise ValueError(f"unsupported wavelet mode {mode!r}: use one of {', '.join(MODES)}")


@lru_cache(maxsize=256)
def _extension(n: int, left: int, right: int, mode: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Return gather indices and coefficients (K, n+left+right) for extending a length-n signal, or None for zeros.

    K is the largest number of real samples any extended sample depends on (1 for mirror/periodic modes, 2-3 for
    the affine ones); unused slots carry coefficient 0.
    """
    if mode == "zero":
        return None
    if mode == "periodization" and n % 2:
        # PyWavelets first makes an odd signal even by repeating its last sample, then wraps periodically.
        rows = [[(min(p % (n + 1), n - 1), 1.0)] for p in range(-left, n + right)]
    else:
        rows = [_ext_index(p, n, mode) for p in range(-left, n + right)]
    merged = []
    for row in rows:  # merge repeated indices so K stays minimal
        acc: dict[int, float] = {}
        for i, c in row:
            acc[i] = acc.get(i, 0.0) + c
        merged.append([(i, c) for i, c in acc.items() if c != 0.0])
    k = max(len(r) for r in merged)
    idx = np.zeros((k, len(merged)), dtype=np.int64)
    coef = np.zeros((k, len(merged)), dtype=np.float64)
    for j, row in enumerate(merged):
        for slot, (i, c) in enumerate(row):
            idx[slot, j], coef[slot, j] = i, c
    return idx, coef


def _extend(x: torch.Tensor, dim: int, left: int, right: int, mode: str) -> torch.Tensor:
    """Extend `x` along `dim` (-1 or -2) by `left`/`right` samples with PyWavelets' rule for `mode`."""
    if left == 0 and right == 0:
        return x
    n = x.shape[dim]
    if mode == "zero":
        return F.pad(x, (left, right) if dim == -1 else (0, 0, left, right))
    idx, coef = _extension(n, left, right, mode)
    if idx.shape[0] == 1 and (coef == 1.0).all():  # pure gather: mirror, periodic and edge-repeat modes
        return x.index_select(dim, torch.as_tensor(idx[0], device=x.device))
    shape = [1] * x.ndim
    shape[dim] = coef.shape[1]
    out = 0
    for i, c in zip(idx, coef):  # affine modes: a few weighted gathers
        w = torch.as_tensor(c, dtype=x.dtype, device=x.device).view(shape)
        out = out + x.index_select(dim, torch.as_tensor(i, device=x.device)) * w
    return out


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Return a context that disables autocast on `device`, so the transform stays in the dtype it was given."""
    if device.type in {"cuda", "cpu", "xpu", "mps"}:
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class _BlockDWT(torch.autograd.Function):
    """Stride-2 transform for two-tap filters (Haar and its aliases) as a 4x4 matrix on non-overlapping 2x2 blocks.

    With L = 2 the blocks do not overlap, so one small matmul replaces the depthwise convolution, and the hand-written
    backward (the transposed matrix on the incoming band gradients) avoids convolution_backward and the
    zero-filled slice gradients: about 2x faster than pytorch_wavelets forward+backward on CPU.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (LL, LH/HL/HH) of an even-sized (N, C, H, W) `x` for a (4, 4) band-by-tap `kernel`."""
        n, c, hh, ww = x.shape
        h, w = hh // 2, ww // 2
        taps = x.reshape(n, c, h, 2, w, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, c, 4, h * w)
        y = torch.matmul(kernel, taps).view(n, c, 4, h, w)
        ctx.save_for_backward(kernel)
        ctx.in_shape = (n, c, hh, ww)
        return y[:, :, 0].contiguous(), y[:, :, 1:].contiguous()

    @staticmethod
    def backward(ctx, grad_ll: torch.Tensor | None, grad_high: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        """Map the band gradients back onto the 2x2 input blocks with the transposed kernel."""
        (kernel,) = ctx.saved_tensors
        n, c, hh, ww = ctx.in_shape
        h, w = hh // 2, ww // 2
        if grad_ll is None:
            grad_ll = kernel.new_zeros(n, c, h, w)
        if grad_high is None:
            grad_high = kernel.new_zeros(n, c, 3, h, w)
        g = torch.cat((grad_ll.unsqueeze(2), grad_high), 2).reshape(n, c, 4, h * w)
        gx = torch.matmul(kernel.t(), g).view(n, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c, hh, ww)
        return gx, None


class DWT2d(nn.Module):
    """One-level 2-D DWT (analysis and synthesis) with PyWavelets' filters, extension modes and band order.

    The forward transform extends the input with the mode's rule and applies the four outer-product filters
    (LL, LH, HL, HH) as one stride-2 depthwise convolution (four output planes per channel), which is exactly
    `pywt.dwt2` per (image, channel) plane. Output sizes follow PyWavelets: floor((N + L - 1) / 2)
    per axis for filter length L, or ceil(N / 2) for "periodization". Haar with "zero" is the reference DS2D2
    transform: for each 2x2 block [[a, b], [c, d]], LL = (a+b+c+d)/2, LH = (a+b-c-d)/2, HL = (a-b+c-d)/2,
    HH = (a-b-c+d)/2, with a zero row/column appended bottom/right for odd sizes.

    Numerics: float64 input is transformed in float64; every other dtype (float16, bfloat16, float32) is computed
    and returned in float32, also under autocast, because the band energies feed distillation losses.

    Attributes:
        wave (str): PyWavelets wavelet name.
        mode (str): Signal-extension mode, one of `MODES`.
        filt_len (int): Filter length L (PyWavelets pads biorthogonal pairs to a common length).
        dec_filters (torch.Tensor): (4, 1, L, L) float64 analysis kernels, already flipped for cross-correlation.
        rec_filters (torch.Tensor): (4, 1, L, L) float64 synthesis kernels for the transposed convolution.

    Examples:
        >>> dwt = DWT2d("haar", "zero")
        >>> ll, high = dwt(torch.randn(2, 8, 15, 16))
        >>> ll.shape, high.shape
        (torch.Size([2, 8, 8, 8]), torch.Size([2, 8, 3, 8, 8]))
        >>> dwt.inverse(ll, high, size=(15, 16)).shape
        torch.Size([2, 8, 15, 16])
    """

    def __init__(self, wave: str = "haar", mode: str = "zero"):
        """Build the filter bank of `wave` for extension `mode`.

        Args:
            wave (str): Any discrete PyWavelets wavelet (orthogonal or biorthogonal), e.g. "haar", "db2", "bior2.2".
            mode (str): PyWavelets extension mode: "zero", "constant", "symmetric", "reflect", "periodic", "smooth",
                "antisymmetric", "antireflect" or "periodization".

        Raises:
            ValueError: If the wavelet or the mode is unknown.
        """
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unsupported wavelet mode {mode!r}: use one of {', '.join(MODES)}")
        w = _wavelet(wave)
        self.wave, self.mode, self.filt_len = wave, mode, int(w.dec_len)
        # pywt's dwt is a true convolution; conv2d correlates, hence the reversed analysis filters.
        self._dec = _band_kernels(w.dec_lo[::-1], w.dec_hi[::-1])
        self._rec = _band_kernels(w.rec_lo, w.rec_hi)
        # Non-persistent: the taps are fully determined by (wave, mode), so they stay out of checkpoints.
        self.register_buffer("dec_filters", torch.from_numpy(self._dec.copy()), persistent=False)
        self.register_buffer("rec_filters", torch.from_numpy(self._rec.copy()), persistent=False)

    def extra_repr(self) -> str:
        """Return the wavelet and mode for `print(module)`."""
        return f"wave={self.wave!r}, mode={self.mode!r}"

    def _kernel(self, buf: torch.Tensor, exact: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """Return `buf` in `dtype`, rebuilt from the exact float64 taps if a `.half()`/`.float()` rounded the buffer."""
        if buf.dtype == dtype or buf.dtype == torch.float64:
            return buf.to(dtype)
        return torch.as_tensor(exact, dtype=dtype, device=buf.device)

    def _pads(self, n: int) -> tuple[int, int, int]:
        """Return (left pad, right pad, output length) along an axis of length `n`, matching `pywt.dwt`."""
        L = self.filt_len
        if self.mode == "periodization":
            out = (n + 1) // 2
            return L // 2 - 1, 2 * out - n + L // 2 - 1, out  # right pad also covers the odd-length repeat
        out = (n + L - 1) // 2
        return L - 2, 2 * out - n, out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform `x` into its approximation and detail bands.

        Args:
            x (torch.Tensor): Input of shape (N, C, H, W), any floating dtype, any device.

        Returns:
            ll (torch.Tensor): Approximation band (N, C, h, w), float64 for float64 input, else float32.
            high (torch.Tensor): Detail bands (N, C, 3, h, w) ordered LH, HL, HH (pywt's cH, cV, cD).
        """
        if x.ndim != 4:
            raise ValueError(f"DWT2d expects a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        n, c, h, w = x.shape
        (top, bottom, oh), (left, right, ow) = self._pads(h), self._pads(w)
        with _no_autocast(x.device):
            y = _extend(_extend(x.to(dtype), -2, top, bottom, self.mode), -1, left, right, self.mode)
            weight = self._kernel(self.dec_filters, self._dec, dtype)
            if self.filt_len == 2:
                return _BlockDWT.apply(y, weight.view(4, 4))
            # Depthwise conv with four output planes per channel: (N, 4C, h, w) is laid out as (N, C, 4, h, w).
            y = F.conv2d(y, weight.repeat(c, 1, 1, 1), stride=2, groups=c)
        y = y.view(n, c, 4, oh, ow)
        return y[:, :, 0], y[:, :, 1:]

    def inverse(self, ll: torch.Tensor, high: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Reconstruct the signal from its bands (the synthesis half of the filter bank, like `pywt.idwt2`).

        Args:
            ll (torch.Tensor): Approximation band (N, C, h, w).
            high (torch.Tensor): Detail bands (N, C, 3, h, w) ordered LH, HL, HH.
            size (tuple[int, int] | None): Output (H, W), normally the size of the transformed input; the result is
                exact for it in every mode. None returns PyWavelets' length per axis: 2h - L + 2, or 2h for
                "periodization".

        Returns:
            (torch.Tensor): Reconstruction (N, C, H, W), float64 for float64 bands, else float32.
        """
        if ll.ndim != 4 or high.ndim != 5 or high.shape[2] != 3 or high.shape[:2] + high.shape[3:] != ll.shape:
            raise ValueError(
                f"inverse expects ll (N, C, h, w) and high (N, C, 3, h, w), got {tuple(ll.shape)}, {tuple(high.shape)}"
            )
        dtype = torch.float64 if ll.dtype == torch.float64 and high.dtype == torch.float64 else torch.float32
        n, c, h, w = ll.shape
        L = self.filt_len
        periodic = self.mode == "periodization"
        full = (2 * h, 2 * w) if periodic else (2 * h - L + 2, 2 * w - L + 2)
        size = full if size is None else (int(size[0]), int(size[1]))
        if size[0] > full[0] or size[1] > full[1] or min(size) < 1:
            raise ValueError(f"inverse size {size} is not available from {h}x{w} bands (at most {full[0]}x{full[1]})")
        with _no_autocast(ll.device):
            y = torch.cat((ll.to(dtype).unsqueeze(2), high.to(dtype)), 2).reshape(n, 4 * c, h, w)
            weight = self._kernel(self.rec_filters, self._rec, dtype).repeat(c, 1, 1, 1)
            y = F.conv_transpose2d(y, weight, stride=2, groups=c)  # each group sums its 4 bands into 1 channel
            if periodic:
                # The synthesis output overhangs the period by L - 2 samples; wrap it back (pywt's alignment).
                for dim, m in ((-2, 2 * h), (-1, 2 * w)):
                    idx = (torch.arange(y.shape[dim], device=y.device) - (L // 2 - 1)) % m
                    shape = list(y.shape)
                    shape[dim] = m
                    y = y.new_zeros(shape).index_add(dim if dim >= 0 else y.ndim + dim, idx, y)
                y = y[..., : size[0], : size[1]]
            else:
                y = y[..., L - 2 : L - 2 + size[0], L - 2 : L - 2 + size[1]]
        return y


def high_frequency(high: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Return the DS2D2 high-frequency map: LH + HL + HH, bilinearly resized back to the feature size.

    Args:
        high (torch.Tensor): Detail bands (N, C, 3, h, w) from `DWT2d`.
        size (tuple[int, int]): Target (H, W), the size of the feature map that was transformed.

    Returns:
        (torch.Tensor): (N, C, H, W) map, `F.interpolate(..., mode="bilinear", align_corners=False)` of the band sum.
    """
    if high.ndim != 5 or high.shape[2] != 3:
        raise ValueError(f"high_frequency expects detail bands (N, C, 3, h, w), got shape {tuple(high.shape)}")
    return F.interpolate(high.sum(2), size=tuple(size), mode="bilinear", align_corners=False)
