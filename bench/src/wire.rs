//! Bytes received on loopback TCP connections, read from the kernel with `ss -tin` (the
//! `bytes_received` of `tcp_info`). Benchmarks use it for wire-level figures that the
//! application cannot see, such as duplicate gossip copies that gossipsub drops silently.

use std::collections::HashSet;
use std::process::Command;

/// Sum of `bytes_received` over every established TCP socket with an endpoint on one of
/// `ports`. A connection between two such ports counts both ends, each end what it received,
/// so the sum is every byte delivered to those nodes. `None` if `ss` is unavailable.
pub fn bytes_received(ports: &HashSet<u16>) -> Option<u64> {
    let out = Command::new("ss").args(["-tinH"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let port_of = |field: &str| field.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    let mut total = 0u64;
    let mut counting = false;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            counting = fields.len() >= 5
                && (port_of(fields[3]).is_some_and(|p| ports.contains(&p))
                    || port_of(fields[4]).is_some_and(|p| ports.contains(&p)));
            continue;
        }
        if counting
            && let Some(v) = line
                .split_whitespace()
                .find_map(|f| f.strip_prefix("bytes_received:"))
                .and_then(|v| v.parse::<u64>().ok())
        {
            total += v;
        }
    }
    Some(total)
}
