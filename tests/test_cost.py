"""The size warning's estimate follows its stated formula, and warns only when it should."""
from core.cost import attention_bytes, size_warning, work_ratio


def test_attention_floor_is_the_stated_formula():
    # 512 px: 64 x 64 = 4096 tokens; 2 x 8 heads x 4096^2 x 4 bytes = 1 GiB exactly
    assert attention_bytes(512, 512) == 2 * 8 * 4096**2 * 4 == 2**30
    assert attention_bytes(2048, 2048) == 256 * 2**30  # 16x the tokens, 256x the scores
    assert work_ratio(512, 512) == 1 and work_ratio(1024, 1024) == 16


def test_warns_for_a_2048_px_photo_on_the_cpu_and_not_for_512():
    text = size_warning(2048, 2048, on_cpu=True, available_bytes=16 * 2**30)
    assert "256.0 GiB" in text and "16.0 GiB available" in text and "256 times the work" in text
    assert "ImageScale to 512" in text and "--size 512" in text
    assert size_warning(512, 512, on_cpu=True, available_bytes=16 * 2**30) is None
    assert size_warning(1024, 1024, on_cpu=False, available_bytes=80 * 2**30, bytes_per_value=2) is None
    assert "GiB available" in size_warning(1024, 1024, on_cpu=False, available_bytes=4 * 2**30)
