//! Repair: make what chunkservers hold match what the metadata says must exist.
//! [`plan`] decides which copies to make and [`drain`] when a draining server may be retired
//! (both pure); [`worker`] does the IO.

pub mod drain;
pub mod plan;
pub mod worker;
