//! Tests of snapshots on real directories: take, verify, restore, open, list
//! and prune, plus the pure parts (room check, compare) as tables and
//! properties. They run as root (the agent does), so owners can be set and
//! checked.

use std::fs;
use std::os::unix::fs::{chown, lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ccfleet_proto::Domain;
use expect_test::{expect, Expect};
use proptest::prelude::*;

use super::store::read_manifest;
use super::*;

const FIVE_MIB: usize = 5 * 1024 * 1024;
const DB_BYTES: &[u8] = b"SQLite format 3\0 and some pages";

/// A scratch area: a snapshot store and two volumes with a varied tree.
struct Fixture {
    _scratch: tempfile::TempDir,
    base: PathBuf,
    store: SnapshotStore,
    volumes: Vec<VolumeSource>,
    domain: Domain,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_big_file(FIVE_MIB)
    }

    /// The fixture with a smaller "a/big.bin": sha2 is slow in debug builds,
    /// and the mutation table builds a fixture per case.
    fn with_big_file(big_bytes: usize) -> Fixture {
        let scratch = tempfile::tempdir().unwrap();
        let base = scratch.path().to_owned();
        let volumes: Vec<VolumeSource> = ["blog_example_org_content", "blog_example_org_db"]
            .into_iter()
            .map(|name| {
                let mountpoint = base.join("docker/volumes").join(name).join("_data");
                fs::create_dir_all(&mountpoint).unwrap();
                VolumeSource {
                    name: name.to_owned(),
                    mountpoint,
                }
            })
            .collect();
        populate(&volumes[0].mountpoint, big_bytes);
        fs::write(volumes[1].mountpoint.join("db.sqlite"), DB_BYTES).unwrap();
        chown(volumes[1].mountpoint.join("db.sqlite"), Some(70), Some(70)).unwrap();
        fs::create_dir(base.join("outside")).unwrap();
        fs::write(base.join("outside/secret"), b"not part of any volume").unwrap();
        Fixture {
            store: SnapshotStore::new(base.join("state/snapshots")),
            _scratch: scratch,
            base,
            volumes,
            domain: "blog.example.org".parse().unwrap(),
        }
    }

    fn content(&self) -> &Path {
        &self.volumes[0].mountpoint
    }

    fn take(&self, operation_id: &str) -> Snapshot {
        self.store.take(&self.domain, operation_id, &self.volumes).unwrap()
    }

    fn take_verified(&self, operation_id: &str) -> Snapshot {
        let snapshot = self.take(operation_id);
        self.store.verify(&snapshot, &self.volumes).unwrap();
        snapshot
    }

    /// Asserts that every live volume walks exactly to its manifest.
    fn assert_volumes_match(&self, snapshot: &Snapshot) {
        for (recorded, source) in snapshot.manifest.volumes.iter().zip(&self.volumes) {
            assert_eq!(recorded.volume, source.name);
            let live = walk(&source.mountpoint).unwrap();
            assert_eq!(compare(&recorded.entries, &live), Ok(()), "volume {}", source.name);
            assert_eq!(recorded.entries, live);
        }
    }
}

/// A tree with nested directories, an empty file, a 5 MiB file, symlinks
/// (one dangling, one pointing outside the volume), odd modes and owners.
fn populate(root: &Path, big_bytes: usize) {
    let mode = |path: &Path, mode: u32| fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::write(root.join("a/b/c/deep.txt"), b"deep down").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    let big: Vec<u8> = (0..big_bytes).map(|index| (index * 31 % 251) as u8).collect();
    fs::write(root.join("a/big.bin"), &big).unwrap();
    fs::write(root.join("a/private"), b"0600").unwrap();
    mode(&root.join("a/private"), 0o600);
    fs::write(root.join("a/run.sh"), b"#!/bin/sh\n").unwrap();
    mode(&root.join("a/run.sh"), 0o755);
    fs::write(root.join("a/b/owned"), b"someone else's").unwrap();
    chown(root.join("a/b/owned"), Some(1234), Some(5678)).unwrap();
    fs::create_dir(root.join("shared")).unwrap();
    chown(root.join("shared"), Some(33), Some(33)).unwrap();
    mode(&root.join("shared"), 0o2775);
    fs::write(root.join("shared/setuid"), b"s").unwrap();
    chown(root.join("shared/setuid"), Some(1000), Some(1000)).unwrap();
    mode(&root.join("shared/setuid"), 0o4750);
    // Explicit modes for the rest, so that the umask does not matter.
    for path in ["a", "a/b", "a/b/c"] {
        mode(&root.join(path), 0o755);
    }
    for path in ["a/b/c/deep.txt", "empty", "a/big.bin", "a/b/owned"] {
        mode(&root.join(path), 0o644);
    }
    symlink("a/b/c/deep.txt", root.join("link")).unwrap();
    symlink("../nowhere/at/all", root.join("a/dangling")).unwrap();
    lchown(root.join("a/dangling"), Some(42), Some(43)).unwrap();
    symlink("/etc/passwd", root.join("absolute")).unwrap();
    mode(root, 0o750);
}

fn write_bytes(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap();
}

/// Flips one byte of a file in place, keeping its size, owner and mode.
fn flip_byte(path: &Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut byte = [0_u8];
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(&[byte[0] ^ 0x01]).unwrap();
}

#[test]
fn take_records_every_entry_of_the_source() {
    let fixture = Fixture::new();
    let snapshot = fixture.take("op-1");
    assert_eq!(snapshot.dir, fixture.store.dir_of(&fixture.domain, "op-1"));
    assert_eq!(snapshot.manifest.format, MANIFEST_FORMAT);
    assert_eq!(snapshot.manifest.domain, "blog.example.org");
    assert_eq!(snapshot.manifest.operation_id, "op-1");
    fixture.assert_volumes_match(&snapshot);

    let entries = &snapshot.manifest.volumes[0].entries;
    let summary: String = entries
        .iter()
        .map(|entry| {
            format!(
                "{:<16} {:<7} {:04o} {}:{} {}{}\n",
                tree::display_path(&entry.path),
                format!("{:?}", entry.kind).to_lowercase(),
                entry.mode,
                entry.uid,
                entry.gid,
                entry.size,
                entry
                    .target
                    .as_deref()
                    .map(|target| format!(" -> {target}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    expect![[r#"
        .                dir     0750 0:0 0
        a                dir     0755 0:0 0
        a/b              dir     0755 0:0 0
        a/b/c            dir     0755 0:0 0
        a/b/c/deep.txt   file    0644 0:0 9
        a/b/owned        file    0644 1234:5678 14
        a/big.bin        file    0644 0:0 5242880
        a/dangling       symlink 0777 42:43 0 -> ../nowhere/at/all
        a/private        file    0600 0:0 4
        a/run.sh         file    0755 0:0 10
        absolute         symlink 0777 0:0 0 -> /etc/passwd
        empty            file    0644 0:0 0
        link             symlink 0777 0:0 0 -> a/b/c/deep.txt
        shared           dir     2775 33:33 0
        shared/setuid    file    4750 1000:1000 1
    "#]]
    .assert_eq(&summary);
    let empty = entries.iter().find(|entry| entry.path == "empty").unwrap();
    assert_eq!(
        empty.sha256.as_deref(),
        Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    assert_eq!(
        snapshot.manifest.total_bytes,
        9 + 14 + FIVE_MIB as u64 + 4 + 10 + 1 + DB_BYTES.len() as u64
    );

    // The copy walks to the same manifest, owners and modes included
    // (without setuid and setgid), and keeps modification times.
    let copy_root = snapshot.dir.join("volumes/blog_example_org_content");
    let copy = walk(&copy_root).unwrap();
    assert_eq!(copy, as_stored_in_copy(entries));
    let mode_in_copy = |path: &str| copy.iter().find(|entry| entry.path == path).unwrap().mode;
    assert_eq!((mode_in_copy("shared"), mode_in_copy("shared/setuid")), (0o775, 0o750));
    for path in ["a/b/c/deep.txt", "a/b", ""] {
        let modified = |root: &Path| {
            fs::metadata(beneath::join_relative(root, path))
                .unwrap()
                .modified()
                .unwrap()
        };
        assert_eq!(modified(&copy_root), modified(fixture.content()), "{path:?}");
    }
    // The manifest on disk is the one returned, and open finds it.
    let opened = fixture.store.open(&fixture.domain, "op-1").unwrap().unwrap();
    assert_eq!(opened, snapshot);
    assert!(!fixture.store.is_verified(&snapshot));
}

#[test]
fn verify_accepts_an_intact_snapshot_and_marks_it() {
    let fixture = Fixture::new();
    let snapshot = fixture.take("op-1");
    fixture.store.verify(&snapshot, &fixture.volumes).unwrap();
    assert!(fixture.store.is_verified(&snapshot));
    assert!(snapshot.dir.join("verified").is_file());
}

#[test]
fn verify_names_a_corrupted_byte_in_the_copy() {
    let fixture = Fixture::new();
    let snapshot = fixture.take("op-1");
    flip_byte(
        &snapshot.dir.join("volumes/blog_example_org_content/a/big.bin"),
        3 * 1024 * 1024,
    );
    let error = fixture.store.verify(&snapshot, &fixture.volumes).unwrap_err();
    let SnapshotError::Mismatch { volume, path, detail } = &error else {
        panic!("expected a mismatch, got {error:?}");
    };
    assert_eq!(
        (volume.as_str(), path.as_str()),
        ("blog_example_org_content", "a/big.bin")
    );
    assert!(detail.starts_with("in the copy: sha256: expected "), "{detail}");
    assert!(error.to_string().starts_with(
        "volume blog_example_org_content differs from the snapshot's manifest at a/big.bin: in the copy: sha256"
    ));
    assert!(!fixture.store.is_verified(&snapshot));
}

#[test]
fn verify_names_a_changed_byte_in_the_live_volume() {
    let fixture = Fixture::new();
    let snapshot = fixture.take("op-1");
    flip_byte(&fixture.volumes[1].mountpoint.join("db.sqlite"), 0);
    let error = fixture.store.verify(&snapshot, &fixture.volumes).unwrap_err();
    let SnapshotError::Mismatch { volume, path, detail } = &error else {
        panic!("expected a mismatch, got {error:?}");
    };
    assert_eq!((volume.as_str(), path.as_str()), ("blog_example_org_db", "db.sqlite"));
    assert!(detail.starts_with("in the live volume: sha256: expected "), "{detail}");
    assert!(!fixture.store.is_verified(&snapshot));
}

#[test]
fn verify_refuses_volume_lists_that_differ_from_the_snapshot() {
    let fixture = Fixture::new();
    let snapshot = fixture.take("op-1");
    let error = fixture.store.verify(&snapshot, &fixture.volumes[..1]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "volume blog_example_org_db is in the snapshot but no longer exists"
    );
    let mut more = fixture.volumes.clone();
    more.push(VolumeSource {
        name: "blog_example_org_new".to_owned(),
        mountpoint: fixture.base.join("outside"),
    });
    let error = fixture.store.verify(&snapshot, &more).unwrap_err();
    assert_eq!(error.to_string(), "volume blog_example_org_new is not in the snapshot");
}

#[test]
fn verify_checks_the_manifest_on_disk_too() {
    let fixture = Fixture::new();
    let mut snapshot = fixture.take("op-1");
    snapshot.manifest.volumes[1]
        .entries
        .retain(|entry| entry.path != "db.sqlite");
    let error = fixture.store.verify(&snapshot, &fixture.volumes).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "manifest {}: is missing or differs from the snapshot being verified",
            snapshot.dir.join("manifest.json").display()
        )
    );
    assert!(!fixture.store.is_verified(&snapshot));
}

/// A change a new version (or an accident) could make to a volume.
type Mutation = fn(&Path, &Path);

fn mutations() -> Vec<(&'static str, Mutation)> {
    vec![
        ("file changed", |volume, _| {
            write_bytes(&volume.join("a/b/c/deep.txt"), b"migrated!")
        }),
        ("file grown", |volume, _| {
            let size = fs::metadata(volume.join("a/big.bin")).unwrap().len() as usize;
            write_bytes(&volume.join("a/big.bin"), &vec![7_u8; size + 1])
        }),
        ("file added", |volume, _| {
            write_bytes(&volume.join("a/b/new.txt"), b"new")
        }),
        ("file deleted", |volume, _| {
            fs::remove_file(volume.join("a/private")).unwrap()
        }),
        ("empty file filled", |volume, _| {
            write_bytes(&volume.join("empty"), b"x")
        }),
        ("dir removed", |volume, _| {
            fs::remove_dir_all(volume.join("a/b")).unwrap()
        }),
        ("dir added", |volume, _| {
            fs::create_dir_all(volume.join("cache/x/y")).unwrap()
        }),
        ("mode changed", |volume, _| {
            fs::set_permissions(volume.join("a/private"), fs::Permissions::from_mode(0o644)).unwrap()
        }),
        ("setgid dropped", |volume, _| {
            fs::set_permissions(volume.join("shared"), fs::Permissions::from_mode(0o775)).unwrap()
        }),
        ("root mode changed", |volume, _| {
            fs::set_permissions(volume, fs::Permissions::from_mode(0o777)).unwrap()
        }),
        ("owner changed", |volume, _| {
            chown(volume.join("a/b/owned"), Some(0), Some(0)).unwrap()
        }),
        ("symlink owner changed", |volume, _| {
            lchown(volume.join("a/dangling"), Some(0), Some(0)).unwrap()
        }),
        ("symlink retargeted", |volume, _| {
            fs::remove_file(volume.join("link")).unwrap();
            symlink("empty", volume.join("link")).unwrap();
        }),
        ("file replaced by a dir", |volume, _| {
            fs::remove_file(volume.join("a/run.sh")).unwrap();
            fs::create_dir(volume.join("a/run.sh")).unwrap();
            write_bytes(&volume.join("a/run.sh/inner"), b"inner");
        }),
        ("dir replaced by a file", |volume, _| {
            fs::remove_dir_all(volume.join("a/b/c")).unwrap();
            write_bytes(&volume.join("a/b/c"), b"now a file");
        }),
        ("dir replaced by a symlink out of the volume", |volume, outside| {
            fs::remove_dir_all(volume.join("a/b")).unwrap();
            symlink(outside, volume.join("a/b")).unwrap();
        }),
        ("symlink replaced by a file", |volume, _| {
            fs::remove_file(volume.join("absolute")).unwrap();
            write_bytes(&volume.join("absolute"), b"plain");
        }),
        ("file hard linked out of the volume", |volume, outside| {
            fs::remove_file(volume.join("empty")).unwrap();
            fs::hard_link(outside.join("secret"), volume.join("empty")).unwrap();
        }),
        ("everything emptied", |volume, _| {
            for item in fs::read_dir(volume).unwrap() {
                let path = item.unwrap().path();
                if fs::symlink_metadata(&path).unwrap().is_dir() {
                    fs::remove_dir_all(path).unwrap();
                } else {
                    fs::remove_file(path).unwrap();
                }
            }
        }),
    ]
}

#[test]
fn restore_undoes_each_modification() {
    for (name, mutate) in mutations() {
        let fixture = Fixture::with_big_file(64 * 1024);
        let snapshot = fixture.take_verified("op-1");
        let outside = fixture.base.join("outside");
        mutate(fixture.content(), &outside);
        let before = walk(fixture.content()).unwrap();
        assert!(
            compare(&snapshot.manifest.volumes[0].entries, &before).is_err(),
            "{name}: the mutation is visible"
        );
        fixture
            .store
            .restore(&snapshot, &fixture.volumes)
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        fixture.assert_volumes_match(&snapshot);
        // Nothing outside the volume was touched through a symlink or a hard link.
        assert_eq!(
            fs::read(outside.join("secret")).unwrap(),
            b"not part of any volume",
            "{name}"
        );
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1, "{name}");
    }
}

#[test]
fn restore_undoes_all_modifications_at_once() {
    let fixture = Fixture::new();
    let snapshot = fixture.take_verified("op-1");
    let outside = fixture.base.join("outside");
    let modified = |path: &str| fs::metadata(fixture.content().join(path)).unwrap().modified().unwrap();
    let deep_modified = modified("a/b/c/deep.txt");
    // All but those that would remove what a later one changes, or change
    // what an earlier one removed.
    for (_, mutate) in mutations()
        .into_iter()
        .filter(|(name, _)| !matches!(*name, "everything emptied" | "dir removed" | "mode changed"))
    {
        mutate(fixture.content(), &outside);
    }
    flip_byte(&fixture.volumes[1].mountpoint.join("db.sqlite"), 5);
    fixture.store.restore(&snapshot, &fixture.volumes).unwrap();
    fixture.assert_volumes_match(&snapshot);
    // The restored volume is the snapshot byte for byte: the copy, the live
    // volume and the manifest agree, so verify passes again.
    fixture.store.verify(&snapshot, &fixture.volumes).unwrap();
    assert_eq!(fs::metadata(fixture.content().join("a/b/owned")).unwrap().uid(), 1234);
    assert_eq!(fs::metadata(fixture.content().join("a/b/owned")).unwrap().gid(), 5678);
    assert_eq!(modified("a/b/c/deep.txt"), deep_modified);
}

#[test]
fn restore_refuses_an_unverified_snapshot_and_touches_nothing() {
    let fixture = Fixture::new();
    let snapshot = fixture.take("op-1");
    write_bytes(&fixture.content().join("empty"), b"changed");
    let error = fixture.store.restore(&snapshot, &fixture.volumes).unwrap_err();
    assert!(matches!(error, SnapshotError::NotVerified { .. }), "{error:?}");
    assert!(error
        .to_string()
        .contains("was not verified; refusing to restore from it"));
    assert_eq!(fs::read(fixture.content().join("empty")).unwrap(), b"changed");
}

#[test]
fn restore_fails_loudly_when_the_copy_was_damaged_after_verification() {
    let fixture = Fixture::new();
    let snapshot = fixture.take_verified("op-1");
    flip_byte(&snapshot.dir.join("volumes/blog_example_org_content/a/run.sh"), 0);
    let error = fixture.store.restore(&snapshot, &fixture.volumes).unwrap_err();
    let SnapshotError::Mismatch { volume, path, detail } = &error else {
        panic!("expected a mismatch, got {error:?}");
    };
    assert_eq!(
        (volume.as_str(), path.as_str()),
        ("blog_example_org_content", "a/run.sh")
    );
    assert!(detail.starts_with("after the restore: sha256"), "{detail}");
}

#[test]
fn take_refuses_devices_naming_them() {
    let fixture = Fixture::new();
    let device = fixture.content().join("a/null");
    // The character device 1:3 (what /dev/null is).
    nix::sys::stat::mknod(
        &device,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let error = fixture
        .store
        .take(&fixture.domain, "op-1", &fixture.volumes)
        .unwrap_err();
    assert!(matches!(error, SnapshotError::Unsupported { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "{} is a character device, which a snapshot cannot hold",
            device.display()
        )
    );
}

#[test]
fn take_after_a_crash_replaces_the_half_written_snapshot() {
    let fixture = Fixture::new();
    let dir = fixture.store.dir_of(&fixture.domain, "op-1");
    // What a crash while copying leaves: part of a copy, no manifest, and a
    // read-only directory on the way.
    let partial = dir.join("volumes/blog_example_org_content/a");
    fs::create_dir_all(&partial).unwrap();
    write_bytes(&partial.join("big.bin"), b"truncat");
    write_bytes(&dir.join("manifest.json.tmp"), b"{\"format\":");
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o500)).unwrap();
    assert_eq!(fixture.store.open(&fixture.domain, "op-1").unwrap(), None);
    let listed = fixture.store.list(&fixture.domain).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].complete);

    let snapshot = fixture.take_verified("op-1");
    fixture.assert_volumes_match(&snapshot);
    assert!(!dir.join("manifest.json.tmp").exists());
    assert!(fixture.store.list(&fixture.domain).unwrap()[0].complete);
}

#[test]
fn take_again_returns_the_complete_snapshot_without_overwriting_it() {
    let fixture = Fixture::new();
    let first = fixture.take_verified("op-1");
    // The upgrade has run and changed the data since.
    write_bytes(&fixture.content().join("a/b/c/deep.txt"), b"migrated");
    let again = fixture.take("op-1");
    assert_eq!(again, first);
    assert!(fixture.store.is_verified(&again));
    let copy = fixture
        .store
        .dir_of(&fixture.domain, "op-1")
        .join("volumes/blog_example_org_content");
    assert_eq!(fs::read(copy.join("a/b/c/deep.txt")).unwrap(), b"deep down");
    // Verifying says the live volume no longer matches; restoring undoes it.
    let error = fixture.store.verify(&again, &fixture.volumes).unwrap_err();
    assert_eq!(
        error.to_string(),
        "volume blog_example_org_content differs from the snapshot's manifest at a/b/c/deep.txt: \
         in the live volume: size: expected 9 bytes, found 8"
    );
    fixture.store.restore(&again, &fixture.volumes).unwrap();
    fixture.assert_volumes_match(&again);
}

#[test]
fn room_rule_as_a_table() {
    const MIB: u64 = 1024 * 1024;
    for (total, needed) in [
        (0, 16 * MIB),
        (1, 16 * MIB + 2),
        (100, 16 * MIB + 105),
        (1000 * MIB, 1050 * MIB + 16 * MIB),
        (u64::MAX, u64::MAX),
    ] {
        assert_eq!(room_needed(total), needed, "total {total}");
    }
    for (needed, available, fits) in [
        (0, 0, true),
        (10, 10, true),
        (11, 10, false),
        (16 * MIB, 16 * MIB - 1, false),
        (u64::MAX, u64::MAX, true),
    ] {
        let result = check_room(needed, available);
        assert_eq!(result.is_ok(), fits, "needed {needed}, available {available}");
        if let Err(error) = result {
            assert_eq!(
                error.to_string(),
                format!("no room for the snapshot: needs {needed} bytes, {available} available")
            );
        }
    }
}

#[test]
fn list_and_prune_keep_the_newest_and_the_protected() {
    let fixture = Fixture::new();
    for operation in ["op-1", "op-2", "op-3", "op-4", "op-5"] {
        fixture.take(operation);
        // Distinct creation times without sleeping: rewrite the manifest's.
    }
    for (index, operation) in ["op-1", "op-2", "op-3", "op-4", "op-5"].iter().enumerate() {
        let dir = fixture.store.dir_of(&fixture.domain, operation);
        let mut manifest = read_manifest(&dir).unwrap().unwrap();
        manifest.created_at_unix_ms = 1_000 * (index as u64 + 1);
        copy::write_atomically(&dir.join(MANIFEST_FILE), &serde_json::to_vec(&manifest).unwrap()).unwrap();
    }
    fs::create_dir_all(fixture.store.dir_of(&fixture.domain, "op-crashed").join("volumes")).unwrap();
    let other: Domain = "wiki.example.org".parse().unwrap();
    fixture.store.take(&other, "op-1", &fixture.volumes).unwrap();

    let listed: Vec<(String, bool)> = fixture
        .store
        .list(&fixture.domain)
        .unwrap()
        .into_iter()
        .map(|info| (info.operation_id, info.complete))
        .collect();
    assert_eq!(
        listed[0],
        ("op-crashed".to_owned(), false),
        "an incomplete dir is as new as its mtime"
    );
    let complete: Vec<&str> = listed
        .iter()
        .filter(|(_, complete)| *complete)
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(complete, ["op-5", "op-4", "op-3", "op-2", "op-1"]);

    let deleted = fixture.store.prune(&fixture.domain, 2, &["op-1"]).unwrap();
    let mut deleted: Vec<String> = deleted
        .iter()
        .map(|dir| dir.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    deleted.sort();
    assert_eq!(deleted, ["op-2", "op-3", "op-crashed"]);
    let left: Vec<String> = fixture
        .store
        .list(&fixture.domain)
        .unwrap()
        .into_iter()
        .map(|info| info.operation_id)
        .collect();
    assert_eq!(left, ["op-5", "op-4", "op-1"]);
    // Pruning again deletes nothing.
    assert!(fixture.store.prune(&fixture.domain, 2, &["op-1"]).unwrap().is_empty());
    // A snapshot whose manifest cannot be read is listed, never pruned.
    write_bytes(
        &fixture.store.dir_of(&fixture.domain, "op-4").join(MANIFEST_FILE),
        b"{\"format\": 99}",
    );
    let listed = fixture.store.list(&fixture.domain).unwrap();
    assert_eq!(listed.iter().filter(|info| !info.complete).count(), 1);
    assert_eq!(fixture.store.prune(&fixture.domain, 0, &[]).unwrap().len(), 2);
    assert_eq!(fixture.store.list(&fixture.domain).unwrap()[0].operation_id, "op-4");
    fs::remove_file(fixture.store.dir_of(&fixture.domain, "op-4").join(MANIFEST_FILE)).unwrap();
    assert_eq!(fixture.store.prune(&fixture.domain, 0, &[]).unwrap().len(), 1);
    assert!(fixture.store.list(&fixture.domain).unwrap().is_empty());
    // Other domains are untouched.
    assert_eq!(fixture.store.list(&other).unwrap().len(), 1);
}

#[test]
fn open_checks_what_it_reads() {
    let fixture = Fixture::new();
    assert_eq!(fixture.store.open(&fixture.domain, "op-1").unwrap(), None);
    let snapshot = fixture.take("op-1");
    let manifest_path = snapshot.dir.join(MANIFEST_FILE);

    let mut tampered = snapshot.manifest.clone();
    tampered.volumes[0].entries[1].path = "a/../../../outside".to_owned();
    write_bytes(&manifest_path, &serde_json::to_vec(&tampered).unwrap());
    let error = fixture.store.open(&fixture.domain, "op-1").unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid path \"a/../../../outside\" in a manifest: has a '.' or '..' component"
    );

    let mut tampered = snapshot.manifest.clone();
    tampered.volumes[0].volume = "../escape".to_owned();
    write_bytes(&manifest_path, &serde_json::to_vec(&tampered).unwrap());
    let error = fixture.store.open(&fixture.domain, "op-1").unwrap_err();
    assert!(
        error.to_string().starts_with("invalid volume name \"../escape\""),
        "{error}"
    );

    write_bytes(&manifest_path, b"{ not json");
    let error = fixture.store.open(&fixture.domain, "op-1").unwrap_err();
    assert!(matches!(error, SnapshotError::Manifest { .. }), "{error:?}");

    let error = fixture.store.open(&fixture.domain, "../op-1").unwrap_err();
    assert!(error.to_string().starts_with("invalid operation id"), "{error}");
}

#[test]
fn names_that_would_leave_their_directory_are_refused() {
    let fixture = Fixture::new();
    for (name, reason) in [
        ("", "is empty"),
        ("..", "must start with a letter or digit"),
        (".hidden", "must start with a letter or digit"),
        ("a/b", "may contain only letters, digits, '_', '.' and '-'"),
        ("a b", "may contain only letters, digits, '_', '.' and '-'"),
    ] {
        let volumes = [VolumeSource {
            name: name.to_owned(),
            mountpoint: fixture.content().to_owned(),
        }];
        let error = fixture.store.take(&fixture.domain, "op-1", &volumes).unwrap_err();
        assert_eq!(error.to_string(), format!("invalid volume name {name:?}: {reason}"));
        let error = fixture.store.take(&fixture.domain, name, &fixture.volumes).unwrap_err();
        assert_eq!(error.to_string(), format!("invalid operation id {name:?}: {reason}"));
    }
    let twice = [fixture.volumes[0].clone(), fixture.volumes[0].clone()];
    let error = fixture.store.take(&fixture.domain, "op-1", &twice).unwrap_err();
    assert_eq!(error.to_string(), "volume blog_example_org_content is listed twice");
}

#[test]
fn walk_never_follows_symlinks() {
    let fixture = Fixture::new();
    let entries = walk(fixture.content()).unwrap();
    assert!(entries.iter().all(|entry| !entry.path.starts_with("absolute/")));
    // A volume root that is itself a symlink is refused.
    let link = fixture.base.join("link-to-volume");
    symlink(fixture.content(), &link).unwrap();
    let error = walk(&link).unwrap_err();
    assert_eq!(error.to_string(), format!("{} is not a directory", link.display()));
}

/// Renders the first difference between two manifests, or "equal".
fn check_compare(expected: &[ManifestEntry], actual: &[ManifestEntry], expect: Expect) {
    let rendered = match compare(expected, actual) {
        Ok(()) => "equal".to_owned(),
        Err(difference) => difference.to_string(),
    };
    expect.assert_eq(&rendered);
}

fn file(path: &str, content: &str) -> ManifestEntry {
    use sha2::Digest;
    ManifestEntry {
        path: path.to_owned(),
        kind: EntryKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        size: content.len() as u64,
        sha256: Some(hex::encode(sha2::Sha256::digest(content.as_bytes()))[..8].to_owned()),
        target: None,
    }
}

fn dir(path: &str) -> ManifestEntry {
    ManifestEntry {
        path: path.to_owned(),
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        sha256: None,
        target: None,
    }
}

fn link(path: &str, target: &str) -> ManifestEntry {
    ManifestEntry {
        path: path.to_owned(),
        kind: EntryKind::Symlink,
        mode: 0o777,
        uid: 0,
        gid: 0,
        size: 0,
        sha256: None,
        target: Some(target.to_owned()),
    }
}

#[test]
fn compare_reports_the_first_difference() {
    let base = vec![dir(""), dir("a"), file("a/x", "hello"), link("l", "a/x")];
    check_compare(&base, &base, expect!["equal"]);
    let reversed: Vec<ManifestEntry> = base.iter().rev().cloned().collect();
    check_compare(&base, &reversed, expect!["equal"]);
    check_compare(&base, &base[..3], expect!["l: missing (expected a symlink)"]);
    check_compare(&base[1..], &base, expect![".: unexpected directory"]);
    let with = |change: fn(&mut Vec<ManifestEntry>)| {
        let mut changed = base.clone();
        change(&mut changed);
        changed
    };
    check_compare(
        &base,
        &with(|m| m[2] = file("a/x", "hellO")),
        expect!["a/x: sha256: expected 2cf24dba, found 04a6f55f"],
    );
    check_compare(
        &base,
        &with(|m| m[2] = file("a/x", "hello!")),
        expect!["a/x: size: expected 5 bytes, found 6"],
    );
    check_compare(
        &base,
        &with(|m| m[2].mode = 0o4755),
        expect!["a/x: mode: expected 0644, found 4755"],
    );
    check_compare(
        &base,
        &with(|m| m[2].gid = 7),
        expect!["a/x: owner: expected 0:0, found 0:7"],
    );
    check_compare(
        &base,
        &with(|m| m[1] = file("a", "")),
        expect!["a: kind: expected a directory, found a file"],
    );
    check_compare(
        &base,
        &with(|m| m[3] = link("l", "/etc")),
        expect![[r#"l: symlink target: expected "a/x", found "/etc""#]],
    );
    check_compare(
        &base,
        &with(|m| m.push(file("a/y", ""))),
        expect!["a/y: unexpected file"],
    );
    // The first difference in path order wins.
    check_compare(
        &base,
        &with(|m| {
            m[3] = link("l", "elsewhere");
            m[2].uid = 5;
        }),
        expect!["a/x: owner: expected 0:0, found 5:0"],
    );
}

/// A random manifest: unique paths, parents before children not required
/// (compare does not care), every kind with its fields.
fn arbitrary_manifest() -> impl Strategy<Value = Vec<ManifestEntry>> {
    let entry = (
        "[a-c]{1,2}(/[a-c]{1,2}){0,2}",
        0_u8..4,
        0_u32..0o7777,
        0_u32..3,
        0_u32..3,
        0_u64..4,
        "[0-9a-f]{4}",
    )
        .prop_map(|(path, kind, mode, uid, gid, size, text)| match kind {
            0 => ManifestEntry {
                mode,
                uid,
                gid,
                ..dir(&path)
            },
            1 => ManifestEntry {
                mode,
                uid,
                gid,
                size,
                sha256: Some(text),
                ..file(&path, "")
            },
            2 => ManifestEntry {
                uid,
                gid,
                ..link(&path, &text)
            },
            _ => ManifestEntry {
                mode,
                uid,
                gid,
                kind: EntryKind::Fifo,
                ..dir(&path)
            },
        });
    proptest::collection::vec(entry, 0..30).prop_map(|mut entries| {
        entries.sort_by(|left, right| left.path.cmp(&right.path));
        entries.dedup_by(|left, right| left.path == right.path);
        entries
    })
}

proptest! {
    #[test]
    fn compare_finds_every_single_mutation(
        manifest in arbitrary_manifest(),
        pick in any::<prop::sample::Index>(),
        mutation in 0_u8..9,
    ) {
        prop_assert_eq!(compare(&manifest, &manifest), Ok(()));
        let mut mutated = manifest.clone();
        let expected_path = if manifest.is_empty() || mutation == 8 {
            // Add an entry no random path can collide with.
            mutated.push(file("zzz-extra", "new"));
            "zzz-extra".to_owned()
        } else {
            let index = pick.index(manifest.len());
            let entry = &mut mutated[index];
            match mutation {
                0 => entry.mode ^= 0o1,
                1 => entry.uid += 1,
                2 => entry.gid += 1,
                3 => entry.size += 1,
                4 => entry.sha256 = Some(format!("{}x", entry.sha256.clone().unwrap_or_default())),
                5 => entry.target = Some(format!("{}x", entry.target.clone().unwrap_or_default())),
                6 => entry.kind = match entry.kind {
                    EntryKind::File => EntryKind::Dir,
                    EntryKind::Dir => EntryKind::Symlink,
                    EntryKind::Symlink => EntryKind::Fifo,
                    EntryKind::Fifo => EntryKind::File,
                },
                _ => {
                    mutated.remove(index);
                }
            }
            manifest[index].path.clone()
        };
        let difference = compare(&manifest, &mutated).expect_err("a mutation is always reported");
        prop_assert_eq!(&difference.path, &expected_path);
        // And in the other direction too.
        let difference = compare(&mutated, &manifest).expect_err("a mutation is always reported");
        prop_assert_eq!(difference.path, expected_path);
    }
}

/// One step that builds or changes a tree on disk; steps that do not apply
/// (a parent is a file, the entry exists already) are skipped.
#[derive(Debug, Clone)]
enum Step {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        bytes: Vec<u8>,
        mode: u32,
        owner: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    Remove {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        owner: u32,
    },
    Fifo {
        path: String,
        mode: u32,
    },
    Socket {
        path: String,
    },
}

fn arbitrary_step() -> impl Strategy<Value = Step> {
    let path = "[a-c]{1,2}(/[a-c]{1,2}){0,2}";
    prop_oneof![
        (path, 0_u32..0o7777).prop_map(|(path, mode)| Step::Dir { path, mode }),
        (
            path,
            proptest::collection::vec(any::<u8>(), 0..64),
            0_u32..0o7777,
            0_u32..4
        )
            .prop_map(|(path, bytes, mode, owner)| Step::File {
                path,
                bytes,
                mode,
                owner
            }),
        (path, "[a-c./]{1,8}").prop_map(|(path, target)| Step::Symlink { path, target }),
        path.prop_map(|path| Step::Remove { path }),
        (path, 0_u32..0o7777).prop_map(|(path, mode)| Step::Chmod { path, mode }),
        (path, 0_u32..4).prop_map(|(path, owner)| Step::Chown { path, owner }),
        (path, 0_u32..0o7777).prop_map(|(path, mode)| Step::Fifo { path, mode }),
        path.prop_map(|path| Step::Socket { path }),
    ]
}

/// Applies a step under `root`, ignoring steps that do not apply.
fn apply_step(root: &Path, step: &Step) {
    let owner_ids = |owner: u32| Some(if owner == 3 { 1234 } else { owner });
    let create_parent = |path: &str| {
        let full = root.join(path);
        fs::create_dir_all(full.parent().unwrap()).is_ok() && fs::symlink_metadata(&full).is_err()
    };
    let _ = match step {
        Step::Dir { path, mode } => {
            if create_parent(path) {
                let full = root.join(path);
                let _ =
                    fs::create_dir(&full).and_then(|()| fs::set_permissions(&full, fs::Permissions::from_mode(*mode)));
            }
            Ok(())
        }
        Step::File {
            path,
            bytes,
            mode,
            owner,
        } => {
            if create_parent(path) {
                let full = root.join(path);
                let _ = fs::write(&full, bytes)
                    .and_then(|()| chown(&full, owner_ids(*owner), owner_ids(*owner)))
                    .and_then(|()| fs::set_permissions(&full, fs::Permissions::from_mode(*mode)));
            }
            Ok(())
        }
        Step::Symlink { path, target } => {
            if create_parent(path) {
                let _ = symlink(target, root.join(path));
            }
            Ok(())
        }
        Step::Remove { path } => {
            let full = root.join(path);
            match fs::symlink_metadata(&full) {
                Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(&full),
                Ok(_) => fs::remove_file(&full),
                Err(_) => Ok(()),
            }
        }
        Step::Chmod { path, mode } => {
            let full = root.join(path);
            match fs::symlink_metadata(&full) {
                Ok(metadata) if !metadata.file_type().is_symlink() => {
                    fs::set_permissions(&full, fs::Permissions::from_mode(*mode))
                }
                _ => Ok(()),
            }
        }
        Step::Chown { path, owner } => lchown(root.join(path), owner_ids(*owner), owner_ids(*owner)),
        Step::Fifo { path, mode } => {
            if create_parent(path) {
                let full = root.join(path);
                let _ = nix::unistd::mkfifo(&full, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(std::io::Error::from)
                    .and_then(|()| fs::set_permissions(&full, fs::Permissions::from_mode(*mode)));
            }
            Ok(())
        }
        Step::Socket { path } => {
            if create_parent(path) {
                // The listener closes at once; the socket file stays, as
                // after a crash of the server that made it.
                let _ = std::os::unix::net::UnixListener::bind(root.join(path));
            }
            Ok(())
        }
    };
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// On disk: a random tree is snapshotted and verified; after random
    /// changes, the restore makes the live volume walk exactly to the
    /// manifest again, and the copy still verifies.
    #[test]
    fn restore_reverses_random_changes(
        build in proptest::collection::vec(arbitrary_step(), 1..25),
        changes in proptest::collection::vec(arbitrary_step(), 1..15),
    ) {
        let scratch = tempfile::tempdir().unwrap();
        let volume = VolumeSource { name: "random_data".to_owned(), mountpoint: scratch.path().join("volume") };
        fs::create_dir(&volume.mountpoint).unwrap();
        for step in &build {
            apply_step(&volume.mountpoint, step);
        }
        let store = SnapshotStore::new(scratch.path().join("snapshots"));
        let domain: Domain = "random.example.org".parse().unwrap();
        let volumes = [volume.clone()];
        let snapshot = store.take(&domain, "op-random", &volumes).unwrap();
        store.verify(&snapshot, &volumes).unwrap();
        for step in &changes {
            apply_step(&volume.mountpoint, step);
        }
        store.restore(&snapshot, &volumes).unwrap();
        let (entries, skipped) = walk_volume(&volume.mountpoint).unwrap();
        prop_assert_eq!(&entries, &snapshot.manifest.volumes[0].entries);
        // Whatever the changes left (sockets included) is gone.
        prop_assert_eq!(skipped, vec![]);
        store.verify(&snapshot, &volumes).unwrap();
    }
}
