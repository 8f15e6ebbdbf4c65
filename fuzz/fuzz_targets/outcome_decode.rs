//! Stored outcomes as a store hands them back (any bytes: a corrupted row,
//! another version's encoding): never a panic; what decodes re-encodes to
//! an encoding of the same outcome.
#![no_main]

use idempotency_core::Outcome;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(outcome) = Outcome::decode(bytes) {
        let encoded = outcome.encode();
        assert_eq!(Outcome::decode(&encoded).as_ref(), Ok(&outcome));
    }
});
