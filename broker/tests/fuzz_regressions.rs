//! The fuzz targets' committed inputs (fuzz/regressions/<target>/: every
//! crash found, plus seeds) replayed through the same entry points on
//! stable.

use std::path::Path;

use veil_broker::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no inputs in {}", dir.display());
    for path in paths {
        eprintln!("{}", path.display());
        run(&std::fs::read(&path).expect("readable input"));
    }
}

#[test]
fn frames() {
    replay("broker_frames", fuzzing::frames);
}

#[test]
fn packets() {
    replay("broker_packet", fuzzing::packet);
}

#[test]
fn acl_files() {
    replay("broker_acl", fuzzing::acl);
}

#[test]
fn password_files() {
    replay("broker_passwords", fuzzing::passwords);
}

#[test]
fn topics() {
    replay("broker_topics", fuzzing::topics);
}
