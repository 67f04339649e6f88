"""bench.cluster_memory reads each raylet's ObjectStoreStats: the fields it reports exist in the
installed Ray's message (a Ray upgrade that renames one fails here, not in an hour-long benchmark)."""
from __future__ import annotations

from bench.cluster_memory import STORE_FIELDS, store_figures


def test_store_figures_reads_every_reported_field_of_a_raylets_store_stats():
    from ray.core.generated.node_manager_pb2 import ObjectStoreStats

    canned = ObjectStoreStats(spilled_bytes_total=3 << 20, spilled_objects_total=4, restored_bytes_total=1 << 20,
                              restored_objects_total=2, object_store_bytes_used=5, object_store_bytes_avail=80 << 20,
                              object_store_bytes_fallback=0, spill_time_total_s=0.5, restore_time_total_s=0.25)
    figures = store_figures(canned)
    assert set(figures) == set(STORE_FIELDS)
    assert figures["spilled_bytes_total"] == 3 << 20 and figures["spilled_objects_total"] == 4
    assert figures["restored_bytes_total"] == 1 << 20 and figures["object_store_bytes_avail"] == 80 << 20
    assert figures["spill_time_total_s"] == 0.5
