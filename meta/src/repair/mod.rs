//! Repair: make what chunkservers hold match what the metadata says must exist.
//! [`plan`] is the pure decision; [`worker`] does the IO.

pub mod plan;
pub mod worker;
