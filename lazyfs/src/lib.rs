//! lazyfs: a test-only FUSE filesystem, held in memory, that loses every write not made
//! durable when the power is cut (the LazyFS idea, for machines with no device-mapper).
//!
//! SIGKILL does not test fsync: the kernel's page cache keeps what a killed process wrote.
//! Under lazyfs, a write reaches only the file's *current* contents; `fsync`/`fdatasync` of
//! a file makes its current contents *durable*; `fsync` of a directory makes its current
//! entries (creations, renames, unlinks) durable. [`Mount::power_cut`] throws away everything
//! that was not durable, exactly as a strict POSIX filesystem may after a power failure: a
//! file's unsynced writes, a new file whose directory was never synced, an unsynced rename.
//! From then on every operation on the old mount fails with `EIO` (the machine is off), so a
//! program still running on it cannot make anything durable after the cut. [`Mount::remount`]
//! unmounts and mounts the durable state again at the same place, as the machine's reboot.
//!
//! Files are opened with direct IO, so the kernel's page cache never answers for lazyfs.
//! Mounting needs root (or `fusermount3`) and `/dev/fuse`; [`unavailable`] says why not.
//!
//! Data flow: the kernel's FUSE requests -> [`LazyFs`] (one mutex around [`State`]) ->
//! inodes holding `data` (current) and `durable` bytes, directories holding `entries` and
//! `durable_entries`.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

const ROOT: u64 = 1;
/// Attributes and entries are never cached by the kernel: lazyfs is the only truth.
const TTL: Duration = Duration::ZERO;
/// Largest file lazyfs holds (it is all in memory).
const MAX_FILE: u64 = 1 << 30;

#[derive(Clone, Debug)]
enum Kind {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
        /// Lowest offset written (or truncated to) since the last sync.
        dirty_from: Option<u64>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        durable_entries: BTreeMap<OsString, u64>,
    },
}

#[derive(Clone, Debug)]
struct Inode {
    kind: Kind,
    perm: u16,
    mtime: SystemTime,
}

impl Inode {
    fn file(perm: u16) -> Inode {
        Inode {
            kind: Kind::File {
                data: Vec::new(),
                durable: Vec::new(),
                dirty_from: None,
            },
            perm,
            mtime: SystemTime::now(),
        }
    }

    fn dir(perm: u16) -> Inode {
        Inode {
            kind: Kind::Dir {
                entries: BTreeMap::new(),
                durable_entries: BTreeMap::new(),
            },
            perm,
            mtime: SystemTime::now(),
        }
    }
}

/// The whole filesystem.
#[derive(Clone, Debug)]
pub struct State {
    inodes: BTreeMap<u64, Inode>,
    next: u64,
    /// The power was cut: every operation fails.
    dead: bool,
}

impl Default for State {
    fn default() -> Self {
        let mut inodes = BTreeMap::new();
        inodes.insert(ROOT, Inode::dir(0o755));
        State {
            inodes,
            next: ROOT + 1,
            dead: false,
        }
    }
}

impl State {
    /// What survives a power cut: durable contents under durable names, reachable from the
    /// root. Unreachable inodes are gone.
    fn durable(&self) -> State {
        let mut inodes = BTreeMap::new();
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            let Some(node) = self.inodes.get(&ino) else {
                continue;
            };
            if inodes.contains_key(&ino) {
                continue;
            }
            let kind = match &node.kind {
                Kind::File { durable, .. } => Kind::File {
                    data: durable.clone(),
                    durable: durable.clone(),
                    dirty_from: None,
                },
                Kind::Dir {
                    durable_entries, ..
                } => {
                    todo.extend(durable_entries.values().copied());
                    Kind::Dir {
                        entries: durable_entries.clone(),
                        durable_entries: durable_entries.clone(),
                    }
                }
            };
            inodes.insert(
                ino,
                Inode {
                    kind,
                    perm: node.perm,
                    mtime: node.mtime,
                },
            );
        }
        State {
            inodes,
            next: self.next,
            dead: false,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.inodes.get(&ino)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::File { data, .. } => (FileType::RegularFile, data.len() as u64, 1),
            Kind::Dir { .. } => (FileType::Directory, 0, 2),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm: node.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match self.inodes.get(&dir).map(|n| &n.kind) {
            Some(Kind::Dir { entries, .. }) => Ok(entries),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.inodes.get_mut(&dir).map(|n| &mut n.kind) {
            Some(Kind::Dir { entries, .. }) => Ok(entries),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn lookup(&self, dir: u64, name: &OsStr) -> Result<u64, Errno> {
        self.entries(dir)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn create(&mut self, dir: u64, name: &OsStr, node: Inode) -> Result<u64, Errno> {
        if self.entries(dir)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        self.inodes.insert(ino, node);
        self.entries_mut(dir)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    fn file_mut(&mut self, ino: u64) -> Result<(&mut Vec<u8>, &mut Option<u64>), Errno> {
        match self.inodes.get_mut(&ino) {
            Some(Inode {
                kind: Kind::File {
                    data, dirty_from, ..
                },
                mtime,
                ..
            }) => {
                *mtime = SystemTime::now();
                Ok((data, dirty_from))
            }
            Some(_) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Result<usize, Errno> {
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|e| *e <= MAX_FILE)
            .ok_or(Errno::EFBIG)?;
        let (data, dirty) = self.file_mut(ino)?;
        if data.len() < end as usize {
            data.resize(end as usize, 0);
        }
        data[offset as usize..end as usize].copy_from_slice(bytes);
        *dirty = Some(dirty.map_or(offset, |d| d.min(offset)));
        Ok(bytes.len())
    }

    fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        if size > MAX_FILE {
            return Err(Errno::EFBIG);
        }
        let (data, dirty) = self.file_mut(ino)?;
        let from = size.min(data.len() as u64);
        data.resize(size as usize, 0);
        *dirty = Some(dirty.map_or(from, |d| d.min(from)));
        Ok(())
    }

    /// `fsync` of a file or a directory.
    fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        match self.inodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File {
                data,
                durable,
                dirty_from,
            }) => {
                if let Some(from) = dirty_from.take() {
                    // Only the bytes changed since the last sync are copied.
                    durable.truncate((from as usize).min(data.len()));
                    let have = durable.len();
                    durable.extend_from_slice(&data[have..]);
                }
                Ok(())
            }
            Some(Kind::Dir {
                entries,
                durable_entries,
            }) => {
                *durable_entries = entries.clone();
                Ok(())
            }
            None => Err(Errno::ENOENT),
        }
    }
}

/// The FUSE filesystem: one mutex around the state.
#[derive(Clone, Debug, Default)]
pub struct LazyFs {
    state: Arc<Mutex<State>>,
}

impl LazyFs {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> Result<R, Errno>) -> Result<R, Errno> {
        let mut s = self.state.lock();
        if s.dead {
            return Err(Errno::EIO);
        }
        f(&mut s)
    }
}

fn entry(reply: ReplyEntry, r: Result<FileAttr, Errno>) {
    match r {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(
            reply,
            self.with(|s| {
                let ino = s.lookup(parent.0, name)?;
                s.attr(ino).ok_or(Errno::ENOENT)
            }),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|s| s.attr(ino.0).ok_or(Errno::ENOENT)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.with(|s| {
            if let Some(size) = size {
                s.truncate(ino.0, size)?;
            }
            if let Some(mode) = mode
                && let Some(n) = s.inodes.get_mut(&ino.0)
            {
                n.perm = (mode & 0o7777) as u16;
            }
            s.attr(ino.0).ok_or(Errno::ENOENT)
        });
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            reply.error(Errno::EPERM);
            return;
        }
        entry(
            reply,
            self.with(|s| {
                let ino = s.create(parent.0, name, Inode::file((mode & 0o7777) as u16))?;
                s.attr(ino).ok_or(Errno::EIO)
            }),
        );
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.with(|s| {
                let ino = s.create(parent.0, name, Inode::dir((mode & 0o7777) as u16))?;
                s.attr(ino).ok_or(Errno::EIO)
            }),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            reply,
            self.with(|s| {
                let ino = s.lookup(parent.0, name)?;
                if matches!(s.inodes.get(&ino).map(|n| &n.kind), Some(Kind::Dir { .. })) {
                    return Err(Errno::EISDIR);
                }
                // The inode stays (open handles may still read it) until the next power cut
                // drops what no durable name reaches.
                s.entries_mut(parent.0)?.remove(name);
                Ok(())
            }),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            reply,
            self.with(|s| {
                let ino = s.lookup(parent.0, name)?;
                if !s.entries(ino)?.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
                s.entries_mut(parent.0)?.remove(name);
                Ok(())
            }),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.with(|s| {
                let ino = s.lookup(parent.0, name)?;
                let exists = s.entries(newparent.0)?.contains_key(newname);
                if exists && flags.contains(RenameFlags::RENAME_NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                    return Err(Errno::EINVAL);
                }
                s.entries_mut(parent.0)?.remove(name);
                s.entries_mut(newparent.0)?.insert(newname.to_owned(), ino);
                Ok(())
            }),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|s| s.attr(ino.0).map(|_| ()).ok_or(Errno::ENOENT)) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.with(|s| match s.inodes.get(&ino.0).map(|n| &n.kind) {
            Some(Kind::File { data, .. }) => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                Ok(data[start..end].to_vec())
            }
            Some(_) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        });
        match r {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|s| s.write(ino.0, offset, data)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() flushes nothing to disk: only fsync does.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.with(|s| s.sync(ino.0)));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.with(|s| {
            let mut list = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (ROOT, FileType::Directory, OsString::from("..")),
            ];
            for (name, child) in s.entries(ino.0)? {
                let kind = match s.inodes.get(child).map(|n| &n.kind) {
                    Some(Kind::Dir { .. }) => FileType::Directory,
                    _ => FileType::RegularFile,
                };
                list.push((*child, kind, name.clone()));
            }
            Ok(list)
        });
        match r {
            Ok(list) => {
                for (i, (child, kind, name)) in list.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.with(|s| s.sync(ino.0)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = MAX_FILE / 4096 * 16;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        empty(
            reply,
            self.with(|s| s.attr(ino.0).map(|_| ()).ok_or(Errno::ENOENT)),
        );
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.with(|s| {
            let ino = match s.lookup(parent.0, name) {
                Ok(_) if flags & libc::O_EXCL != 0 => return Err(Errno::EEXIST),
                Ok(ino) => {
                    if flags & libc::O_TRUNC != 0 {
                        s.truncate(ino, 0)?;
                    }
                    ino
                }
                Err(_) => s.create(parent.0, name, Inode::file((mode & 0o7777) as u16))?,
            };
            s.attr(ino).ok_or(Errno::EIO)
        });
        match r {
            Ok(a) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.with(|s| {
                if mode & libc::FALLOC_FL_KEEP_SIZE != 0 {
                    return Ok(());
                }
                if mode != 0 {
                    return Err(Errno::EOPNOTSUPP);
                }
                let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
                let len = s.attr(ino.0).ok_or(Errno::ENOENT)?.size;
                if end > len {
                    s.truncate(ino.0, end)?;
                }
                Ok(())
            }),
        );
    }
}

/// Why lazyfs cannot mount on this machine, if it cannot.
pub fn unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root {
        return Some("mounting a FUSE filesystem needs root".into());
    }
    None
}

/// Whether a test may use lazyfs here. Prints a loud SKIPPED line when it may not, and fails
/// instead when `REDCLOUD_FUSE_REQUIRED=1` (CI sets it).
pub fn usable_for(test: &str) -> bool {
    let Some(why) = unavailable() else {
        return true;
    };
    if std::env::var("REDCLOUD_FUSE_REQUIRED").is_ok_and(|v| v == "1") {
        panic!("{test}: lazyfs cannot mount: {why} (and REDCLOUD_FUSE_REQUIRED=1)");
    }
    eprintln!("SKIPPED: {test}: lazyfs cannot mount here: {why}");
    false
}

/// A mounted lazyfs. Dropping it unmounts.
pub struct Mount {
    fs: LazyFs,
    session: Option<fuser::BackgroundSession>,
    at: PathBuf,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount").field("at", &self.at).finish()
    }
}

impl Mount {
    /// Mounts an empty lazyfs at `at` (an existing empty directory).
    pub fn new(at: &Path) -> std::io::Result<Mount> {
        Self::with_state(at, State::default())
    }

    fn with_state(at: &Path, state: State) -> std::io::Result<Mount> {
        let fs = LazyFs {
            state: Arc::new(Mutex::new(state)),
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("lazyfs".into()),
            MountOption::DefaultPermissions,
        ];
        let session = fuser::spawn_mount(fs.clone(), at, &config)?;
        Ok(Mount {
            fs,
            session: Some(session),
            at: at.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.at
    }

    /// The power goes off: everything not durable is gone, and the mount answers `EIO` to
    /// every further operation. Returns what survived, for [`Mount::remount`].
    pub fn power_cut(&self) -> State {
        let mut s = self.fs.state.lock();
        s.dead = true;
        s.durable()
    }

    /// Unmounts, and mounts `survived` (from [`Mount::power_cut`]) at the same place: the
    /// reboot after the cut. Programs must have closed their files on the old mount.
    pub fn remount(mut self, survived: State) -> std::io::Result<Mount> {
        let at = self.at.clone();
        self.unmount();
        Self::with_state(&at, survived)
    }

    fn unmount(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        // fuser skips its own unmount when the device polls as hung up; detach it here (a
        // lazy unmount, so a straggling handle cannot keep it), then let fuser finish.
        let detached = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .status();
        let detached = detached.is_ok_and(|s| s.success());
        // After our detach, fuser's own unmount finds nothing mounted (EINVAL): not an error.
        if let Err(e) = session.umount_and_join()
            && !detached
        {
            eprintln!("lazyfs: unmounting {}: {e}", self.at.display());
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}
