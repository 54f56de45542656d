//! Shared helpers for the benchmarks (key distributions).
