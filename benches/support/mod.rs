//! Code shared by the benchmarks.

pub mod hot_path_variants;
