//! (placeholder: this crate is not written yet)
