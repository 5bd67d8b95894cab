//! Request and response values shared by the simulated services, plus the OData helpers
//! (query options, `$filter` lexing, error bodies) the Graph and MDE routes parse with.

pub mod graph;
pub mod inspect;
pub mod mde;
pub mod token;

use std::collections::HashMap;

use axum::http::Method;
use serde_json::{Value, json};

/// One API call as the services see it: a top-level request or one `$batch` item.
#[derive(Debug, Clone)]
pub struct ApiReq {
    pub method: Method,
    /// The path below the service root (`/groups/…` for Graph, `/api/…` for MDE), undecoded.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Lower-cased header names.
    pub headers: HashMap<String, String>,
    pub body: Body,
    /// `http://host:port` as the caller addressed us; next links are built on it.
    pub base: String,
}

#[derive(Debug, Clone)]
pub enum Body {
    None,
    Json(Value),
    Invalid,
}

impl ApiReq {
    /// A query option by name; `$top` and `top` are the same option, case-insensitively.
    pub fn q(&self, name: &str) -> Option<&str> {
        let bare = name.trim_start_matches('$');
        self.query
            .iter()
            .find(|(k, _)| k.trim_start_matches('$').eq_ignore_ascii_case(bare))
            .map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn json(&self) -> Option<&Value> {
        match &self.body {
            Body::Json(v) => Some(v),
            _ => None,
        }
    }

    /// Path segments, percent-decoded.
    pub fn segments(&self) -> Vec<String> {
        self.path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect()
    }
}

/// What happens after the response is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Respond,
    /// Hold the answer for this many ms, then close the connection without it.
    StallThenDrop(u64),
}

/// A response of a service, before it becomes HTTP (or a `$batch` item).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
    pub after: After,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Some(body),
            after: After::Respond,
        }
    }

    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: None,
            after: After::Respond,
        }
    }

    pub fn with_header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.to_string(), value));
        self
    }
}

/// A Graph error body: `{"error":{"code","message","innerError":{"date","request-id",…}}}`.
pub fn graph_error(status: u16, code: &str, message: &str) -> Reply {
    let request_id = uuid::Uuid::new_v4().to_string();
    let date = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string();
    Reply::json(
        status,
        json!({"error": {"code": code, "message": message, "innerError": {
            "date": date, "request-id": request_id, "client-request-id": request_id}}}),
    )
    .with_header("request-id", request_id)
}

/// An MDE error body: `{"error":{"code","message","target":"<correlation id>"}}`.
pub fn mde_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": {"code": code, "message": message,
            "target": uuid::Uuid::new_v4().to_string()}}),
    )
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a query string; `+` stays a plus (Graph clients encode spaces as `%20`).
pub fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Encodes a query value for a next link.
pub fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `$top` as a number within `1..=max`, `default` when absent; `Err(value)` otherwise.
pub fn top(req: &ApiReq, default: usize, max: usize) -> Result<usize, String> {
    match req.q("$top") {
        None => Ok(default),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(v.to_string()),
        },
    }
}

/// A token of an OData `$filter` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Word(String),
    Str(String),
    LParen,
    RParen,
    Comma,
}

/// Splits a `$filter` into tokens; `''` inside a quoted string is one `'`.
pub fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            '\'' => {
                let mut v = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated string literal".into()),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            v.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(c) => {
                            v.push(*c);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            _ => {
                let start = i;
                while i < chars.len() && !chars[i].is_whitespace() && !"(),'".contains(chars[i]) {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

/// `$select` as a lower-cased list (empty = every property).
pub fn select(req: &ApiReq) -> Vec<String> {
    req.q("$select")
        .map(|s| {
            s.split(',')
                .map(|p| p.trim().to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Keeps only the selected properties (plus `@odata.type` and `id`).
pub fn apply_select(mut obj: Value, select: &[String]) -> Value {
    if select.is_empty() {
        return obj;
    }
    if let Value::Object(map) = &mut obj {
        map.retain(|k, _| {
            k == "id" || k.starts_with('@') || select.iter().any(|s| s.eq_ignore_ascii_case(k))
        });
    }
    obj
}

/// Opaque paging tokens: base64url of a short text.
pub fn skiptoken_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("sim1|{s}"))
}

pub fn skiptoken_decode(s: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim())
        .ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("sim1|")
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexes_filters_with_escaped_quotes() {
        let toks = lex("userPrincipalName in ('o''neil@x.com','b')").unwrap();
        assert_eq!(
            toks,
            vec![
                Tok::Word("userPrincipalName".into()),
                Tok::Word("in".into()),
                Tok::LParen,
                Tok::Str("o'neil@x.com".into()),
                Tok::Comma,
                Tok::Str("b".into()),
                Tok::RParen,
            ]
        );
        assert!(lex("id eq 'x").is_err());
    }

    #[test]
    fn percent_decoding_and_tokens_round_trip() {
        assert_eq!(percent_decode("a%23EXT%23%40b"), "a#EXT#@b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(
            skiptoken_decode(&skiptoken_encode("m|x")).as_deref(),
            Some("m|x")
        );
        assert_eq!(skiptoken_decode("garbage!"), None);
    }
}
