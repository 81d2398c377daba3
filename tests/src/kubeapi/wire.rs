//! Small pieces of the wire format: `Status` objects, query strings,
//! timestamps, UIDs, base64 and continue tokens.

use serde_json::{Value, json};

/// A `meta/v1` `Status` failure, as the API server sends for errors
/// (the HTTP code is `code`).
pub(super) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// A `Status` with `details` (name, kind, causes, retryAfterSeconds).
pub(super) fn status_details(code: u16, reason: &str, message: &str, details: Value) -> Value {
    let mut s = status(code, reason, message);
    s["details"] = details;
    s
}

/// The `reason` the API server gives with an HTTP code.
pub(super) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        504 => "Timeout",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    }
}

/// A 422 `Invalid` for `ListOptions`, one cause per `(field, message)`, as
/// `ValidateListOptions` failures come back.
pub(super) fn invalid_list_options(errors: &[(&str, String)]) -> Value {
    let joined: Vec<String> = errors.iter().map(|(f, m)| format!("{f}: {m}")).collect();
    let message = if joined.len() == 1 {
        format!("ListOptions.meta.k8s.io \"\" is invalid: {}", joined[0])
    } else {
        format!(
            "ListOptions.meta.k8s.io \"\" is invalid: [{}]",
            joined.join(", ")
        )
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|(f, m)| {
            let reason = if m.starts_with("Unsupported value") {
                "FieldValueNotSupported"
            } else {
                "FieldValueForbidden"
            };
            json!({"reason": reason, "message": m, "field": f})
        })
        .collect();
    status_details(
        422,
        "Invalid",
        &message,
        json!({"group": "meta.k8s.io", "kind": "ListOptions", "causes": causes}),
    )
}

/// `a=b&c=d%20e` → pairs, percent- and `+`-decoded (form encoding, as
/// clients send).
pub(super) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes a query value (for tests building URLs).
pub fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Go's `strconv.ParseBool`, which the API server uses for flags.
pub(super) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Now, RFC 3339 in seconds, UTC (`2025-01-02T03:04:05Z`).
pub(super) fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A random version-4 UUID, as object UIDs are.
pub(super) fn uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub(super) fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` if malformed.
pub(super) fn unbase64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = u32::try_from(B64.iter().position(|&x| x == c)?).ok()?;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from(acc >> bits & 0xff).ok()?);
        }
    }
    Some(out)
}

/// A continue token as the API server makes them: base64 of
/// `{"v":"meta.k8s.io/v1","rv":RV,"start":"KEY\u0000"}`; `rv` -1 marks
/// the inconsistent token handed out with a 410.
pub(super) fn continue_token(rv: i64, last_key: &str) -> String {
    let body = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last_key}\u{0}")});
    base64(body.to_string().as_bytes())
}

/// The resource version (-1: latest) and the key to start after, or an
/// error message.
pub(super) fn parse_continue(token: &str) -> Result<(i64, String), String> {
    let raw = unbase64(token).ok_or("continue key is not valid: illegal base64 data")?;
    let v: Value =
        serde_json::from_slice(&raw).map_err(|e| format!("continue key is not valid: {e}"))?;
    if v["v"] != "meta.k8s.io/v1" {
        return Err("continue key is not valid: server does not recognize this encoded key".into());
    }
    let rv = v["rv"]
        .as_i64()
        .ok_or("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")?;
    let start = v["start"]
        .as_str()
        .and_then(|s| s.strip_suffix('\u{0}'))
        .ok_or("continue key is not valid: encoded start key empty")?;
    Ok((rv, start.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "abcd", "hello, world\u{0}"] {
            assert_eq!(unbase64(&base64(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fo"), "Zm8=");
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query("labelSelector=a+in+%28x%2Cy%29&watch=1&x"),
            vec![
                ("labelSelector".to_string(), "a in (x,y)".to_string()),
                ("watch".to_string(), "1".to_string()),
                ("x".to_string(), String::new()),
            ]
        );
        assert_eq!(parse_query("a=%zz%4"), vec![("a".into(), "%zz%4".into())]);
    }

    #[test]
    fn continue_tokens_round_trip() {
        let t = continue_token(42, "ns/name");
        assert_eq!(parse_continue(&t).unwrap(), (42, "ns/name".to_string()));
        assert!(parse_continue("!!").is_err());
    }

    #[test]
    fn timestamp_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
}
