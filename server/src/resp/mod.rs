//! RESP wire format: request parsing and reply encoding.
//!
//! Kept free of I/O and of any crate beyond `std` so the hot path (parse a
//! pipelined request, encode its reply) can be tested and benchmarked on its own,
//! and so the connection loop decides buffering and back-pressure, not this code.

pub mod encode;
pub mod parse;
