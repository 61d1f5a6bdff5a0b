//! The fuzz targets' committed inputs (fuzz/regressions/<target>/: every
//! crash found, plus seeds) replayed through the same entry points on
//! stable.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

#[path = "../../fuzz/regressions.rs"]
mod committed;

use committed::replay;
use veil_broker::fuzzing;

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

#[test]
fn certificates() {
    replay("broker_certificate", fuzzing::certificate);
}
