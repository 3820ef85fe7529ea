//! Local files every node keeps: data directories created private (0700) and durably.
//!
//! A directory created and never synced may vanish in a power cut with everything in it,
//! even when every file inside was fsynced: the entry naming it lives in its parent. RocksDB
//! syncs the directories it writes in, but not the parent of its own; so every data
//! directory is created here, and each new entry's parent is synced before anything is
//! stored under it.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `path` and any missing parents with mode 0700, syncing the parent of every
/// directory it creates. An existing `path` keeps its contents; if others may read it, its
/// mode is narrowed to 0700.
pub fn create_private_dir_all(path: &Path) -> io::Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut p = path.to_path_buf();
    while !p.as_os_str().is_empty() && !p.exists() {
        missing.push(p.clone());
        match p.parent() {
            Some(parent) => p = parent.to_path_buf(),
            None => break,
        }
    }
    for dir in missing.iter().rev() {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        sync_dir(
            dir.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?;
    }
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// fsync of a directory: its entries (creations, renames, removals) become durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_nested_directories_and_narrows_open_ones() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        create_private_dir_all(&deep).unwrap();
        for p in [t.path().join("a"), t.path().join("a/b"), deep.clone()] {
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir_all(&open).unwrap();
        assert_eq!(
            std::fs::metadata(&open).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::write(t.path().join("file"), b"x").unwrap();
        assert!(create_private_dir_all(&t.path().join("file")).is_err());
    }
}

/// The address a node advertises for a listener on `local` when the operator gave none: the
/// listener's own IP when it is specific; for an unspecified IP (`0.0.0.0`), the source IP
/// of the route toward the first of `toward` (`host:port` entries, such as the `controller`
/// alias) that resolves, so a container on an overlay network advertises its overlay
/// address rather than the one of its default route (Docker's `docker_gwbridge`, which other
/// hosts cannot reach); then the default route's source IP; then loopback. Finding a route
/// connects a UDP socket, which sends nothing.
pub fn advertised_address(local: std::net::SocketAddr, toward: &[String]) -> String {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
    if !local.ip().is_unspecified() {
        return local.to_string();
    }
    let resolved = toward
        .iter()
        .filter(|t| !t.contains('/'))
        .filter_map(|t| t.to_socket_addrs().ok())
        .flatten()
        .map(|a| a.ip());
    let ip = resolved
        .chain(std::iter::once(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))))
        .find_map(source_ip_toward)
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, local.port()).to_string()
}

fn source_ip_toward(target: std::net::IpAddr) -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    socket.connect((target, 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod advertise_tests {
    use super::advertised_address;

    #[test]
    fn a_specific_listener_is_advertised_as_it_is() {
        let local = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(advertised_address(local, &[]), "127.0.0.1:4000");
    }

    #[test]
    fn an_unspecified_listener_advertises_the_route_toward_the_peers() {
        // A peer on loopback is reached from loopback: that is the address to advertise,
        // whatever the default route says.
        let any = "0.0.0.0:4000".parse().unwrap();
        let toward = vec!["127.0.0.9:7100".to_string()];
        assert_eq!(advertised_address(any, &toward), "127.0.0.1:4000");
        // Without a peer: some specific address, on the listener's port.
        let detected: std::net::SocketAddr = advertised_address(any, &[]).parse().unwrap();
        assert!(!detected.ip().is_unspecified() && detected.port() == 4000);
    }
}
