//! Placeholder: this crate is being filled in.
