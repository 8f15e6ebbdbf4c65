//! Invoice extraction and validation: a JSON or CSV file becomes invoice
//! data; anything else (a PDF) waits for manual entry. Amounts are
//! decimals with two places ([`Money`]), never floats.

use serde_json::{Map, Value, json};

/// An amount in minor units (cents), read from and written as a decimal
/// string with two places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Money(pub i64);

impl Money {
    /// Parses `-?digits[.d[d]]` (at most 15 integer digits).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (neg, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let ok = !int.is_empty()
            && int.len() <= 15
            && int.bytes().all(|b| b.is_ascii_digit())
            && frac.len() <= 2
            && frac.bytes().all(|b| b.is_ascii_digit());
        if !ok {
            return None;
        }
        let cents = int.parse::<i64>().ok()? * 100
            + match frac.len() {
                0 => 0,
                1 => frac.parse::<i64>().ok()? * 10,
                _ => frac.parse::<i64>().ok()?,
            };
        Some(Self(if neg { -cents } else { cents }))
    }

    /// From a JSON string, or a JSON number as it was written (a number
    /// with more than two decimals is refused, not rounded).
    pub fn from_json(v: &Value) -> Option<Self> {
        match v {
            Value::String(s) => Self::parse(s),
            Value::Number(n) => Self::parse(&n.to_string()),
            _ => None,
        }
    }

    /// The decimal string, e.g. `1234.50`.
    pub fn to_decimal(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        format!("{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

/// What extraction and validation made of a file or of export data.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessed {
    /// `EXTRACTED` or `AWAITING_MANUAL_ENTRY`.
    pub status: &'static str,
    /// The invoice data, amounts as decimal strings.
    pub data: Value,
    /// The total, when it is a valid amount.
    pub total: Option<Money>,
    /// Broken rules.
    pub errors: Vec<String>,
    /// Doubtful values.
    pub warnings: Vec<String>,
    /// 0 to 100: 100 less 20 per error and 5 per warning.
    pub quality_score: i32,
}

/// Extracts the invoice of a file: JSON (`application/json` or a body
/// starting with `{`), CSV (`text/csv` or a header row naming
/// `invoice_number`), else manual entry.
pub fn extract(content_type: &str, bytes: &[u8]) -> Assessed {
    let text = std::str::from_utf8(bytes).ok();
    let looks_json = content_type.starts_with("application/json")
        || text.is_some_and(|t| t.trim_start().starts_with('{'));
    if looks_json {
        return match serde_json::from_slice::<Value>(bytes) {
            Ok(v @ Value::Object(_)) => validate(&normalize(&v)),
            _ => manual("the JSON file is not an invoice object"),
        };
    }
    let looks_csv = content_type.starts_with("text/csv")
        || text.is_some_and(|t| {
            t.lines()
                .next()
                .is_some_and(|h| h.contains("invoice_number"))
        });
    if let (true, Some(t)) = (looks_csv, text) {
        return match from_csv(t) {
            Some(v) => validate(&v),
            None => manual("the CSV file has no header row with invoice columns and a data row"),
        };
    }
    manual("not a JSON or CSV invoice; enter it manually")
}

fn manual(why: &str) -> Assessed {
    Assessed {
        status: "AWAITING_MANUAL_ENTRY",
        data: json!({}),
        total: None,
        errors: vec![format!("manual entry required: {why}")],
        warnings: Vec::new(),
        quality_score: 0,
    }
}

/// Amounts of `v` (total and line amounts) as decimal strings where they parse.
pub fn normalize(v: &Value) -> Value {
    let mut out = v.clone();
    if let Some(obj) = out.as_object_mut() {
        if let Some(m) = obj.get("total_amount").and_then(Money::from_json) {
            obj.insert("total_amount".into(), json!(m.to_decimal()));
        }
        if let Some(Value::Array(lines)) = obj.get_mut("lines") {
            for line in lines.iter_mut().filter_map(Value::as_object_mut) {
                for field in ["amount", "unit_price"] {
                    if let Some(m) = line.get(field).and_then(Money::from_json) {
                        line.insert(field.into(), json!(m.to_decimal()));
                    }
                }
            }
        }
    }
    out
}

/// One CSV record, with `"..."` quoting and `""` escapes.
fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    fields.push(cur);
    fields.into_iter().map(|f| f.trim().to_owned()).collect()
}

/// A CSV with a header row: invoice columns from the first data row, one
/// line per data row.
fn from_csv(text: &str) -> Option<Value> {
    let mut rows = text.lines().filter(|l| !l.trim().is_empty());
    let header = csv_fields(rows.next()?);
    let records: Vec<Vec<String>> = rows.map(csv_fields).collect();
    let first = records.first()?;
    let col = |rec: &Vec<String>, name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .and_then(|i| rec.get(i))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let mut inv = Map::new();
    for name in [
        "vendor_name",
        "invoice_number",
        "invoice_date",
        "currency",
        "total_amount",
    ] {
        if let Some(v) = col(first, name) {
            inv.insert(name.into(), json!(v));
        }
    }
    let lines: Vec<Value> = records
        .iter()
        .filter(|r| col(r, "description").is_some() || col(r, "amount").is_some())
        .map(|r| {
            let mut l = Map::new();
            for name in ["description", "quantity", "unit_price", "amount"] {
                if let Some(v) = col(r, name) {
                    l.insert(name.into(), json!(v));
                }
            }
            Value::Object(l)
        })
        .collect();
    if !inv.contains_key("total_amount") {
        let sum: Option<i64> = lines
            .iter()
            .map(|l| l.get("amount").and_then(Money::from_json).map(|m| m.0))
            .sum();
        if let Some(sum) = sum.filter(|_| !lines.is_empty()) {
            inv.insert("total_amount".into(), json!(Money(sum).to_decimal()));
        }
    }
    inv.insert("lines".into(), Value::Array(lines));
    Some(normalize(&Value::Object(inv)))
}

/// Whether `s` is a calendar date `YYYY-MM-DD`.
fn is_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return false;
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return false;
    }
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<u32>(), m.parse::<u32>(), d.parse::<u32>()) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

/// Validates invoice data: errors, warnings and the quality score.
pub fn validate(data: &Value) -> Assessed {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let text = |name: &str| data.get(name).and_then(Value::as_str).map(str::trim);
    for name in ["vendor_name", "invoice_number"] {
        if text(name).is_none_or(str::is_empty) {
            errors.push(format!("{name} is required"));
        }
    }
    if !text("invoice_date").is_some_and(is_date) {
        errors.push("invoice_date must be a date YYYY-MM-DD".to_owned());
    }
    if !text("currency").is_some_and(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
    {
        errors.push("currency must be three capital letters (ISO 4217)".to_owned());
    }
    let total = data.get("total_amount").and_then(Money::from_json);
    match total {
        None => errors.push("total_amount must be a decimal amount with at most two places".into()),
        Some(Money(0)) => warnings.push("total_amount is zero".to_owned()),
        Some(Money(n)) if n < 0 => {
            warnings.push("total_amount is negative (a credit note?)".into())
        }
        Some(_) => {}
    }
    let lines = data.get("lines").and_then(Value::as_array);
    match lines {
        None => warnings.push("no invoice lines".to_owned()),
        Some(lines) if lines.is_empty() => warnings.push("no invoice lines".to_owned()),
        Some(lines) => {
            let amounts: Vec<Option<Money>> = lines
                .iter()
                .map(|l| l.get("amount").and_then(Money::from_json))
                .collect();
            for (i, a) in amounts.iter().enumerate() {
                if a.is_none() {
                    errors.push(format!("lines/{i}/amount must be a decimal amount"));
                }
            }
            let sum: Option<i64> = amounts.iter().map(|a| a.map(|m| m.0)).sum();
            if let (Some(sum), Some(total)) = (sum, total)
                && sum != total.0
            {
                errors.push(format!(
                    "total_amount {} is not the sum of the lines {}",
                    total.to_decimal(),
                    Money(sum).to_decimal()
                ));
            }
        }
    }
    let penalty = 20 * errors.len() + 5 * warnings.len();
    let quality_score = i32::try_from(100usize.saturating_sub(penalty)).unwrap_or(0);
    Assessed {
        status: "EXTRACTED",
        data: normalize(data),
        total,
        errors,
        warnings,
        quality_score,
    }
}

/// Field-level changes from `before` to `after`: `{path, before, after}`
/// for every leaf that differs (objects are walked, arrays compared by index).
pub fn diff(before: &Value, after: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    walk("", before, after, &mut out);
    out
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<Value>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}/{k}");
                walk(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let p = format!("{path}/{i}");
                walk(
                    &p,
                    x.get(i).unwrap_or(&Value::Null),
                    y.get(i).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(json!({"field": path, "before": a, "after": b})),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Value {
        json!({"vendor_name": "ACME", "invoice_number": "INV-1", "invoice_date": "2026-02-28",
               "currency": "EUR", "total_amount": 1000.10,
               "lines": [{"description": "a", "amount": "600.00"}, {"description": "b", "amount": 400.1}]})
    }

    #[test]
    fn money_is_decimal() {
        assert_eq!(Money::parse("1234.5"), Some(Money(123_450)));
        assert_eq!(Money::parse("-0.05"), Some(Money(-5)));
        assert_eq!(Money::parse("7"), Some(Money(700)));
        for bad in ["", "1.234", "1e3", "abc", "1.2.3", "--1", "."] {
            assert_eq!(Money::parse(bad), None, "{bad}");
        }
        assert_eq!(Money(123_450).to_decimal(), "1234.50");
        assert_eq!(Money(-5).to_decimal(), "-0.05");
        assert_eq!(Money::from_json(&json!(0.1)), Some(Money(10)));
        assert_eq!(Money::from_json(&json!(0.125)), None);
    }

    #[test]
    fn a_good_json_invoice_scores_100() {
        let a = extract("application/json", good().to_string().as_bytes());
        assert_eq!(a.status, "EXTRACTED");
        assert!(a.errors.is_empty() && a.warnings.is_empty(), "{a:?}");
        assert_eq!(a.quality_score, 100);
        assert_eq!(a.total, Some(Money(100_010)));
        assert_eq!(a.data["total_amount"], "1000.10");
        assert_eq!(a.data["lines"][1]["amount"], "400.10");
    }

    #[test]
    fn broken_rules_lower_the_score() {
        let mut v = good();
        v["total_amount"] = json!("999.99");
        v["invoice_date"] = json!("2026-02-30");
        v["currency"] = json!("eur");
        let a = validate(&v);
        assert_eq!(a.errors.len(), 3, "{a:?}");
        assert_eq!(a.quality_score, 40);
        let a = validate(&json!({}));
        assert_eq!(a.quality_score, 0);
    }

    #[test]
    fn csv_with_a_header_row() {
        let csv = "vendor_name,invoice_number,invoice_date,currency,description,amount\n\
                   \"ACME, Inc.\",INV-9,2024-02-29,USD,widgets,10.50\n,,,,bolts,2\n";
        let a = extract("text/csv", csv.as_bytes());
        assert_eq!(a.data["vendor_name"], "ACME, Inc.");
        assert_eq!(a.data["total_amount"], "12.50");
        assert_eq!(a.data["lines"].as_array().unwrap().len(), 2);
        assert_eq!(a.quality_score, 100, "{a:?}");
    }

    #[test]
    fn anything_else_waits_for_manual_entry() {
        let a = extract("application/pdf", b"%PDF-1.7 ...");
        assert_eq!((a.status, a.quality_score), ("AWAITING_MANUAL_ENTRY", 0));
        assert_eq!(
            extract("application/json", b"[1]").status,
            "AWAITING_MANUAL_ENTRY"
        );
    }

    #[test]
    fn field_level_diff() {
        let a =
            json!({"vendor_name": "ACME", "total_amount": "1.00", "lines": [{"amount": "1.00"}]});
        let b = json!({"vendor_name": "ACME Corp", "total_amount": "1.00", "lines": [{"amount": "1.00"}, {"amount": "2.00"}]});
        let d = diff(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0]["field"], "/lines/1");
        assert_eq!(
            d[1],
            json!({"field": "/vendor_name", "before": "ACME", "after": "ACME Corp"})
        );
        assert!(diff(&a, &a).is_empty());
    }
}
