"""``bench.memory_store`` runs at a tiny size and prints its figures (no assertions on speed)."""

from __future__ import annotations

from tests.test_bench_tiny import number, run_bench


def test_memory_store_prints_counting_and_flush_costs() -> None:
    figures = run_bench("memory_store", 120)
    for name in ("delta_us_without_memory", "extra_us.all", "counting_cpu_percent_2000_nodes"):
        assert name in figures, figures
    for label in ("new_file", "next_minute"):
        assert number(figures[f"flush_rows.{label}"]) > 0
        assert number(figures[f"flush_write_ms_store_thread.{label}"]) > 0
    assert number(figures["quarter_make_ms_store_thread"]) > 0
