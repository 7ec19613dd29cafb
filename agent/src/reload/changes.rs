//! What wakes the config watcher: inotify on the file the path resolves to
//! and on every directory whose entries decide what the path resolves to,
//! filtered to the entries on that path; else polling.

use std::path::Path;
use std::time::Duration;

/// How often the file's metadata is looked at where inotify cannot be set
/// up (not Linux, or the user's inotify instances are used up).
pub(super) const POLL: Duration = Duration::from_millis(200);

/// What wakes the watcher: an inotify event on the way from the path as
/// given to the file it resolves to (see [`inotify::Watch`]), else the
/// fallback poll. A wakeup only costs a look at the file's metadata.
pub(super) struct Changes {
    #[cfg(target_os = "linux")]
    inotify: Option<inotify::Watch>,
    /// Wake at least this often even without an event.
    fallback: Option<Duration>,
}

impl Changes {
    /// Watches the way to `path`; polls every [`POLL`] where inotify cannot
    /// be set up.
    pub(super) fn new(path: &Path, fallback: Option<Duration>) -> Self {
        #[cfg(target_os = "linux")]
        {
            let inotify = match inotify::Watch::new(path) {
                Ok(watch) => Some(watch),
                Err(error) => {
                    tracing::warn!(%error, file = %path.display(), "cannot watch the config file with inotify; polling it every 200 ms");
                    None
                }
            };
            Self { inotify, fallback }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = path;
            Self { fallback }
        }
    }

    /// Whether the file was created and its writer has not closed it yet
    /// (as far as inotify tells; `false` when polling). Also `true` while
    /// events the reading thread has not read yet are queued (a file just
    /// created has its `CREATE` among them): it wakes the watcher once it
    /// has read them, and the watcher looks again.
    pub(super) fn being_written(&self) -> bool {
        #[cfg(target_os = "linux")]
        if let Some(watch) = &self.inotify {
            return watch.being_written().unwrap_or(true);
        }
        false
    }

    /// Completes when the file may have changed.
    pub(super) async fn next(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(watch) = self.inotify.as_mut() {
            let changed = watch.changed();
            let outcome = match self.fallback {
                Some(period) => tokio::time::timeout(period, changed).await.ok(),
                None => Some(changed.await),
            };
            if let Some(Err(error)) = outcome {
                tracing::warn!(%error, "inotify failed; polling the config file every 200 ms");
                self.inotify = None;
            }
            // After a wakeup or a fallback look alike, the way to the file
            // may have changed (a directory or a symlink replaced).
            if let Some(watch) = self.inotify.as_mut() {
                watch.follow();
            }
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(target_os = "linux")]
mod inotify {
    use std::collections::hash_map::Entry;
    use std::collections::{HashMap, HashSet, VecDeque};
    use std::ffi::{OsStr, OsString};
    use std::mem::MaybeUninit;
    use std::os::fd::OwnedFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Component, Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    // The table of watches is locked by the config watcher and its reading
    // thread, per inotify event: never on the request path.
    #[allow(clippy::disallowed_types)]
    use std::sync::Mutex;
    use std::sync::{Arc, PoisonError};

    use rustix::event::{PollFd, PollFlags, poll};
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    use rustix::io::Errno;
    use tokio::sync::Notify;

    /// Changes to a directory's entries that can change what a path
    /// through it reads: a write closed, an entry created, moved or
    /// removed, its metadata changed; and the directory itself moved or
    /// removed. Not `MODIFY`: a file being written (truncated, then filled)
    /// would be read half-written; its `CLOSE_WRITE` follows.
    const DIR_EVENTS: WatchFlags = WatchFlags::CLOSE_WRITE
        .union(WatchFlags::CREATE)
        .union(WatchFlags::DELETE)
        .union(WatchFlags::MOVED_FROM)
        .union(WatchFlags::MOVED_TO)
        .union(WatchFlags::ATTRIB)
        .union(WatchFlags::DELETE_SELF)
        .union(WatchFlags::MOVE_SELF)
        .union(WatchFlags::ONLYDIR);

    /// Changes to the file itself, by whatever path it was written: a
    /// bind mount of the one file (Docker `-v`, a Kubernetes `subPath`) or
    /// a hard link writes it without an event in the directory watched.
    const FILE_EVENTS: WatchFlags = WatchFlags::CLOSE_WRITE
        .union(WatchFlags::ATTRIB)
        .union(WatchFlags::DELETE_SELF)
        .union(WatchFlags::MOVE_SELF);

    /// At most this many symbolic links are followed (Linux's own bound).
    const MAX_SYMLINKS: usize = 40;

    /// The entries resolving a path goes through: each symbolic link on
    /// the way (in the directory holding it) and the final entry (in its
    /// directory, whether or not it exists yet); and the file reached.
    #[derive(Debug, Default, PartialEq, Eq)]
    pub(super) struct Way {
        /// Directory → the names in it on the way.
        pub(super) dirs: HashMap<PathBuf, HashSet<OsString>>,
        /// The file the path resolves to, when it exists.
        pub(super) file: Option<PathBuf>,
    }

    /// Resolves `path` as the kernel would, noting the entries whose
    /// change would make it resolve elsewhere or read differently. A
    /// missing entry ends the way: its directory is watched for it to
    /// appear. Plain directories on the way are not watched (a directory
    /// replaced under them is seen by `MOVE_SELF`/`DELETE_SELF` of the one
    /// watched below, or by the fallback look).
    pub(super) fn way(path: &Path) -> Way {
        let mut way = Way::default();
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            match std::env::current_dir() {
                Ok(cwd) => cwd.join(path),
                Err(_) => return way,
            }
        };
        let mut pending: VecDeque<OsString> = VecDeque::new();
        push_front(&mut pending, &absolute);
        let mut at = PathBuf::from("/");
        let mut links = 0;
        while let Some(name) = pending.pop_front() {
            if name == ".." {
                at.pop(); // `at` holds no symbolic link: `..` is its parent
                continue;
            }
            let here = at.join(&name);
            let last = pending.is_empty();
            match std::fs::symlink_metadata(&here) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    way.dirs.entry(at.clone()).or_default().insert(name);
                    links += 1;
                    let Ok(target) = std::fs::read_link(&here) else {
                        return way;
                    };
                    if links > MAX_SYMLINKS {
                        return way;
                    }
                    if target.is_absolute() {
                        at = PathBuf::from("/");
                    }
                    push_front(&mut pending, &target);
                }
                Ok(_) if last => {
                    way.dirs.entry(at).or_default().insert(name);
                    way.file = Some(here);
                    return way;
                }
                Ok(_) => at = here,
                Err(_) => {
                    way.dirs.entry(at).or_default().insert(name);
                    return way;
                }
            }
        }
        way
    }

    /// Puts `path`'s components in front of `pending`, in order.
    fn push_front(pending: &mut VecDeque<OsString>, path: &Path) {
        for component in path.components().rev() {
            match component {
                Component::Normal(name) => pending.push_front(name.to_owned()),
                Component::ParentDir => pending.push_front(OsString::from("..")),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    }

    /// What one watch descriptor watches.
    #[derive(Debug)]
    enum Watched {
        /// The file itself: any event counts.
        File,
        /// A directory: events on these names count (and the directory's
        /// own move or removal).
        Dir {
            path: PathBuf,
            names: HashSet<OsString>,
        },
    }

    /// An inotify instance watching the way to a path (see [`way`]). A
    /// thread of its own sleeps in a poll of the instance and
    /// wakes the watcher per batch holding an event that counts; it ends
    /// when the watch is dropped.
    pub(in crate::reload) struct Watch {
        fd: Arc<OwnedFd>,
        path: PathBuf,
        /// The way last watched.
        way: Way,
        shared: Arc<Shared>,
    }

    /// What the reading thread and the watcher share.
    #[allow(clippy::disallowed_types)]
    #[derive(Default)]
    struct Shared {
        /// Woken per batch of events that count.
        events: Notify,
        /// What each watch descriptor watches, as the reader filters by,
        /// and which files on the way are being written.
        table: Mutex<Table>,
        /// The read failed: inotify cannot be used any more.
        failed: AtomicBool,
        /// The watch was dropped: the thread ends at its next event.
        stopped: AtomicBool,
        /// The watcher found events queued that the reader had not read:
        /// the reader wakes it after its next batch, whatever that holds.
        catch_up: AtomicBool,
    }

    /// The reader's view of the watches.
    #[derive(Default)]
    struct Table {
        /// What each watch descriptor watches.
        watched: HashMap<i32, Watched>,
        /// Files on the way created and not yet closed by their writer
        /// (`CREATE`, no `CLOSE_WRITE` yet): read now, they would load half
        /// a config.
        being_written: HashSet<PathBuf>,
    }

    impl Watch {
        pub(in crate::reload) fn new(path: &Path) -> std::io::Result<Self> {
            let fd = Arc::new(inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?);
            let shared = Arc::new(Shared::default());
            let mut watch = Self {
                fd,
                path: path.to_path_buf(),
                way: Way::default(),
                shared,
            };
            watch.follow();
            if watch.shared.table().watched.is_empty() {
                return Err(std::io::Error::other(
                    "no directory on the way to the file can be watched",
                ));
            }
            let (reader_fd, reader) = (watch.fd.clone(), watch.shared.clone());
            std::thread::Builder::new()
                .name("config-watch".into())
                .spawn(move || read_events(&reader_fd, &reader))?;
            Ok(watch)
        }

        /// Watches the way the path now resolves by (a symbolic link or a
        /// directory may have been replaced since the last look), and
        /// stops watching what is no longer on it.
        pub(in crate::reload) fn follow(&mut self) {
            let way = way(&self.path);
            // Held while watches are added, so the reader waits to judge
            // the new watches' first events until it knows them.
            let mut table = self.shared.table();
            let mut watched = HashMap::new();
            for (dir, names) in &way.dirs {
                let Ok(wd) = inotify::add_watch(&*self.fd, dir, DIR_EVENTS) else {
                    tracing::debug!(dir = %dir.display(), "cannot watch a directory on the way to the config file");
                    continue;
                };
                match watched.entry(wd) {
                    Entry::Vacant(entry) => {
                        entry.insert(Watched::Dir {
                            path: dir.clone(),
                            names: names.clone(),
                        });
                    }
                    // Two paths to one directory: both names count.
                    Entry::Occupied(mut entry) => {
                        if let Watched::Dir { names: known, .. } = entry.get_mut() {
                            known.extend(names.iter().cloned());
                        }
                    }
                }
            }
            if let Some(file) = &way.file
                && let Ok(wd) = inotify::add_watch(&*self.fd, file, FILE_EVENTS)
            {
                watched.insert(wd, Watched::File);
            }
            for old in table.watched.keys() {
                if !watched.contains_key(old) {
                    // Gone already when its file or directory was removed.
                    let _ = inotify::remove_watch(&*self.fd, *old);
                }
            }
            // A file being written is known only while the directory it was
            // created in is the one watched (a directory replaced under the
            // same name holds other files).
            let kept: HashSet<&Path> = watched
                .iter()
                .filter(|(wd, _)| table.watched.contains_key(wd))
                .filter_map(|(_, w)| match w {
                    Watched::Dir { path, .. } => Some(path.as_path()),
                    Watched::File => None,
                })
                .collect();
            let being_written = std::mem::take(&mut table.being_written);
            table.being_written = being_written
                .into_iter()
                .filter(|file| file.parent().is_some_and(|dir| kept.contains(dir)))
                .collect();
            table.watched = watched;
            self.way = way;
        }

        /// Completes once events that count have arrived since the last
        /// call; an error means inotify cannot be used any more.
        pub(in crate::reload) async fn changed(&mut self) -> std::io::Result<()> {
            self.shared.events.notified().await;
            if self.shared.failed.load(Ordering::Acquire) {
                return Err(std::io::Error::other("reading inotify events failed"));
            }
            Ok(())
        }
    }

    impl Watch {
        /// Whether the file the path resolves to was created and its
        /// writer has not closed it yet, as of every event queued so far;
        /// `None` while some are queued that the reader has not read (then
        /// it wakes the watcher once it has). A file replaced by `rm` and
        /// `cat >` can be there before the reader has read its `CREATE`:
        /// judged without it, it would be read half-written.
        pub(in crate::reload) fn being_written(&self) -> Option<bool> {
            // The reader reads and judges each batch with the table held:
            // held here, every event is either still queued or judged.
            let table = self.shared.table();
            if rustix::io::ioctl_fionread(&*self.fd).unwrap_or(0) > 0 {
                self.shared.catch_up.store(true, Ordering::Release);
                return None;
            }
            Some(
                self.way
                    .file
                    .as_ref()
                    .is_some_and(|file| table.being_written.contains(file)),
            )
        }
    }

    impl Shared {
        fn table(&self) -> std::sync::MutexGuard<'_, Table> {
            self.table.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    impl Drop for Watch {
        /// Removing the watches queues `IN_IGNORED` events, which end the
        /// reading thread's blocking read.
        fn drop(&mut self) {
            self.shared.stopped.store(true, Ordering::Release);
            for wd in self.shared.table().watched.keys() {
                let _ = inotify::remove_watch(&*self.fd, *wd);
            }
        }
    }

    /// Whether an event may change what the path reads: any event on the
    /// file; a directory's own move, removal or change of permissions; an
    /// entry on the way written and closed, moved, removed or changed —
    /// but not a regular file's creation: it is being written until its
    /// writer closes it (noted in `being_written`; a hard link, created
    /// whole, counts at once). An overflowed queue may have lost anything.
    fn counts(table: &mut Table, event: &inotify::Event<'_>) -> bool {
        let flags = event.events();
        if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            return true;
        }
        match table.watched.get(&event.wd()) {
            None => false, // a watch removed since
            Some(Watched::File) => true,
            Some(Watched::Dir { path, names }) => {
                if flags
                    .intersects(ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF | ReadFlags::IGNORED)
                {
                    return true;
                }
                let Some(name) = event.file_name() else {
                    // The directory's own metadata: a `chmod` that lets
                    // the agent read it again.
                    return flags.contains(ReadFlags::ATTRIB);
                };
                let name = OsStr::from_bytes(name.to_bytes());
                if !names.contains(name) {
                    return false;
                }
                let entry = path.join(name);
                if flags.contains(ReadFlags::CREATE) {
                    let being_written = std::fs::symlink_metadata(&entry)
                        .is_ok_and(|meta| meta.file_type().is_file() && meta.nlink() == 1);
                    if being_written {
                        table.being_written.insert(entry);
                        return false;
                    }
                    return true;
                }
                if flags.intersects(
                    ReadFlags::CLOSE_WRITE
                        | ReadFlags::DELETE
                        | ReadFlags::MOVED_FROM
                        | ReadFlags::MOVED_TO,
                ) {
                    table.being_written.remove(&entry);
                    return true;
                }
                !table.being_written.contains(&entry)
            }
        }
    }

    /// The reading thread: sleeps until events arrive, reads and judges
    /// all that are queued with the table held (so the watcher, holding
    /// it, sees each event queued or judged, never in between), and wakes
    /// the watcher per batch that holds an event that counts, or that it
    /// asked to be woken after.
    fn read_events(fd: &OwnedFd, shared: &Shared) {
        // Room for many events with long names (each is 16 bytes and its name).
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut events = inotify::Reader::new(fd, &mut buf);
        let fail = |error: Errno| {
            tracing::debug!(%error, "reading inotify events failed");
            shared.failed.store(true, Ordering::Release);
            shared.events.notify_one();
        };
        loop {
            let mut ready = [PollFd::new(fd, PollFlags::IN)];
            match poll(&mut ready, None) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(error) => return fail(error),
            }
            let mut batch_counts = false;
            let mut table = shared.table();
            loop {
                match events.next() {
                    Ok(_) if shared.stopped.load(Ordering::Acquire) => return,
                    Ok(event) => batch_counts |= counts(&mut table, &event),
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => {}
                    Err(error) => return fail(error),
                }
            }
            drop(table);
            if batch_counts | shared.catch_up.swap(false, Ordering::AcqRel) {
                shared.events.notify_one();
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::config::file_stamp::FileStamp;

    /// Waits for the watcher to wake from inotify alone (no fallback poll);
    /// fails instead of hanging when the event never comes.
    async fn woken(changes: &mut Changes) {
        tokio::time::timeout(Duration::from_secs(30), changes.next())
            .await
            .expect("inotify never woke the watcher");
    }

    /// Asserts that nothing wakes the watcher for a while. An event that
    /// counts arrives within microseconds, so half a second only ever
    /// errs towards passing late, never towards a false failure.
    async fn not_woken(changes: &mut Changes) {
        let woke = tokio::time::timeout(Duration::from_millis(500), changes.next()).await;
        assert!(
            woke.is_err(),
            "the watcher woke for an event that does not count"
        );
    }

    #[tokio::test]
    async fn a_write_to_the_file_wakes_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        fs::write(&path, "a").unwrap();
        let mut changes = Changes::new(&path, None);
        assert!(changes.inotify.is_some(), "inotify is available here");
        fs::write(&path, "b").unwrap();
        woken(&mut changes).await;
    }

    /// The file written by another path to it: the target of a symbolic
    /// link, or a hard link (as through a bind mount of the one file). The
    /// file itself is watched, and the directory holding it.
    #[tokio::test]
    async fn a_write_by_another_path_to_the_file_wakes_the_watcher() {
        let link: [fn(&Path, &Path) -> std::io::Result<()>; 2] = [
            |file, path| symlink(file, path),
            |file, path| fs::hard_link(file, path),
        ];
        for link in link {
            let (host, mounted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let original = host.path().join("agent.yaml");
            fs::write(&original, "a").unwrap();
            let path = mounted.path().join("agent.yaml");
            link(&original, &path).unwrap();
            let mut changes = Changes::new(&path, None);
            fs::write(&original, "b").unwrap();
            woken(&mut changes).await;
        }
    }

    /// A Kubernetes ConfigMap volume: `agent.yaml → ..data/agent.yaml`,
    /// `..data → ..<timestamp>`, updated by swapping `..data` by rename.
    #[tokio::test]
    async fn a_configmap_swap_wakes_the_watcher_and_changes_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let version = |name: &str, text: &str| {
            fs::create_dir(dir.join(name)).unwrap();
            fs::write(dir.join(name).join("agent.yaml"), text).unwrap();
        };
        version("..2026_a", "first");
        symlink("..2026_a", dir.join("..data")).unwrap();
        let path = dir.join("agent.yaml");
        symlink("..data/agent.yaml", &path).unwrap();
        let before = FileStamp::of(&fs::metadata(&path).unwrap());
        let mut changes = Changes::new(&path, None);

        version("..2026_b", "second, longer");
        symlink("..2026_b", dir.join("..data_tmp")).unwrap();
        fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        woken(&mut changes).await;
        let after = FileStamp::of(&fs::metadata(&path).unwrap());
        assert_ne!(before, after, "the watcher sees a different file");
        assert_eq!(fs::read_to_string(&path).unwrap(), "second, longer");
    }

    /// The file's directory replaced by another (a deploy renaming a new
    /// directory into place): the watcher wakes, then follows the new
    /// directory, so writes there wake it too.
    #[tokio::test]
    async fn a_replaced_directory_is_followed() {
        let root = tempfile::tempdir().unwrap();
        let conf = root.path().join("conf");
        fs::create_dir(&conf).unwrap();
        fs::write(conf.join("agent.yaml"), "a").unwrap();
        let path = conf.join("agent.yaml");
        let mut changes = Changes::new(&path, None);

        let next = root.path().join("conf.new");
        fs::create_dir(&next).unwrap();
        fs::write(next.join("agent.yaml"), "b").unwrap();
        fs::rename(&conf, root.path().join("conf.old")).unwrap();
        fs::rename(&next, &conf).unwrap();
        woken(&mut changes).await;
        fs::write(&path, "c").unwrap();
        woken(&mut changes).await;
    }

    /// A symbolic link to the file's directory swapped (`current →
    /// releases/r1` becomes `→ releases/r2`): the link's own directory is
    /// watched, and the new target's after the swap.
    #[tokio::test]
    async fn a_swapped_directory_link_is_followed() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        for release in ["r1", "r2"] {
            fs::create_dir_all(root.join("releases").join(release)).unwrap();
            fs::write(
                root.join("releases").join(release).join("agent.yaml"),
                release,
            )
            .unwrap();
        }
        symlink("releases/r1", root.join("current")).unwrap();
        let path = root.join("current").join("agent.yaml");
        let mut changes = Changes::new(&path, None);

        symlink("releases/r2", root.join("current.tmp")).unwrap();
        fs::rename(root.join("current.tmp"), root.join("current")).unwrap();
        woken(&mut changes).await;
        fs::write(root.join("releases/r2/agent.yaml"), "r2, edited").unwrap();
        woken(&mut changes).await;
    }

    /// Another file in the directory changing is no reason to look: a
    /// look while the config is being written would load half of it.
    #[tokio::test]
    async fn other_files_in_the_directory_do_not_wake_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        fs::write(&path, "a").unwrap();
        let mut changes = Changes::new(&path, None);
        fs::write(dir.path().join("agent.yaml.swp"), "x").unwrap();
        fs::write(dir.path().join("other.txt"), "y").unwrap();
        not_woken(&mut changes).await;
    }

    /// A config file created anew (`cat > agent.yaml`, an editor's
    /// rename-then-write save) is read once written, not while empty.
    #[tokio::test]
    async fn a_file_created_empty_wakes_the_watcher_once_written() {
        use std::io::Write;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        let mut changes = Changes::new(&path, None);
        let mut file = fs::File::create(&path).unwrap();
        not_woken(&mut changes).await;
        file.write_all(b"apiVersion: tracemesh.io/v1\n").unwrap();
        drop(file);
        woken(&mut changes).await;
    }

    /// The directory's permissions changed (`chmod` lets the agent read
    /// it again): a look is due.
    #[tokio::test]
    async fn a_change_of_the_directorys_permissions_wakes_the_watcher() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        fs::write(&path, "a").unwrap();
        let mut changes = Changes::new(&path, None);
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o750)).unwrap();
        woken(&mut changes).await;
    }

    /// A file replaced by `rm` and `cat >` is there before the reading
    /// thread has read its `CREATE`. Asked at once, the watch never calls
    /// it closed: it says it does not know yet (events are queued) or that
    /// it is being written. (The watcher read such a file half-written
    /// when the reading thread lagged.)
    #[tokio::test]
    async fn a_file_just_created_is_not_judged_before_its_create_is_read() {
        use std::io::Write;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        fs::write(&path, "a").unwrap();
        let mut changes = Changes::new(&path, None);
        for round in 0..100 {
            fs::remove_file(&path).unwrap();
            let mut file = fs::File::create(&path).unwrap();
            file.write_all(b"half").unwrap();
            let watch = changes.inotify.as_ref().expect("inotify is available here");
            assert_ne!(
                watch.being_written(),
                Some(false),
                "round {round}: judged closed before its CREATE was read"
            );
            drop(file);
            woken(&mut changes).await;
        }
    }

    #[test]
    fn the_way_names_each_link_and_the_file() {
        let root = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(root.path()).unwrap();
        fs::create_dir_all(root.join("..2026_a")).unwrap();
        fs::write(root.join("..2026_a/agent.yaml"), "a").unwrap();
        symlink("..2026_a", root.join("..data")).unwrap();
        symlink("..data/agent.yaml", root.join("agent.yaml")).unwrap();
        let way = inotify::way(&root.join("agent.yaml"));
        let names = |dir: &Path| {
            let mut names: Vec<_> = way.dirs[dir].iter().cloned().collect();
            names.sort();
            names
        };
        assert_eq!(names(&root), ["..data", "agent.yaml"]);
        assert_eq!(names(&root.join("..2026_a")), ["agent.yaml"]);
        assert_eq!(way.file, Some(root.join("..2026_a/agent.yaml")));

        // A missing file: its directory is watched for it to appear.
        let missing = inotify::way(&root.join("gone/agent.yaml"));
        assert_eq!(missing.file, None);
        assert!(missing.dirs[&root].contains(std::ffi::OsStr::new("gone")));
    }
}
