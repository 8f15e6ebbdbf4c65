//! Checks the services' OpenAPI tests share (feature `testing`): every
//! route documented and every documented operation routed, every `$ref`
//! resolving, a header on every answer, the idempotency layer's answers on
//! an operation, and the Swagger UI page's asset links.

use idempotency_tower::{PROBLEM_CONTENT_TYPE, ProblemType};
use serde_json::Value;

/// The operation of `method` (`"get"`, `"post"`, ...; any case) at `path`
/// in a JSON document.
pub fn operation<'a>(doc: &'a Value, path: &str, method: &str) -> Option<&'a Value> {
    doc["paths"].get(path)?.get(method.to_ascii_lowercase())
}

/// Asserts that every `(method, path)` a router serves is an operation of
/// `doc` and every operation of `doc` is served (axum's `{*rest}` is
/// OpenAPI's `{rest}`); returns how many routes there are.
///
/// # Panics
///
/// A route is undocumented or an operation unrouted.
pub fn assert_routes_match<'a>(
    doc: &Value,
    routes: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> usize {
    let mut routed = Vec::new();
    for (method, path) in routes {
        let path = path.replace("{*", "{");
        assert!(
            operation(doc, &path, method).is_some(),
            "{method} {path} is routed but not in the OpenAPI document"
        );
        routed.push((method.to_ascii_lowercase(), path));
    }
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            assert!(
                routed.contains(&(method.clone(), path.clone())),
                "{method} {path} is documented but not routed"
            );
        }
    }
    routed.len()
}

/// Every `$ref` in `v`.
pub fn refs(v: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

/// Asserts that `doc` has references and each names a schema of its
/// components.
///
/// # Panics
///
/// A reference dangles or is not to a schema.
pub fn assert_refs_resolve(doc: &Value) {
    let refs = refs(doc);
    assert!(!refs.is_empty(), "the document has no $ref");
    for r in refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{r} is not a schema ref"));
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{r} dangles"
        );
    }
}

/// Asserts that every answer of every operation has a description and the
/// header `name`.
///
/// # Panics
///
/// One has not.
pub fn assert_every_answer_has(doc: &Value, name: &str) {
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            let responses = op["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{method} {path} has no responses");
            for (code, r) in responses {
                assert!(r["description"].is_string(), "{method} {path} {code}");
                assert!(
                    r["headers"].get(name).is_some(),
                    "{method} {path} {code} has no {name}"
                );
            }
        }
    }
}

/// Asserts that `responses` (an operation's) show every answer of the
/// idempotency layer as a problem example of its status, and `Retry-After`
/// on the 409 and the 503.
///
/// # Panics
///
/// One is missing.
pub fn assert_layer_problems(responses: &Value) {
    assert!(responses["409"]["headers"].get("Retry-After").is_some());
    assert!(responses["503"]["headers"].get("Retry-After").is_some());
    for kind in ProblemType::ALL {
        let example = &responses[kind.status().as_str()]["content"][PROBLEM_CONTENT_TYPE]["examples"]
            [kind.slug()]["value"];
        assert_eq!(example["type"], kind.uri(), "{}", kind.slug());
        assert_eq!(example["status"], kind.status().as_u16(), "{}", kind.slug());
    }
}

/// The value of every `attr="..."` in `html`.
fn attribute_values(html: &str, attr: &str) -> Vec<String> {
    let attr = format!(" {attr}=\"");
    html.match_indices(&attr)
        .map(|(at, _)| {
            let rest = &html[at + attr.len()..];
            rest[..rest.find('"').unwrap_or(rest.len())].to_owned()
        })
        .collect()
}

/// Every `<script src>` and `<link href>` of the `/docs` page, resolved as a
/// browser does against its `<base href="/docs/">`; `None` for one on
/// another host.
///
/// # Panics
///
/// The page has no `<base href="/docs/">`.
pub fn asset_links(html: &str) -> Vec<Option<String>> {
    let base_tag = "<base href=\"/docs/\">";
    assert!(html.contains(base_tag), "{html}");
    let html = html.replacen(base_tag, "", 1);
    let mut links = attribute_values(&html, "src");
    links.extend(attribute_values(&html, "href"));
    links
        .into_iter()
        .map(|link| {
            if link.starts_with("//") || link.contains("://") {
                None
            } else if link.starts_with('/') {
                Some(link)
            } else {
                Some(format!("/docs/{}", link.trim_start_matches("./")))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn asset_links_resolve_against_the_base() {
        let html = r#"<head><base href="/docs/"><link href="./a.css"><script src="b.js"></script><script src="https://cdn/x.js"></script><link href="/abs.png"></head>"#;
        assert_eq!(
            asset_links(html),
            [
                Some("/docs/b.js".to_owned()),
                None,
                Some("/docs/a.css".to_owned()),
                Some("/abs.png".to_owned())
            ]
        );
    }

    #[test]
    #[should_panic(expected = "documented but not routed")]
    fn an_unrouted_operation_is_found() {
        let doc = json!({"paths": {"/a": {"get": {}}, "/b": {"post": {}}}});
        assert_routes_match(&doc, [("GET", "/a")]);
    }

    #[test]
    #[should_panic(expected = "routed but not in the OpenAPI document")]
    fn an_undocumented_route_is_found() {
        let doc = json!({"paths": {"/a": {"get": {}}}});
        assert_routes_match(&doc, [("GET", "/a"), ("GET", "/files/{*rest}")]);
    }

    #[test]
    #[should_panic(expected = "dangles")]
    fn a_dangling_ref_is_found() {
        let doc = json!({"components": {"schemas": {"A": {}}}, "x": [{"$ref": "#/components/schemas/A"}, {"$ref": "#/components/schemas/B"}]});
        assert_refs_resolve(&doc);
    }
}
