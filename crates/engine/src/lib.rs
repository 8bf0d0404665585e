//! The synchronous engine: scheduling, KV cache management, model execution and sampling.
//!
//! Design decision: the engine is a plain synchronous loop on its own thread (vLLM's
//! `EngineCore.step()`); async stays at the edges, and requests, aborts and shutdown reach
//! it as ordinary messages.
#![deny(missing_docs)]

pub mod blocks;
pub mod chat;
mod error;
pub mod generate;
pub mod sampler;
pub mod score;
pub mod sequence;
pub mod serve;
pub mod stop;

pub use error::EngineError;
pub use generate::{generate, GenerateOutput, GenerateRequest, Timings};
