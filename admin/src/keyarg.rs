//! Which record a command is about: a storage key in hex, or the parts the
//! layer hashes it from (computed by the layer's own code,
//! [`KeyMaterial::storage_key`]).

use idempotency_core::{StorageKey, derive_from_json};
use idempotency_tower::{KeyMaterial, parse_key_header};

use crate::cli::KeyArgs;
use crate::exit::Failure;

/// The storage key the arguments name.
pub(crate) fn storage_key(args: &KeyArgs) -> Result<StorageKey, Failure> {
    let usage = |m: &str| Err(Failure::Usage(m.to_owned()));
    match (&args.storage_key, &args.namespace) {
        (Some(_), Some(_)) => usage("give either a storage key or --namespace, not both"),
        (None, None) => usage(
            "which record? give its storage key (64 hex digits) or --namespace with \
             --key, --derived or --json-body",
        ),
        (Some(hex), None) => {
            if args.client_key.is_some()
                || !args.derived.is_empty()
                || args.json_body.is_some()
                || !args.pointers.is_empty()
            {
                return usage("--key, --derived and --json-body need --namespace");
            }
            StorageKey::from_hex(hex.trim()).ok_or_else(|| {
                Failure::Usage(format!(
                    "{hex:?} is not a storage key: expected 64 hex digits"
                ))
            })
        }
        (None, Some(namespace)) => {
            let material = material(args)?;
            if matches!(material, KeyMaterial::Derived(_)) && args.route.is_none() {
                return usage("a derived key needs --route (the route template the service uses)");
            }
            Ok(material.storage_key(
                namespace,
                &args.scope,
                &args.method,
                args.route.as_deref().unwrap_or_default(),
            ))
        }
    }
}

fn material(args: &KeyArgs) -> Result<KeyMaterial, Failure> {
    let sources = usize::from(args.client_key.is_some())
        + usize::from(!args.derived.is_empty())
        + usize::from(args.json_body.is_some());
    if sources != 1 {
        return Err(Failure::Usage(
            "with --namespace give exactly one of --key, --derived or --json-body".into(),
        ));
    }
    if !args.pointers.is_empty() && args.json_body.is_none() {
        return Err(Failure::Usage("--pointer needs --json-body".into()));
    }
    if let Some(value) = &args.client_key {
        return parse_key_header(value.as_bytes())
            .map(KeyMaterial::Client)
            .map_err(|e| Failure::Usage(format!("--key: {e}")));
    }
    if let Some(body) = &args.json_body {
        if args.pointers.is_empty() {
            return Err(Failure::Usage(
                "--json-body needs at least one --pointer".into(),
            ));
        }
        let pointers: Vec<&str> = args.pointers.iter().map(String::as_str).collect();
        return derive_from_json(body.as_bytes(), &pointers)
            .map(KeyMaterial::Derived)
            .map_err(|e| Failure::Usage(format!("--json-body: {e}")));
    }
    Ok(KeyMaterial::Derived(
        args.derived.iter().map(|v| v.as_bytes().to_vec()).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use idempotency_core::{IdempotencyKey, KeySpec};

    fn args() -> KeyArgs {
        KeyArgs {
            storage_key: None,
            namespace: None,
            scope: String::new(),
            client_key: None,
            derived: Vec::new(),
            json_body: None,
            pointers: Vec::new(),
            method: "POST".into(),
            route: None,
        }
    }

    #[test]
    fn a_client_key_hashes_as_the_layer_does() {
        let a = KeyArgs {
            namespace: Some("shop".into()),
            scope: "tenant-1".into(),
            client_key: Some(r#""order-42""#.into()),
            ..args()
        };
        let key = IdempotencyKey::new("order-42").unwrap();
        let want = KeySpec::new("shop")
            .scope("tenant-1")
            .client_key(&key)
            .storage_key();
        assert_eq!(storage_key(&a).unwrap(), want);
        // Bare and quoted header forms are the same key.
        let bare = KeyArgs {
            client_key: Some("order-42".into()),
            ..a
        };
        assert_eq!(storage_key(&bare).unwrap(), want);
    }

    #[test]
    fn derived_keys_take_the_method_and_route() {
        let a = KeyArgs {
            namespace: Some("promotion".into()),
            derived: vec!["E-1".into(), "3".into()],
            route: Some("/estimates/{id}/snapshots/{v}/promote".into()),
            ..args()
        };
        let want = KeySpec::new("promotion")
            .method("POST")
            .route("/estimates/{id}/snapshots/{v}/promote")
            .derived(["E-1", "3"])
            .storage_key();
        assert_eq!(storage_key(&a).unwrap(), want);
        let json = KeyArgs {
            derived: Vec::new(),
            json_body: Some(r#"{"estimateId":"E-1","v":3}"#.into()),
            pointers: vec!["/estimateId".into(), "/v".into()],
            ..a
        };
        let parts =
            derive_from_json(br#"{"v":3,"estimateId":"E-1"}"#, &["/estimateId", "/v"]).unwrap();
        let want = KeySpec::new("promotion")
            .method("POST")
            .route("/estimates/{id}/snapshots/{v}/promote")
            .derived(&parts)
            .storage_key();
        assert_eq!(storage_key(&json).unwrap(), want);
    }

    #[test]
    fn hex_keys_round_trip() {
        let key = StorageKey::from_segments(&[b"x"]);
        let a = KeyArgs {
            storage_key: Some(key.to_hex()),
            ..args()
        };
        assert_eq!(storage_key(&a).unwrap(), key);
    }

    #[test]
    fn wrong_combinations_are_usage_errors() {
        let cases = [
            args(),
            KeyArgs {
                storage_key: Some("abc".into()),
                ..args()
            },
            KeyArgs {
                storage_key: Some("00".repeat(32)),
                namespace: Some("n".into()),
                ..args()
            },
            KeyArgs {
                storage_key: Some("00".repeat(32)),
                client_key: Some("k".into()),
                ..args()
            },
            KeyArgs {
                namespace: Some("n".into()),
                ..args()
            },
            KeyArgs {
                namespace: Some("n".into()),
                client_key: Some("k".into()),
                derived: vec!["d".into()],
                ..args()
            },
            KeyArgs {
                namespace: Some("n".into()),
                derived: vec!["d".into()],
                ..args()
            },
            KeyArgs {
                namespace: Some("n".into()),
                client_key: Some(String::new()),
                ..args()
            },
            KeyArgs {
                namespace: Some("n".into()),
                json_body: Some("{}".into()),
                route: Some("/r".into()),
                ..args()
            },
            KeyArgs {
                namespace: Some("n".into()),
                json_body: Some("{}".into()),
                pointers: vec!["/missing".into()],
                route: Some("/r".into()),
                ..args()
            },
            KeyArgs {
                namespace: Some("n".into()),
                client_key: Some("k".into()),
                pointers: vec!["/a".into()],
                ..args()
            },
        ];
        for (i, a) in cases.iter().enumerate() {
            let got = storage_key(a);
            assert!(matches!(got, Err(Failure::Usage(_))), "case {i}: {got:?}");
        }
    }
}
