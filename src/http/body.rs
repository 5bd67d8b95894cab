//! Reading a response body: capped in size, and for a list page whose caller asked for it, its
//! items parsed one by one as the bytes arrive.
//!
//! A page of 10,000 MDE machines is about 6 MB of JSON, every documented field of every machine,
//! of which dexscope keeps a few. Read whole, the page's bytes sit beside the items parsed from
//! them at the peak of a pass. Split as they arrive, only the item being received is held: each
//! element of the top-level `value` array is handed to an [`ItemSink`] the moment its closing
//! brace arrives, and the rest of the page (`@odata.nextLink`, `@odata.context`) is kept as the
//! body, with an empty `value` array.

use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;

/// Where the items of a page go as they arrive.
pub(crate) trait ItemSink: Send + Sync {
    /// One element of the page's `value` array, as its JSON text.
    fn item(&self, json: &[u8]);
    /// The page could not be split (an element that is not an object, a body cut short).
    fn fail(&self, problem: String);
    /// Forgets what an attempt delivered: it is about to be sent again.
    fn reset(&self);
}

/// The sink a request carries (a page request of a listing that parses as it reads).
#[derive(Clone)]
pub struct Items(pub(crate) Arc<dyn ItemSink>);

impl std::fmt::Debug for Items {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Items")
    }
}

/// Items parsed into `T` as they arrive; the first problem is kept and ends the page.
pub(crate) struct Collect<T> {
    parsed: Mutex<(Vec<T>, Option<String>)>,
}

impl<T> Collect<T> {
    pub(crate) fn new() -> Self {
        Collect {
            parsed: Mutex::new((Vec::new(), None)),
        }
    }

    /// The items of the last attempt, or the problem that spoiled it.
    pub(crate) fn take(&self) -> Result<Vec<T>, String> {
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        match parsed.1.take() {
            Some(problem) => Err(problem),
            None => Ok(std::mem::take(&mut parsed.0)),
        }
    }
}

impl<T: DeserializeOwned + Send> ItemSink for Collect<T> {
    fn item(&self, json: &[u8]) {
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        if parsed.1.is_some() {
            return;
        }
        match serde_json::from_slice(json) {
            Ok(item) => parsed.0.push(item),
            Err(e) => parsed.1 = Some(format!("list item {}: {e}", parsed.0.len() + 1)),
        }
    }

    fn fail(&self, problem: String) {
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        parsed.1.get_or_insert(problem);
    }

    fn reset(&self) {
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        *parsed = (Vec::new(), None);
    }
}

/// Where the splitter is in the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Outside the `value` array: bytes go to the envelope.
    Envelope,
    /// Between the elements of the `value` array.
    Between,
    /// Inside one element.
    Item,
}

/// Splits a page's bytes, as they arrive, into its envelope and the elements of its top-level
/// `value` array. It follows only what JSON needs to find them: nesting, strings and escapes;
/// the items themselves are parsed by the sink, and the envelope by the caller.
pub(crate) struct Splitter {
    place: Place,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a key.
    expect_key: bool,
    /// The key being read at depth 1 (only its first bytes: just "value" matters).
    key: Vec<u8>,
    /// The value after the last key at depth 1 is the `value` array.
    value_next: bool,
    envelope: Vec<u8>,
    item: Vec<u8>,
}

impl Splitter {
    pub(crate) fn new() -> Self {
        Splitter {
            place: Place::Envelope,
            depth: 0,
            in_string: false,
            escaped: false,
            expect_key: false,
            key: Vec::new(),
            value_next: false,
            envelope: Vec::new(),
            item: Vec::new(),
        }
    }

    /// Takes the next bytes of the page; each element completed by them goes to `sink`.
    pub(crate) fn feed(&mut self, bytes: &[u8], sink: &dyn ItemSink) {
        for &b in bytes {
            match self.place {
                Place::Item => self.in_item(b, sink),
                Place::Between => self.between(b, sink),
                Place::Envelope => self.in_envelope(b),
            }
        }
    }

    /// The page without its elements, once every byte was fed; a page cut inside its `value`
    /// array is a problem for the sink.
    pub(crate) fn finish(self, sink: &dyn ItemSink) -> Vec<u8> {
        if self.place != Place::Envelope {
            sink.fail("the page ended inside its `value` array".into());
        }
        self.envelope
    }

    fn in_item(&mut self, b: u8, sink: &dyn ItemSink) {
        self.item.push(b);
        if self.string_byte(b) {
            return;
        }
        match b {
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == 2 {
                    sink.item(&self.item);
                    self.item.clear();
                    self.place = Place::Between;
                }
            }
            _ => {}
        }
    }

    fn between(&mut self, b: u8, sink: &dyn ItemSink) {
        match b {
            b'{' => {
                self.item.clear();
                self.item.push(b);
                self.depth = 3;
                self.place = Place::Item;
            }
            b']' => {
                self.envelope.push(b);
                self.depth = 1;
                self.place = Place::Envelope;
            }
            b',' | b' ' | b'\t' | b'\r' | b'\n' => {}
            other => {
                sink.fail(format!(
                    "an element of the `value` array is not an object (it starts with {:?})",
                    char::from(other)
                ));
                // The rest of the array is kept whole, so the page still parses as JSON.
                self.envelope.push(other);
                self.place = Place::Envelope;
                self.depth = 2;
            }
        }
    }

    fn in_envelope(&mut self, b: u8) {
        self.envelope.push(b);
        if self.in_string {
            let closing = !self.escaped && b == b'"';
            self.string_byte(b);
            if self.depth == 1 && self.expect_key {
                if closing {
                    self.value_next = self.key == b"value";
                } else if self.key.len() <= 8 {
                    self.key.push(b);
                }
            }
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                self.key.clear();
            }
            b':' if self.depth == 1 => self.expect_key = false,
            b',' if self.depth == 1 => {
                self.expect_key = true;
                self.value_next = false;
            }
            b'[' if self.depth == 1 && !self.expect_key && self.value_next => {
                self.value_next = false;
                self.depth = 2;
                self.place = Place::Between;
            }
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth == 1 {
                    self.expect_key = true;
                }
            }
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
    }

    /// Follows strings and their escapes; true when `b` is inside a string (its closing quote
    /// included), so it is no structure.
    fn string_byte(&mut self, b: u8) -> bool {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            return true;
        }
        if b == b'"' {
            self.in_string = true;
            return true;
        }
        false
    }
}

/// The body, or `None` once it runs past `limit` bytes (announced or received). Without a
/// sink, one piece is kept as it came; more are each copied into one buffer (sized from
/// `Content-Length`) and dropped, so a page is never held as pieces and joined copy both.
/// With a sink, the page's items go to it as they complete and the body is what is left.
pub(super) async fn read_capped(
    mut resp: reqwest::Response,
    limit: u64,
    items: Option<&Items>,
) -> Result<Option<bytes::Bytes>, reqwest::Error> {
    let announced = resp.content_length();
    if announced.is_some_and(|n| n > limit) {
        return Ok(None);
    }
    if let Some(Items(sink)) = items {
        sink.reset();
        let mut splitter = Splitter::new();
        let mut total = 0u64;
        while let Some(chunk) = resp.chunk().await? {
            total += chunk.len() as u64;
            if total > limit {
                return Ok(None);
            }
            splitter.feed(&chunk, sink.as_ref());
        }
        return Ok(Some(splitter.finish(sink.as_ref()).into()));
    }
    let Some(first) = resp.chunk().await? else {
        return Ok(Some(bytes::Bytes::new()));
    };
    let mut total = first.len() as u64;
    let Some(mut next) = resp.chunk().await? else {
        return Ok((total <= limit).then_some(first));
    };
    let size = announced.map_or(0, |n| usize::try_from(n).unwrap_or(0));
    let mut body = bytes::BytesMut::with_capacity(size.max(first.len()));
    body.extend_from_slice(&first);
    drop(first);
    loop {
        total += next.len() as u64;
        if total > limit {
            return Ok(None);
        }
        body.extend_from_slice(&next);
        match resp.chunk().await? {
            Some(chunk) => next = chunk,
            None => return Ok(Some(body.freeze())),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Splits `page` fed in pieces of `step` bytes: (envelope, items, problem).
    fn split(page: &str, step: usize) -> (String, Vec<serde_json::Value>, Option<String>) {
        let sink = Collect::<serde_json::Value>::new();
        let mut splitter = Splitter::new();
        for piece in page.as_bytes().chunks(step) {
            splitter.feed(piece, &sink);
        }
        let envelope = String::from_utf8(splitter.finish(&sink)).unwrap();
        match sink.take() {
            Ok(items) => (envelope, items, None),
            Err(problem) => (envelope, Vec::new(), Some(problem)),
        }
    }

    #[test]
    fn a_page_splits_into_its_envelope_and_items_in_any_pieces() {
        // Keys and strings that look like structure: a "value" inside an item, brackets and
        // quotes in strings, an escaped backslash before a closing quote, and the nextLink
        // after the array.
        let page = r#"{"@odata.context":"https://x/$metadata#Machines","value": [
            {"id":"a","tags":["x]","{y"],"nested":{"value":[1,2]}},
            {"id":"b","name":"q\"uote\\","value":"}"} ,{"id":"c"}],
            "@odata.nextLink":"https://x/api/machines?$skip=3"}"#;
        for step in [1, 2, 3, 7, 64, page.len()] {
            let (envelope, items, problem) = split(page, step);
            assert_eq!(problem, None, "step {step}");
            assert_eq!(
                items,
                [
                    json!({"id": "a", "tags": ["x]", "{y"], "nested": {"value": [1, 2]}}),
                    json!({"id": "b", "name": "q\"uote\\", "value": "}"}),
                    json!({"id": "c"}),
                ],
                "step {step}"
            );
            let envelope: serde_json::Value = serde_json::from_str(&envelope).unwrap();
            assert_eq!(envelope["value"], json!([]));
            assert_eq!(
                envelope["@odata.nextLink"],
                "https://x/api/machines?$skip=3"
            );
        }
    }

    #[test]
    fn only_the_top_level_value_array_is_split() {
        // A `value` key inside another object, a key that merely starts with "value", and an
        // array after a string that says "value" are all envelope.
        let page = r#"{"meta":{"value":[{"id":"no"}]},"values":[{"id":"no"}],"k":"value","x":[{"id":"no"}],"value":[{"id":"yes"}]}"#;
        let (envelope, items, problem) = split(page, 5);
        assert_eq!(problem, None);
        assert_eq!(items, [json!({"id": "yes"})]);
        assert!(envelope.contains(r#""values":[{"id":"no"}]"#));
        assert!(envelope.ends_with(r#""value":[]}"#));
    }

    #[test]
    fn an_error_body_or_an_empty_page_is_all_envelope() {
        let error = r#"{"error":{"code":"TooManyRequests","message":"slow down"}}"#;
        assert_eq!(split(error, 4), (error.to_string(), Vec::new(), None));
        let empty = r#"{"value":[]}"#;
        assert_eq!(split(empty, 1), (empty.to_string(), Vec::new(), None));
    }

    #[test]
    fn a_page_that_cannot_be_split_says_why() {
        let (_, _, problem) = split(r#"{"value":[{"id":"a"},"b"]}"#, 3);
        assert!(problem.unwrap().contains("not an object"));
        let (_, _, problem) = split(r#"{"value":[{"id":"a"},{"id":"#, 3);
        assert!(problem.unwrap().contains("ended inside"));
        let (_, _, problem) = split(r#"{"value":[{"id":"a"},{"id":tru}]}"#, 3);
        assert!(problem.unwrap().contains("list item 2"));
    }

    #[test]
    fn a_reset_forgets_an_attempt() {
        let sink = Collect::<serde_json::Value>::new();
        let mut splitter = Splitter::new();
        splitter.feed(br#"{"value":[{"id":"a"},{"#, &sink);
        sink.reset();
        let mut again = Splitter::new();
        again.feed(br#"{"value":[{"id":"b"}]}"#, &sink);
        again.finish(&sink);
        assert_eq!(sink.take().unwrap(), [json!({"id": "b"})]);
    }
}
