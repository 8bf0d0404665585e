//! AArch64 SIMD kernels. NEON is part of every AArch64 CPU, so the level needs no run-time
//! detection beyond the target.

pub mod neon;
