"""Benchmarks in the PIE-Bench format and a resumable runner (``editnb bench ...``)."""
from .data import (BenchItem, load_pie_bench, load_toy_magicbrush, mask_decode, mask_encode, write_toy_magicbrush,
                   write_toy_pie)

__all__ = ["BenchItem", "load_pie_bench", "load_toy_magicbrush", "mask_decode", "mask_encode",
           "write_toy_magicbrush", "write_toy_pie"]
