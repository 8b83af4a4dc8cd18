//! Loom models live in tests/: see the crate manifest.
