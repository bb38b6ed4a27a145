//! Attacks on snapshots by local users and by the volume's own contents,
//! performed for real (as root, with `nobody` as the local user): setuid
//! copies, wide directory modes, symlinks swapped in during a restore,
//! fifos and sockets left by a new version, sparse files and a full disk.

use std::fs;
use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ccfleet_proto::Domain;
use expect_test::expect;

use super::store::{private_dir_step, PrivateDirStep};
use super::*;
use crate::process::{run, CommandSpec};

const NOBODY: u32 = 65534;

fn mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn domain() -> Domain {
    "blog.example.org".parse().unwrap()
}

/// A scratch directory that `nobody` may traverse (a temporary directory is
/// 0700), so that only the agent's own modes stand between `nobody` and the
/// snapshots.
fn open_scratch() -> tempfile::TempDir {
    let scratch = tempfile::tempdir().unwrap();
    mode(scratch.path(), 0o755);
    scratch
}

fn volume(base: &Path, name: &str) -> VolumeSource {
    let mountpoint = base.join("volumes").join(name).join("_data");
    fs::create_dir_all(&mountpoint).unwrap();
    mode(&base.join("volumes"), 0o755);
    mode(mountpoint.parent().unwrap(), 0o755);
    mode(&mountpoint, 0o755);
    VolumeSource {
        name: name.to_owned(),
        mountpoint,
    }
}

/// Runs `program args` as `nobody` (uid and gid 65534, no supplementary
/// groups) through util-linux's `setpriv`; returns the exit code and output.
/// A shell running as nobody starts the program: setpriv's own `execvp`
/// reached a program in a 0700 directory of root's here, so the lookup must
/// happen in a process that is nobody already.
async fn as_nobody(program: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut spec = CommandSpec::new("setpriv", "/", Duration::from_secs(30))
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg("--")
        .arg("/bin/sh")
        .arg("-c")
        .arg(r#"exec "$0" "$@""#)
        .arg(program);
    for arg in args {
        spec = spec.arg(*arg);
    }
    match run(&spec).await {
        Ok(output) => (output.exit_code, output.stdout.trim().to_owned()),
        Err(crate::process::ProcessError::Failed { output }) => (output.exit_code, output.combined_tail()),
        Err(error) => panic!("cannot run setpriv (util-linux): {error}"),
    }
}

#[tokio::test]
async fn a_local_user_can_neither_reach_a_snapshot_nor_run_anything_from_it_setuid() {
    let scratch = open_scratch();
    let base = scratch.path();
    let data = volume(base, "blog_example_org_data");
    // A root-owned setuid program in the volume: `id -u` prints the
    // effective uid, so it says whether it ran as root.
    let program = data.mountpoint.join("id-setuid");
    fs::copy("/usr/bin/id", &program).unwrap();
    chown(&program, Some(0), Some(0)).unwrap();
    mode(&program, 0o4755);
    // The control: from the live volume it does run as root for nobody.
    assert_eq!(as_nobody(&program, &["-u"]).await, (Some(0), "0".to_owned()));

    let state = base.join("state");
    assert_eq!(secure_state_dir(&state).unwrap(), Vec::<PathBuf>::new());
    let store = SnapshotStore::new(state.join("snapshots"));
    let volumes = [data.clone()];
    let snapshot = store.take(&domain(), "op-1", &volumes).unwrap();
    store.verify(&snapshot, &volumes).unwrap();

    let op_dir = store.dir_of(&domain(), "op-1");
    let private = [
        state.clone(),
        state.join("snapshots"),
        state.join("snapshots/blog.example.org"),
        op_dir.clone(),
        op_dir.join("volumes"),
    ];
    for dir in &private {
        assert_eq!(
            (mode_of(dir), fs::metadata(dir).unwrap().uid()),
            (0o700, 0),
            "{}",
            dir.display()
        );
    }
    let copy = op_dir.join("volumes/blog_example_org_data/id-setuid");
    assert_eq!(mode_of(&copy), 0o755, "the copy has no setuid bit");
    let recorded = &snapshot.manifest.volumes[0].entries;
    let entry = recorded.iter().find(|entry| entry.path == "id-setuid").unwrap();
    assert_eq!(entry.mode, 0o4755, "the manifest keeps the true mode");

    // nobody cannot reach the snapshot at all.
    let test = Path::new("/usr/bin/test");
    assert_eq!(as_nobody(test, &["-d", state.to_str().unwrap()]).await.0, Some(0));
    for path in [&state.join("snapshots/blog.example.org"), &op_dir, &copy] {
        assert_eq!(
            as_nobody(test, &["-e", path.to_str().unwrap()]).await.0,
            Some(1),
            "{}",
            path.display()
        );
    }
    let (code, output) = as_nobody(&copy, &["-u"]).await;
    assert_ne!(code, Some(0), "{output}");
    assert!(output.contains("Permission denied"), "{output}");

    // Were the directories opened (a careless chmod, a restored backup),
    // the copy would still run as nobody, not as root.
    for dir in &private {
        mode(dir, 0o755);
    }
    assert_eq!(as_nobody(&copy, &["-u"]).await, (Some(0), NOBODY.to_string()));
    // And the next start narrows them again (what is inside a snapshot's
    // directory is then out of reach again).
    assert_eq!(secure_state_dir(&state).unwrap(), private[..4].to_vec());
    for dir in &private[..4] {
        assert_eq!(mode_of(dir), 0o700, "{}", dir.display());
    }

    // A restore gives the live volume its true mode back.
    mode(&program, 0o755);
    store.restore(&snapshot, &volumes).unwrap();
    assert_eq!(mode_of(&program), 0o4755);
}

#[test]
fn the_state_directory_of_another_owner_is_refused_with_the_reason() {
    let scratch = tempfile::tempdir().unwrap();
    let state = scratch.path().join("state");
    secure_state_dir(&state).unwrap();
    let domain_dir = state.join("snapshots/blog.example.org");
    fs::create_dir_all(domain_dir.join("op-1")).unwrap();
    chown(domain_dir.join("op-1"), Some(1000), Some(1000)).unwrap();
    let error = secure_state_dir(&state).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{} is owned by uid 1000, not by the agent's uid 0; refusing to use it (another user could \
             change what the agent restores as root)",
            domain_dir.join("op-1").display()
        )
    );
    // Taking a snapshot checks the same way.
    let store = SnapshotStore::new(state.join("snapshots"));
    let data = volume(scratch.path(), "blog_example_org_data");
    let error = store.take(&domain(), "op-1", &[data]).unwrap_err();
    assert!(matches!(error, SnapshotError::Insecure { .. }), "{error:?}");

    fs::remove_dir(domain_dir.join("op-1")).unwrap();
    symlink("/tmp", domain_dir.join("op-2")).unwrap();
    let error = secure_state_dir(&state).unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("op-2 is a symlink, not a directory; refusing to use it"),
        "{error}"
    );
}

#[test]
fn private_directory_rule_as_a_table() {
    let check = |is_dir, is_symlink, owner, mode| format!("{:?}", private_dir_step(is_dir, is_symlink, owner, mode, 0));
    let table = [
        check(true, false, 0, 0o700),
        check(true, false, 0, 0o500),
        check(true, false, 0, 0o40700),
        check(true, false, 0, 0o755),
        check(true, false, 0, 0o710),
        check(true, false, 0, 0o1700),
        check(true, false, 0, 0o2700),
        check(true, false, 1000, 0o700),
        check(false, true, 0, 0o777),
        check(false, false, 0, 0o600),
    ]
    .join("\n");
    expect![[r#"
        Keep
        Keep
        Keep
        Narrow { from: 493 }
        Narrow { from: 456 }
        Narrow { from: 960 }
        Narrow { from: 1472 }
        Refuse("is owned by uid 1000, not by the agent's uid 0; refusing to use it (another user could change what the agent restores as root)")
        Refuse("is a symlink, not a directory; refusing to use it")
        Refuse("is not a directory")"#]]
    .assert_eq(&table);
    assert_eq!(
        private_dir_step(true, false, 0, 0o2700, 0),
        PrivateDirStep::Narrow { from: 0o2700 }
    );
}

/// Everything about a tree that an escape could change: each entry's kind,
/// mode, owner and contents (the root's too).
fn fingerprint(root: &Path) -> Vec<ManifestEntry> {
    walk(root).unwrap()
}

#[test]
fn a_symlink_swapped_in_during_restore_never_leads_outside_the_volume() {
    const RUNS: usize = 200;
    let scratch = tempfile::tempdir().unwrap();
    let base = scratch.path();
    let data = volume(base, "blog_example_org_data");
    let live = data.mountpoint.clone();
    // What the restore will have to fix inside "d": owners, modes, contents,
    // an extra file to remove, a missing one to create.
    fs::create_dir_all(live.join("d/sub")).unwrap();
    fs::write(live.join("d/file"), b"from the snapshot").unwrap();
    fs::write(live.join("d/sub/deeper"), b"deeper").unwrap();
    mode(&live.join("d"), 0o755);
    mode(&live.join("d/sub"), 0o750);

    // The sentinel: a directory outside the volume with the same names.
    let sentinel = base.join("sentinel");
    fs::create_dir_all(sentinel.join("sub")).unwrap();
    fs::write(sentinel.join("file"), b"sentinel").unwrap();
    fs::write(sentinel.join("sub/deeper"), b"sentinel deeper").unwrap();
    for path in ["", "sub", "file", "sub/deeper"] {
        chown(sentinel.join(path), Some(4321), Some(4321)).unwrap();
    }
    mode(&sentinel, 0o711);
    mode(&sentinel.join("file"), 0o600);
    let sentinel_before = fingerprint(&sentinel);

    let store = SnapshotStore::new(base.join("state/snapshots"));
    let volumes = [data.clone()];
    let snapshot = store.take(&domain(), "op-1", &volumes).unwrap();
    store.verify(&snapshot, &volumes).unwrap();

    // Restores during which the racer swapped at least once.
    let (mut restored, mut refused, mut raced) = (0, 0, 0);
    let swaps = Arc::new(AtomicUsize::new(0));
    for run in 0..RUNS {
        // Start from the snapshot, then change what the new version would.
        store.restore(&snapshot, &volumes).unwrap();
        fs::write(live.join("d/file"), format!("new version {run}")).unwrap();
        fs::write(live.join("d/extra"), b"left by the new version").unwrap();
        fs::remove_file(live.join("d/sub/deeper")).unwrap();
        chown(live.join("d"), Some(1000), Some(1000)).unwrap();
        chown(live.join("d/sub"), Some(1000), Some(1000)).unwrap();
        mode(&live.join("d/sub"), 0o777);

        // The racer swaps "d" for a symlink to the sentinel and back, as
        // fast as it can, for as long as the restore runs.
        let stop = Arc::new(AtomicBool::new(false));
        let racer = {
            let (live, sentinel, stop, swaps) = (live.clone(), sentinel.clone(), stop.clone(), swaps.clone());
            std::thread::spawn(move || {
                let (d, away) = (live.join("d"), live.join("d-away"));
                while !stop.load(Ordering::Relaxed) {
                    if fs::rename(&d, &away).is_ok() {
                        if symlink(&sentinel, &d).is_ok() {
                            swaps.fetch_add(1, Ordering::Relaxed);
                            std::thread::yield_now();
                            let _ = fs::remove_file(&d);
                        }
                        let _ = fs::rename(&away, &d);
                    }
                }
            })
        };
        // The restore starts once the racer is swapping (on a loaded machine
        // a new thread may not run before a short restore is over).
        let before = swaps.load(Ordering::Relaxed);
        while swaps.load(Ordering::Relaxed) == before {
            std::thread::yield_now();
        }
        let at_start = swaps.load(Ordering::Relaxed);
        match store.restore(&snapshot, &volumes) {
            Ok(()) => restored += 1,
            Err(_) => refused += 1,
        }
        if swaps.load(Ordering::Relaxed) > at_start {
            raced += 1;
        }
        stop.store(true, Ordering::Relaxed);
        racer.join().unwrap();
        assert_eq!(
            fingerprint(&sentinel),
            sentinel_before,
            "run {run}: the sentinel changed"
        );
        // Tidy up what the racer may have left, for the next run.
        if fs::symlink_metadata(live.join("d")).is_ok_and(|metadata| metadata.file_type().is_symlink()) {
            fs::remove_file(live.join("d")).unwrap();
        }
        if fs::symlink_metadata(live.join("d-away")).is_ok() && fs::symlink_metadata(live.join("d")).is_err() {
            fs::rename(live.join("d-away"), live.join("d")).unwrap();
        }
    }
    let swaps = swaps.load(Ordering::Relaxed);
    eprintln!("{RUNS} restores under the racer: {restored} completed, {refused} refused; {raced} raced; {swaps} swaps");
    // 177-200 of 200 raced on this machine, quiet or under `stress-ng --cpu 2`.
    assert!(
        raced >= RUNS / 10,
        "the racer swapped during only {raced} of {RUNS} restores ({swaps} swaps): it did not race"
    );
    // Without the racer, the restore completes and the volume matches.
    store.restore(&snapshot, &volumes).unwrap();
    assert_eq!(walk(&live).unwrap(), snapshot.manifest.volumes[0].entries);
}

#[test]
fn fifos_are_recorded_and_recreated_and_sockets_skipped_and_removed() {
    let scratch = tempfile::tempdir().unwrap();
    let data = volume(scratch.path(), "blog_example_org_data");
    let live = &data.mountpoint;
    nix::unistd::mkfifo(
        &live.join("control.fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    mode(&live.join("control.fifo"), 0o620);
    chown(live.join("control.fifo"), Some(33), Some(33)).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(live.join("app.sock")).unwrap();

    let store = SnapshotStore::new(scratch.path().join("state/snapshots"));
    let volumes = [data.clone()];
    let snapshot = store.take(&domain(), "op-1", &volumes).unwrap();
    store.verify(&snapshot, &volumes).unwrap();
    let recorded = &snapshot.manifest.volumes[0];
    let fifo = recorded
        .entries
        .iter()
        .find(|entry| entry.path == "control.fifo")
        .unwrap();
    assert_eq!((fifo.kind, fifo.mode, fifo.uid), (EntryKind::Fifo, 0o620, 33));
    assert_eq!(
        recorded.skipped,
        [SkippedEntry {
            path: "app.sock".to_owned(),
            what: "socket".to_owned()
        }]
    );
    let on_disk = fs::read_to_string(snapshot.dir.join(MANIFEST_FILE)).unwrap();
    assert!(on_disk.contains(r#""skipped": ["#), "{on_disk}");

    // What a new version leaves: another socket, another fifo, the fifo gone.
    fs::remove_file(live.join("control.fifo")).unwrap();
    let _other = std::os::unix::net::UnixListener::bind(live.join("new.sock")).unwrap();
    nix::unistd::mkfifo(&live.join("new.fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    store.restore(&snapshot, &volumes).unwrap();
    let (entries, skipped) = walk_volume(live).unwrap();
    assert_eq!(entries, recorded.entries);
    assert_eq!(skipped, vec![], "every socket is removed");
    assert!(fs::symlink_metadata(live.join("new.fifo")).is_err());
}

#[test]
fn a_format_1_manifest_still_reads() {
    let scratch = tempfile::tempdir().unwrap();
    let store = SnapshotStore::new(scratch.path().join("snapshots"));
    let dir = store.dir_of(&domain(), "op-old");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join(MANIFEST_FILE),
        r#"{"format":1,"domain":"blog.example.org","operation_id":"op-old","created_at_unix_ms":5,
            "volumes":[{"volume":"v","entries":[{"path":"","kind":"dir","mode":493,"uid":0,"gid":0,"size":0}]}],
            "total_bytes":0}"#,
    )
    .unwrap();
    let snapshot = store.open(&domain(), "op-old").unwrap().unwrap();
    assert_eq!(snapshot.manifest.format, 1);
    assert_eq!(snapshot.manifest.volumes[0].skipped, vec![]);
}

/// The blocks a file occupies, in bytes.
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn sparse_files_stay_sparse_in_the_snapshot_and_after_a_restore() {
    use std::os::unix::fs::FileExt;
    const MIB: u64 = 1024 * 1024;
    let scratch = tempfile::tempdir().unwrap();
    let data = volume(scratch.path(), "blog_example_org_data");
    let sparse = data.mountpoint.join("disk.img");
    let file = fs::File::create(&sparse).unwrap();
    // 24 MiB apparent, 128 KiB of data at the start and in the middle.
    file.write_all_at(&[7_u8; 64 * 1024], 0).unwrap();
    file.write_all_at(&[9_u8; 64 * 1024], 12 * MIB).unwrap();
    file.set_len(24 * MIB).unwrap();
    drop(file);
    assert!(allocated(&sparse) < MIB, "the file system makes holes");

    let store = SnapshotStore::new(scratch.path().join("state/snapshots"));
    let volumes = [data.clone()];
    let snapshot = store.take(&domain(), "op-1", &volumes).unwrap();
    store.verify(&snapshot, &volumes).unwrap();
    let copy = snapshot.dir.join("volumes/blog_example_org_data/disk.img");
    assert_eq!(fs::metadata(&copy).unwrap().len(), 24 * MIB);
    assert!(allocated(&copy) < MIB, "the copy occupies {} bytes", allocated(&copy));
    let entry = &snapshot.manifest.volumes[0]
        .entries
        .iter()
        .find(|entry| entry.path == "disk.img")
        .unwrap();
    assert_eq!(entry.size, 24 * MIB);

    // The new version filled the holes; the restore brings them back.
    fs::write(&sparse, vec![1_u8; 24 * MIB as usize]).unwrap();
    store.restore(&snapshot, &volumes).unwrap();
    assert!(
        allocated(&sparse) < MIB,
        "the restored file occupies {} bytes",
        allocated(&sparse)
    );
    let restored = fs::read(&sparse).unwrap();
    assert_eq!(
        (restored[0], restored[MIB as usize], restored[12 * MIB as usize]),
        (7, 0, 9)
    );
}

/// A tmpfs mounted for the life of the value (the test runs as root).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let data = std::ffi::CString::new(options).unwrap();
        rustix::mount::mount(
            "tmpfs",
            dir.path(),
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .unwrap_or_else(|errno| panic!("cannot mount a tmpfs ({options}) as root: {errno}"));
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(self.dir.path(), rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn a_disk_that_fills_up_while_copying_is_no_room_and_leaves_nothing_behind() {
    // Few inodes: the free-space check (bytes) passes, and the copy runs out
    // of room half way, as when something else fills the disk meanwhile.
    let disk = Tmpfs::mount("size=64m,nr_inodes=40");
    let scratch = tempfile::tempdir().unwrap();
    let data = volume(scratch.path(), "blog_example_org_data");
    for index in 0..100 {
        fs::write(data.mountpoint.join(format!("file-{index:03}")), b"x").unwrap();
    }
    let store = SnapshotStore::new(disk.path().join("snapshots"));
    let error = store.take(&domain(), "op-1", &[data]).unwrap_err();
    assert!(error.is_no_room(), "{error:?}");
    let message = ccfleet_proto::error_chain(&error);
    assert!(message.starts_with("no room for the snapshot: "), "{message}");
    assert!(message.contains("No space left on device"), "{message}");
    assert!(
        !store.dir_of(&domain(), "op-1").exists(),
        "the partial snapshot is removed"
    );
    assert_eq!(store.list(&domain()).unwrap(), vec![]);

    // A file larger than the disk: ENOSPC on data, same outcome.
    let small = Tmpfs::mount("size=2m");
    let big = volume(scratch.path(), "blog_example_org_big");
    fs::write(big.mountpoint.join("big"), vec![5_u8; 4 * 1024 * 1024]).unwrap();
    let store = SnapshotStore::new(small.path().join("snapshots"));
    let error = store.take(&domain(), "op-2", &[big]).unwrap_err();
    // Refused before copying: 4 MiB of blocks plus the margin do not fit.
    assert!(matches!(error, SnapshotError::NoRoom { .. }), "{error:?}");
    assert!(error.is_no_room());
    // Copied regardless of the check, the data itself hits ENOSPC.
    let error = copy::copy_tree(
        &scratch.path().join("volumes/blog_example_org_big/_data"),
        &small.path().join("copy"),
    )
    .unwrap_err();
    assert!(error.is_out_of_space(), "{error:?}");
}

#[test]
fn the_free_space_check_counts_allocated_blocks_not_apparent_sizes() {
    const MIB: u64 = 1024 * 1024;
    // 24 MiB free; the volume's file is 48 MiB long but holds 64 KiB.
    let disk = Tmpfs::mount("size=24m");
    let scratch = tempfile::tempdir().unwrap();
    let data = volume(scratch.path(), "blog_example_org_data");
    let file = fs::File::create(data.mountpoint.join("sparse")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[3_u8; 64 * 1024], 0).unwrap();
    file.set_len(48 * MIB).unwrap();
    let store = SnapshotStore::new(disk.path().join("snapshots"));
    let snapshot = store.take(&domain(), "op-1", &[data]).unwrap();
    assert_eq!(snapshot.manifest.total_bytes, 48 * MIB);
}
