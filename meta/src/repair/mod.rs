//! Repair: make what chunkservers hold match what the metadata says must exist.
//! [`plan`] decides which copies to make, [`batch`] gathers them into calls and [`drain`]
//! decides when a draining server may be retired (all pure); [`worker`] does the IO.

pub mod batch;
pub mod drain;
pub mod plan;
pub mod worker;
