//! redcloud's criterion benchmarks live in `benches/`; this library holds what they share.
