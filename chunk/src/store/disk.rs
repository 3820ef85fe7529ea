//! Facts about the filesystem under a store: free space, and recognising "disk full" errors.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes an unprivileged process may still write on the filesystem holding `path`.
#[allow(unsafe_code)]
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to writable memory of
    // the right type; statvfs only writes into it and we read it only after success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled in the struct.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms; on some they are already u64.
    #[allow(clippy::unnecessary_cast)]
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Whether a storage engine's error message reports a full disk (ENOSPC).
pub fn is_no_space(message: &str) -> bool {
    message.contains("No space left") || message.contains("ENOSPC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_has_some_free_space() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).unwrap() > 0);
    }

    #[test]
    fn a_missing_path_is_an_error_not_zero() {
        assert!(available_bytes(Path::new("/definitely/not/here")).is_err());
    }

    #[test]
    fn recognises_enospc_messages() {
        assert!(is_no_space(
            "IO error: No space left on device: While appending to file: 000012.log"
        ));
        assert!(!is_no_space("IO error: Permission denied"));
    }
}
