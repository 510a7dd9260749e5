//! OLPC canonical JSON, the byte string TUF signatures cover.
//!
//! Objects with keys sorted (by code point, which is UTF-8 byte order), no
//! whitespace, strings with only `"` and `\` escaped and every other byte
//! written as is, integers only. It is computed over the parsed `signed`
//! value, so fields this client does not know are still covered.

use serde_json::Value;

/// The canonical form of `value`, or why it has none (a non-integer number).
pub fn canonicalize(value: &Value) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return Err(format!(
                    "canonical JSON has no floating-point numbers ({n})"
                ));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_value(v, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_keys_and_escapes_only_quote_and_backslash() {
        let v: Value = serde_json::from_str(
            r#"{"b": [1, -2, true, null], "a": "q\"b\\n\nt\u00e9", "A": {"z": 0, "y": "x"}}"#,
        )
        .expect("json");
        let c = canonicalize(&v).expect("canonical");
        assert_eq!(
            c,
            "{\"A\":{\"y\":\"x\",\"z\":0},\"a\":\"q\\\"b\\\\n\nt\u{e9}\",\"b\":[1,-2,true,null]}"
                .as_bytes()
        );
    }

    #[test]
    fn refuses_floats() {
        let v: Value = serde_json::from_str(r#"{"a": 1.5}"#).expect("json");
        assert!(canonicalize(&v).is_err());
    }
}
