"""qwenvl.engine.cpu_kernels: when the optional C++ kernel is tried, and that a refusal is a reason, not an error.
(The kernel's numbers are tested in test_quant.py.)"""

from __future__ import annotations

from qwenvl.engine import cpu_kernels


def test_reasons_name_what_is_missing(monkeypatch):
    monkeypatch.setenv("QWENVL_KERNELS", "0")
    assert cpu_kernels.unavailable_reason() == "QWENVL_KERNELS=0"
    monkeypatch.delenv("QWENVL_KERNELS")
    assert cpu_kernels.unavailable_reason({"avx", "sse4_2", "avx512f"}) == \
        "the CPU lacks avx512f+avx512bw and avx2+fma"
    assert cpu_kernels.unavailable_reason({"avx2"}) == "the CPU lacks avx512f+avx512bw and avx2+fma"
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CXX", "no-such-compiler")
    for isa in ({"avx512f", "avx512bw"}, {"avx2", "fma"}):  # either body's flags suffice
        assert cpu_kernels.unavailable_reason(isa) == "no C++ compiler on PATH"


def test_cache_key_directory_is_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv("QWENVL_KERNEL_CACHE", str(tmp_path))
    assert cpu_kernels._cache_dir("abc") == tmp_path / "abc"
