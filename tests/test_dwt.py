"""DWT2d against PyWavelets, the Haar closed form, dtypes, autograd and the high-frequency map."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch
import torch.nn.functional as F

from ds2d2_yolo.core.dwt import MODES, DWT2d, high_frequency

WAVES = ("haar", "db2", "sym4", "bior2.2")
SIZES = ((6, 8), (7, 5), (1, 3), (9, 9))  # even, odd, a single row, odd square


def _pywt_bands(x: np.ndarray, wave: str, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Return pywt.dwt2 of (N, C, H, W) as (LL, stacked LH/HL/HH)."""
    ca, (ch, cv, cd) = pywt.dwt2(x, wave, mode=mode)
    return ca, np.stack((ch, cv, cd), axis=2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wave", WAVES)
def test_matches_pywt_and_reconstructs(wave: str, mode: str):
    rng = np.random.default_rng(0)
    dwt = DWT2d(wave, mode)
    for h, w in SIZES:
        if mode in {"reflect", "antireflect"} and min(h, w) == 1:
            continue  # PyWavelets itself rejects whole-sample mirrors of a single sample
        x = rng.standard_normal((2, 3, h, w))
        ll, high = dwt(torch.from_numpy(x))
        ca, detail = _pywt_bands(x, wave, mode)
        assert ll.dtype == torch.float64 and ll.shape == ca.shape and high.shape == detail.shape
        assert np.abs(ll.numpy() - ca).max() <= 1e-6
        assert np.abs(high.numpy() - detail).max() <= 1e-6
        rec = dwt.inverse(ll, high, size=(h, w))
        assert rec.shape == (2, 3, h, w)
        assert np.abs(rec.numpy() - x).max() <= 1e-5
        # Without a size the inverse returns pywt.idwt2's own (possibly one sample longer) result.
        ref = pywt.idwt2((ca, (detail[:, :, 0], detail[:, :, 1], detail[:, :, 2])), wave, mode=mode)
        full = dwt.inverse(ll, high)
        assert full.shape == ref.shape and np.abs(full.numpy() - ref).max() <= 1e-6


@pytest.mark.parametrize("n", [1, 2, 3, 8, 13])
def test_output_sizes(n: int):
    x = torch.randn(1, 1, n, n)
    for wave in WAVES:
        L = pywt.Wavelet(wave).dec_len
        assert DWT2d(wave, "zero")(x)[0].shape[-1] == (n + L - 1) // 2
        assert DWT2d(wave, "periodization")(x)[0].shape[-1] == (n + 1) // 2


def test_haar_closed_form_2x2_and_3x3():
    a, b, c, d = 1.0, 2.0, 5.0, 11.0
    ll, high = DWT2d()(torch.tensor([[[[a, b], [c, d]]]], dtype=torch.float64))
    expected = [(a - b + c - d) / 2, (a - b - c + d) / 2]
    assert ll.item() == pytest.approx((a + b + c + d) / 2)
    assert high.flatten().tolist() == pytest.approx([(a + b - c - d) / 2, *expected])
    # 3x3: a zero row and column are appended bottom/right, giving a 2x2 band grid of 2x2 blocks.
    x = torch.arange(1.0, 10.0, dtype=torch.float64).view(1, 1, 3, 3)
    ll, high = DWT2d("haar", "zero")(x)
    p = F.pad(x, (0, 1, 0, 1))[0, 0]
    blk = p.view(2, 2, 2, 2).permute(0, 2, 1, 3)  # [i, j] -> 2x2 block
    a, b, c, d = blk[..., 0, 0], blk[..., 0, 1], blk[..., 1, 0], blk[..., 1, 1]
    torch.testing.assert_close(ll[0, 0], (a + b + c + d) / 2)
    torch.testing.assert_close(high[0, 0], torch.stack(((a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2)))
    assert ll[0, 0, 1, 1].item() == pytest.approx(9 / 2)  # the lone corner sample 9, three zeros


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_float32(dtype: torch.dtype):
    x = torch.randn(2, 4, 9, 10)
    for wave in ("haar", "db2"):
        dwt = DWT2d(wave)
        ll_h, high_h = dwt(x.to(dtype))
        ll_f, high_f = dwt(x.to(dtype).float())
        assert ll_h.dtype == high_h.dtype == torch.float32
        torch.testing.assert_close(ll_h, ll_f)  # same values once upcast: the transform itself runs in fp32
        torch.testing.assert_close(high_h, high_f)
        torch.testing.assert_close(ll_h, dwt(x)[0], atol=0.02, rtol=0.02)


def test_autocast_and_halved_module_stay_exact():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    ref = _pywt_bands(x.numpy(), "db2", "symmetric")[0]
    dwt = DWT2d("db2", "symmetric").half()  # a blanket .half() must not round the filter taps
    assert np.abs(dwt(x)[0].numpy() - ref).max() <= 1e-6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ll, _ = DWT2d("db2", "symmetric")(x.float())
    assert ll.dtype == torch.float32 and np.abs(ll.double().numpy() - ref).max() <= 1e-5


@pytest.mark.parametrize("wave,mode", [("haar", "zero"), ("haar", "symmetric"), ("db2", "zero"), ("db2", "smooth")])
def test_gradcheck(wave: str, mode: str):
    dwt = DWT2d(wave, mode)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dwt(t), (x,))
    assert torch.autograd.gradcheck(lambda t: dwt(t)[1], (x,))  # only the detail bands used
    ll, high = dwt(x.detach())
    ll.requires_grad_(True)
    high.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: dwt.inverse(a, b, (5, 4)), (ll, high))


def test_high_frequency_shape_and_value():
    x = torch.randn(2, 3, 11, 14)
    _, high = DWT2d()(x)
    hf = high_frequency(high, x.shape[-2:])
    assert hf.shape == x.shape
    manual = F.interpolate(high[:, :, 0] + high[:, :, 1] + high[:, :, 2], size=(11, 14), mode="bilinear")
    torch.testing.assert_close(hf, manual)
    with pytest.raises(ValueError):
        high_frequency(high[:, :, :2], (11, 14))


def test_matches_pytorch_wavelets_if_installed():
    pw = pytest.importorskip("pytorch_wavelets")
    x = torch.randn(2, 3, 9, 12)
    for wave, mode in (("haar", "zero"), ("db2", "symmetric")):
        ll_ref, (high_ref,) = pw.DWTForward(J=1, wave=wave, mode=mode)(x)
        ll, high = DWT2d(wave, mode)(x)
        torch.testing.assert_close(ll, ll_ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(high, high_ref, atol=1e-5, rtol=0)


def test_errors_and_repr():
    with pytest.raises(ValueError, match="pywt.wavelist"):
        DWT2d("nope")
    with pytest.raises(ValueError, match="periodization"):
        DWT2d("haar", "mirror")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        DWT2d()(torch.randn(3, 8, 8))
    dwt = DWT2d("db2")
    ll, high = dwt(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="not available"):
        dwt.inverse(ll, high, size=(20, 20))
    assert "db2" in repr(dwt) and dwt.state_dict() == {}  # taps follow from (wave, mode): not checkpointed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.randn(2, 4, 9, 10)
    for wave in ("haar", "db2"):
        dwt = DWT2d(wave)
        ll, high = dwt.cuda()(x.cuda().half())
        assert ll.dtype == torch.float32 and ll.is_cuda
        torch.testing.assert_close(ll.cpu(), dwt.cpu()(x.half())[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(high.cpu(), dwt(x.half())[1], atol=1e-5, rtol=1e-5)
