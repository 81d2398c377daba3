//! Criterion benches live in `benches/`; the dnsperf load test in `load/`.
