//! `Idempotency-Key` header values: never a panic; an accepted key is 1 to
//! 255 printable ASCII bytes, and quoting it as an sf-string names the same key.
#![no_main]

use idempotency_tower::parse_key_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &[u8]| {
    if let Ok(key) = parse_key_header(value) {
        let bytes = key.expose_secret();
        assert!((1..=255).contains(&bytes.len()));
        assert!(bytes.iter().all(|b| (0x20..=0x7e).contains(b)));
        let mut quoted = Vec::with_capacity(bytes.len() + 2);
        quoted.push(b'"');
        for &b in bytes {
            if b == b'"' || b == b'\\' {
                quoted.push(b'\\');
            }
            quoted.push(b);
        }
        quoted.push(b'"');
        assert_eq!(parse_key_header(&quoted).ok(), Some(key));
    }
});
