"""The Prometheus exposition: types, escaped labels, cumulative histogram buckets."""

from anycost.serve.metrics import Metrics


def test_render_counters_gauges_and_cumulative_histograms():
    m = Metrics()
    m.counter("requests_total", "Requests")
    m.gauge("queue_depth", "Queue")
    m.histogram("latency_seconds", "Latency", buckets=(0.1, 1.0))
    m.inc("requests_total", status="200")
    m.inc("requests_total", 2, status="200")
    m.inc("requests_total", point='a "quoted"\nname')
    m.set("queue_depth", 7)
    for v in (0.05, 0.5, 5.0):
        m.observe("latency_seconds", v)
    text = m.render()
    assert "# TYPE anycost_requests_total counter" in text and "# TYPE anycost_latency_seconds histogram" in text
    assert 'anycost_requests_total{status="200"} 3' in text
    assert 'anycost_requests_total{point="a \\"quoted\\"\\nname"} 1' in text
    assert "anycost_queue_depth 7" in text
    assert 'anycost_latency_seconds_bucket{le="0.1"} 1' in text
    assert 'anycost_latency_seconds_bucket{le="1"} 2' in text
    assert 'anycost_latency_seconds_bucket{le="+Inf"} 3' in text
    assert "anycost_latency_seconds_count 3" in text and "anycost_latency_seconds_sum 5.55" in text
    assert m.value("requests_total", status="200") == 3 and m.value("latency_seconds") == 3
    assert text.endswith("\n")
