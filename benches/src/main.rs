//! Benchmark harness placeholder.
fn main() {}
