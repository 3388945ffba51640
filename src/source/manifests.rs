//! Objects from files, directories or stdin: YAML (multi-document) or JSON (single
//! objects or a `List`), as `kubectl get -o yaml|json` prints them.
//!
//! One bad input never hides the good ones: a YAML document that does not parse is
//! skipped on its own (the others of its file still load), and a directory entry that
//! cannot be read is skipped on its own. Each skip becomes a [`Problem`] naming the file,
//! the document and the reason. Streams (stdin, a FIFO named on the command line) are
//! read once and kept, because reading them again at EOF would look like an empty
//! cluster and delete every Service.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::Value;

use crate::model::objects::ApiKind;
use crate::model::{Object, Problem};

/// Deepest nesting of a document we parse. Kubernetes objects, `managedFields`
/// included, stay below 20; YAML's parser takes time quadratic in the nesting depth
/// (a 200 KB line of `[` takes minutes), so deeper documents are refused by a linear
/// scan before the parser sees them.
pub const MAX_DEPTH: usize = 64;

/// Errors reading manifests (a path named on the command line that cannot be read).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path could not be read.
    #[error("cannot read {path}")]
    Read {
        /// the path
        path: PathBuf,
        /// the cause
        #[source]
        source: std::io::Error,
    },
}

/// Objects read, and problems with individual documents or objects.
#[derive(Debug, Default)]
pub struct Loaded {
    /// the objects we understand
    pub objects: Vec<Object>,
    /// documents or objects that were skipped, with the reason
    pub problems: Vec<Problem>,
}

fn read_error(path: &Path, source: std::io::Error) -> Error {
    Error::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a directory entry's name says it holds manifests.
fn manifest_name(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// A directory's manifest files in name order, and the entries skipped (with why).
/// Only regular files (also through symlinks) are kept: opening a FIFO would block
/// the sync loop until some other program writes to it.
fn expand_dir(dir: &Path) -> Result<(Vec<PathBuf>, Vec<Problem>), Error> {
    let rd = std::fs::read_dir(dir).map_err(|e| read_error(dir, e))?;
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for entry in rd {
        let path = match entry {
            Ok(e) => e.path(),
            Err(e) => {
                skipped.push(Problem {
                    object: dir.display().to_string(),
                    reason: format!("cannot list an entry: {e}; skipped"),
                });
                continue;
            }
        };
        if !manifest_name(&path) {
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => files.push(path),
            Ok(m) => skipped.push(Problem {
                object: path.display().to_string(),
                reason: format!("not a regular file ({}); skipped", file_kind(&m)),
            }),
            // Gone between listing and reading (e.g. a ConfigMap volume swapping its
            // files): its objects are gone too, which is what the next list shows.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && path.symlink_metadata().is_err() => {
            }
            Err(e) => skipped.push(Problem {
                object: path.display().to_string(),
                reason: format!("cannot read: {e}; skipped"),
            }),
        }
    }
    files.sort();
    skipped.sort_by(|a, b| a.object.cmp(&b.object));
    Ok((files, skipped))
}

fn file_kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// The files a path stands for: a file itself, or a directory's `.yaml`, `.yml` and
/// `.json` regular files in name order.
pub fn expand(path: &Path) -> Result<Vec<PathBuf>, Error> {
    if path.as_os_str() == "-" {
        return Ok(vec![path.to_path_buf()]);
    }
    let meta = std::fs::metadata(path).map_err(|e| read_error(path, e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    expand_dir(path).map(|(files, _)| files)
}

/// What reading a stream gave, kept for the life of the process (an `io::Error` is
/// not `Clone`, so its kind and text are kept).
type Cached = Result<Arc<str>, (std::io::ErrorKind, String)>;

static STREAMS: LazyLock<Mutex<HashMap<PathBuf, Cached>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn read_all(mut r: impl Read) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes)?;
    String::from_utf8(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()))
}

/// Reads stdin (`-`) or a stream named on the command line once; later calls return
/// the same text (or the same error). A stream read again is at EOF, which would look
/// like a cluster without objects.
fn read_stream(path: &Path) -> Result<Arc<str>, Error> {
    let mut streams = match STREAMS.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let cached = streams.entry(path.to_path_buf()).or_insert_with(|| {
        let text = if path.as_os_str() == "-" {
            read_all(std::io::stdin().lock())
        } else {
            std::fs::File::open(path).and_then(read_all)
        };
        match text {
            Ok(t) => {
                tracing::info!(
                    path = %path.display(),
                    "read a stream once; later changes to it are not seen"
                );
                Ok(Arc::from(t))
            }
            Err(e) => Err((e.kind(), e.to_string())),
        }
    });
    cached
        .clone()
        .map_err(|(kind, msg)| read_error(path, std::io::Error::new(kind, msg)))
}

/// Reads one path named on the command line: a stream once (see [`read_stream`]), a
/// regular file each time.
fn read_named(path: &Path) -> Result<Arc<str>, Error> {
    if path.as_os_str() == "-" {
        return read_stream(path);
    }
    let meta = std::fs::metadata(path).map_err(|e| read_error(path, e))?;
    if meta.is_file() {
        std::fs::File::open(path)
            .and_then(read_all)
            .map(Arc::from)
            .map_err(|e| read_error(path, e))
    } else {
        read_stream(path)
    }
}

/// Reads a directory entry that must be a regular file. It is opened without
/// blocking and checked on the open descriptor, so an entry replaced by a FIFO after
/// the listing still cannot stall the sync loop.
fn read_regular(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", file_kind(&m)),
        ));
    }
    read_all(f)
}

/// Reads every path (`-` is stdin). A path named here that cannot be read is an
/// error (nothing is synced from a half-read input); an entry of a named directory
/// that cannot be read is skipped with a problem.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, Error> {
    let mut out = Loaded::default();
    for p in paths {
        let is_dir =
            p.as_os_str() != "-" && std::fs::metadata(p).map_err(|e| read_error(p, e))?.is_dir();
        if !is_dir {
            let text = read_named(p)?;
            parse_into(&text, &p.display().to_string(), &mut out);
            continue;
        }
        let (files, skipped) = expand_dir(p)?;
        out.problems.extend(skipped);
        for file in files {
            match read_regular(&file) {
                Ok(text) => parse_into(&text, &file.display().to_string(), &mut out),
                // Removed since the listing: as in `expand_dir`.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => out.problems.push(Problem {
                    object: file.display().to_string(),
                    reason: format!("cannot read: {e}; skipped"),
                }),
            }
        }
    }
    Ok(out)
}

/// One YAML document of a file: its text and where it starts.
struct Doc<'a> {
    /// 1-based, counting the documents of the file
    index: usize,
    /// 1-based line of the file where the document starts
    line: usize,
    text: &'a str,
}

/// Whether `line` is the marker `marker` (`---` or `...`), alone or followed by
/// whitespace (`--- !tag`, `--- |`).
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Whether a chunk holds nothing but blank lines, comments and (if allowed)
/// directives.
fn only_trivia(text: &str, directives_too: bool) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || (directives_too && l.starts_with('%'))
    })
}

/// Splits a YAML stream into its documents, so that each parses on its own and one
/// that fails cannot take the rest of the stream with it. YAML forbids `---` and `...`
/// at the start of a line inside any scalar (the spec's `c-forbidden`), so cutting at
/// those lines never cuts inside a document.
fn split_documents(text: &str) -> Vec<Doc<'_>> {
    fn push<'a>(docs: &mut Vec<Doc<'a>>, text: &'a str, line: usize, explicit: bool) {
        if explicit || !only_trivia(text, false) {
            docs.push(Doc {
                index: docs.len() + 1,
                line,
                text,
            });
        }
    }
    let mut docs = Vec::new();
    // (start offset, start line, whether it began with `---`)
    let mut cur = (0usize, 1usize, false);
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let next = offset + line.len();
        if is_marker(line, "---") {
            // Directives (`%YAML 1.2`) belong to the document they precede.
            if cur.2 || !only_trivia(&text[cur.0..offset], true) {
                push(&mut docs, &text[cur.0..offset], cur.1, cur.2);
                cur = (offset, i + 1, true);
            } else {
                cur.2 = true;
            }
        } else if is_marker(line, "...") {
            push(&mut docs, &text[cur.0..next], cur.1, cur.2);
            cur = (next, i + 2, false);
        }
        offset = next;
    }
    push(&mut docs, &text[cur.0..], cur.1, cur.2);
    docs
}

/// Checks in one pass that a document nests at most `limit` levels (block
/// indentation, `- ` entries, flow brackets); on failure returns the 1-based line
/// where the limit was passed. This is an estimate of the parser's depth that skips
/// quoted strings, comments and block scalars (`|`, `>`), so that brackets in text
/// do not count; it does not validate anything.
pub fn nesting_within(text: &str, limit: usize) -> Result<(), usize> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut quote: Option<u8> = None;
    // The indentation of the line that opened a block scalar: its content is every
    // following line that is blank or indented further.
    let mut block_scalar: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let b = line.as_bytes();
        let indent = b.iter().take_while(|c| **c == b' ').count();
        if let Some(parent) = block_scalar {
            if line.trim().is_empty() || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let mut i = indent;
        let mut token_start = true;
        if quote.is_none() && flow == 0 {
            let rest = line[indent..].trim_end();
            if rest.is_empty() || rest.starts_with('#') {
                continue;
            }
            while indents.last().is_some_and(|top| *top > indent) {
                indents.pop();
            }
            if indents.last() != Some(&indent) {
                indents.push(indent);
            }
            // `- - x` and `? x`: each indicator opens a level at the column after it.
            while i < b.len()
                && matches!(b[i], b'-' | b'?')
                && b.get(i + 1).is_none_or(|c| *c == b' ')
            {
                i += 1;
                while i < b.len() && b[i] == b' ' {
                    i += 1;
                }
                indents.push(i);
            }
            if indents.len() > limit {
                return Err(n + 1);
            }
        }
        while i < b.len() {
            let c = b[i];
            match quote {
                Some(b'"') => {
                    if c == b'\\' {
                        i += 1;
                    } else if c == b'"' {
                        quote = None;
                        token_start = false;
                    }
                    i += 1;
                    continue;
                }
                Some(q) => {
                    if c == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 1;
                        } else {
                            quote = None;
                            token_start = false;
                        }
                    }
                    i += 1;
                    continue;
                }
                None => {}
            }
            match c {
                b'#' if i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t' => break,
                b' ' | b'\t' => {}
                b'"' | b'\'' if token_start => quote = Some(c),
                b'[' | b'{' if token_start || flow > 0 => {
                    flow += 1;
                    if indents.len() + flow > limit {
                        return Err(n + 1);
                    }
                    token_start = true;
                }
                b']' | b'}' if flow > 0 => {
                    flow -= 1;
                    token_start = false;
                }
                b',' if flow > 0 => token_start = true,
                b':' if flow > 0 || b.get(i + 1).is_none_or(|c| *c == b' ' || *c == b'\t') => {
                    token_start = true
                }
                b'&' | b'!' if token_start => {
                    // An anchor or a tag: a token of its own before the node.
                    while i < b.len() && b[i] != b' ' {
                        i += 1;
                    }
                    continue;
                }
                b'|' | b'>' if token_start && flow == 0 => {
                    block_scalar = Some(indent);
                    break;
                }
                _ => token_start = false,
            }
            i += 1;
        }
    }
    Ok(())
}

/// A parser error with positions in the file: the parser counts lines from the start
/// of the document it was given, so every `line N` of its message is shifted.
fn yaml_error(e: &serde_yaml_ng::Error, doc_line: usize) -> String {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("line ") {
        let (before, after) = rest.split_at(i + "line ".len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + doc_line - 1).to_string()),
            Err(_) => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// Parses one file's text (YAML or JSON) into objects. A document that fails is
/// skipped with a problem naming `origin`, its index and line, and the reason; the
/// file's other documents still load.
pub fn parse_into(text: &str, origin: &str, out: &mut Loaded) {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // serde_json refuses nesting past 128 levels in linear time. The file's
        // objects are kept only once all of it parsed (a syntax error skips the file).
        let mut staged = Loaded::default();
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = serde::de::DeserializeSeed::deserialize(
            Streamed {
                origin,
                out: &mut staged,
            },
            &mut de,
        )
        .and_then(|()| de.end());
        match parsed {
            Ok(()) => {
                out.objects.append(&mut staged.objects);
                out.problems.append(&mut staged.problems);
            }
            Err(e) => out.problems.push(Problem {
                object: origin.to_string(),
                reason: format!("not valid JSON: {e}; file skipped"),
            }),
        }
        return;
    }
    for doc in split_documents(text) {
        let object = format!("{origin} document {} (line {})", doc.index, doc.line);
        if let Err(line) = nesting_within(doc.text, MAX_DEPTH) {
            out.problems.push(Problem {
                object,
                reason: format!(
                    "nested deeper than {MAX_DEPTH} levels at line {}; skipped",
                    doc.line + line - 1
                ),
            });
            continue;
        }
        for d in serde_yaml_ng::Deserializer::from_str(doc.text) {
            use serde::Deserialize;
            match Value::deserialize(d) {
                Ok(Value::Null) => {}
                Ok(v) => add_value(v, origin, out),
                Err(e) => {
                    out.problems.push(Problem {
                        object: object.clone(),
                        reason: format!("not valid YAML: {}; skipped", yaml_error(&e, doc.line)),
                    });
                    // The parser cannot resume after an error: the rest of this
                    // document is lost, the next document starts afresh.
                    break;
                }
            }
        }
    }
}

/// A JSON file read without building a tree of all of it: the elements of a top-level
/// array and the `items` of a List are each parsed into a [`Value`] of their own and
/// converted one at a time, exactly as [`add_value`] treats them in a whole tree.
struct Streamed<'a> {
    origin: &'a str,
    out: &'a mut Loaded,
}

impl<'de> serde::de::DeserializeSeed<'de> for Streamed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Streamed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    // A scalar is not an object: nothing to add (as in `add_value`).
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Streamed { origin, out } = self;
        while seq
            .next_element_seed(Streamed {
                origin,
                out: &mut *out,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Streamed { origin, out } = self;
        let mut fields = serde_json::Map::new();
        // `items`, when it is a list: its objects, converted as they were read (kept
        // only if this turns out to be a List; the last `items` key wins, as in a tree)
        let mut items: Option<Loaded> = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                let mut staged = Loaded::default();
                match map.next_value_seed(Items {
                    origin,
                    out: &mut staged,
                })? {
                    Some(v) => {
                        fields.insert(key, v);
                        items = None;
                    }
                    None => {
                        fields.remove(&key);
                        items = Some(staged);
                    }
                }
            } else {
                let v: Value = map.next_value()?;
                fields.insert(key, v);
            }
        }
        let kind = fields.get("kind").and_then(Value::as_str).unwrap_or("");
        let has_items = items.is_some() || fields.contains_key("items");
        if kind == "List" || (kind.ends_with("List") && has_items) {
            if let Some(mut staged) = items {
                out.objects.append(&mut staged.objects);
                out.problems.append(&mut staged.problems);
            }
        } else {
            // Not a List: its `items` list (dropped) is no field of the kinds the
            // proxy reads, so the object converts as it would with it.
            add_value(Value::Object(fields), origin, out);
        }
        Ok(())
    }
}

/// The value of an `items` key: a list is converted element by element (`None`
/// returned); anything else is returned as it is.
struct Items<'a> {
    origin: &'a str,
    out: &'a mut Loaded,
}

impl<'de> serde::de::DeserializeSeed<'de> for Items<'_> {
    type Value = Option<Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Items<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Some(Value::Null))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        use serde::Deserialize;
        Value::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while let Some(v) = seq.next_element::<Value>()? {
            add_value(v, self.origin, self.out);
        }
        Ok(None)
    }
}

/// One object of a kind the proxy reads. A file's `resourceVersion` is dropped: it is
/// not the proxy's business, and keeping it would count a re-export as a change.
fn lean<T: ApiKind>(v: Value) -> Result<Box<T>, serde_json::Error> {
    let mut o: T = crate::model::objects::from_object(v)?;
    o.take_resource_version();
    Ok(Box::new(o))
}

fn add_value(mut v: Value, origin: &str, out: &mut Loaded) {
    if let Value::Array(items) = v {
        for i in items {
            add_value(i, origin, out);
        }
        return;
    }
    let kind = v
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    if kind == "List" || (kind.ends_with("List") && v.get("items").is_some()) {
        // Taken, not cloned: a List is usually the whole file.
        if let Some(Value::Array(items)) = v.get_mut("items").map(Value::take) {
            for i in items {
                add_value(i, origin, out);
            }
        }
        return;
    }
    let api = v
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    let name = format!(
        "{kind} {}/{}",
        v.pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .unwrap_or(""),
        v.pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
    );
    let parsed = match (api.as_str(), kind.as_str()) {
        ("v1", "Service") => lean(v).map(|o| Some(Object::Service(o))),
        ("discovery.k8s.io/v1", "EndpointSlice") => lean(v).map(|o| Some(Object::EndpointSlice(o))),
        ("v1", "Node") => lean(v).map(|o| Some(Object::Node(o))),
        ("networking.k8s.io/v1", "ServiceCIDR") => lean(v).map(|o| Some(Object::ServiceCidr(o))),
        _ => {
            tracing::debug!(object = %name, origin, "ignoring object of a kind the proxy does not watch");
            Ok(None)
        }
    };
    match parsed {
        Ok(Some(o)) => out.objects.push(o),
        Ok(None) => {}
        Err(e) => out.problems.push(Problem {
            object: format!("{name} ({origin})"),
            reason: format!("malformed: {e}; skipped"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_multi_doc_and_json_list() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: \"eighty\"}]}\n";
        let mut out = Loaded::default();
        parse_into(yaml, "t.yaml", &mut out);
        assert_eq!(out.objects.len(), 1);
        assert_eq!(out.problems.len(), 1, "{:?}", out.problems);
        assert!(out.problems[0].object.contains("Service /b"));

        let json = r#"{"kind":"List","items":[{"apiVersion":"v1","kind":"Node","metadata":{"name":"n"}},
            {"apiVersion":"networking.k8s.io/v1","kind":"ServiceCIDR","metadata":{"name":"c"},"spec":{"cidrs":["10.96.0.0/12"]}}]}"#;
        let mut out = Loaded::default();
        parse_into(json, "t.json", &mut out);
        assert_eq!(out.objects.len(), 2);
        let mut out = Loaded::default();
        parse_into("{not json", "bad.json", &mut out);
        assert_eq!(out.problems.len(), 1);
    }
}

#[cfg(test)]
mod hardening_tests {
    use super::*;

    const SVC_A: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n";
    const SVC_B: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: ns}\nspec: {clusterIP: 10.0.0.2, ports: [{port: 80}]}\n";

    fn names(out: &Loaded) -> Vec<String> {
        out.objects
            .iter()
            .map(|o| match o {
                Object::Service(s) => s.metadata.name.to_string(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn a_bad_document_skips_only_itself() {
        let bad = [
            ("syntax", "data: {x: [unclosed}\n"),
            ("tag", "data: !foo {x: 1}\n"),
            ("big number", "data: {x: 123456789012345678901234567890}\n"),
            (
                "alias bomb",
                "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n",
            ),
            ("deep", &format!("x: {}\n", "[".repeat(10_000))),
        ];
        for (what, doc) in bad {
            let text = format!("{SVC_A}---\napiVersion: v1\nkind: ConfigMap\n{doc}---\n{SVC_B}");
            let mut out = Loaded::default();
            parse_into(&text, "f.yaml", &mut out);
            assert_eq!(names(&out), ["a", "b"], "{what}: {:?}", out.problems);
            assert_eq!(out.problems.len(), 1, "{what}: {:?}", out.problems);
            assert!(
                out.problems[0]
                    .object
                    .starts_with("f.yaml document 2 (line 5)"),
                "{what}: {:?}",
                out.problems
            );
        }
    }

    #[test]
    fn documents_split_where_yaml_does() {
        let text =
            "# c\n%YAML 1.2\n---\na: 1\n...\nb: 2\n--- |\n  text [\n---\n---\n# only a comment\n";
        let docs = split_documents(text);
        let got: Vec<(usize, usize, &str)> =
            docs.iter().map(|d| (d.index, d.line, d.text)).collect();
        assert_eq!(
            got,
            [
                (1, 1, "# c\n%YAML 1.2\n---\na: 1\n...\n"),
                (2, 6, "b: 2\n"),
                (3, 7, "--- |\n  text [\n"),
                (4, 9, "---\n"),
                (5, 10, "---\n# only a comment\n"),
            ]
        );
        // A document that parsed together parses the same apart.
        for d in &docs {
            for de in serde_yaml_ng::Deserializer::from_str(d.text) {
                use serde::Deserialize;
                assert!(Value::deserialize(de).is_ok(), "{:?}", d.text);
            }
        }
        assert!(split_documents("").is_empty());
        assert!(split_documents("# nothing\n\n").is_empty());
        // `---x` is a plain scalar, not a marker.
        assert_eq!(split_documents("a: 1\n---x: 2\n").len(), 1);
    }

    #[test]
    fn nesting_counts_structure_not_text() {
        let ok = [
            "a: \"[[[[[[[[[[\"\nb: '{{{{{{{{{{'\nc: x[[[[[[[[[[[\n",
            "script: |\n  if [ x ]; then [[[[[[[[[[[[[[[\n    deep\n      deeper\n        deepest\nnext: 1\n",
            "a: 'it''s [[[[[[[[[[['\n# [[[[[[[[[[[[[\nb: c # [[[[[[[[[[[[\n",
            "k: \"multi\n  line [[[[[[[[[[[[[\n  end\"\n",
        ];
        for t in ok {
            assert_eq!(nesting_within(t, 4), Ok(()), "{t:?}");
        }
        assert_eq!(nesting_within("a: [[[[[1]]]]]\n", 4), Err(1));
        assert_eq!(
            nesting_within("a:\n b:\n  c:\n   d:\n    e: 1\n", 4),
            Err(5)
        );
        assert_eq!(nesting_within("- - - - - x\n", 4), Err(1));
        assert_eq!(nesting_within("a: !t &x {b: [1]}\n", 4), Ok(()));
        assert_eq!(nesting_within("a: !t &x {b: [[[[1]]]]}\n", 4), Err(1));
    }

    #[test]
    fn nesting_check_is_linear() {
        // The parser alone takes minutes on this; the check must refuse it at once.
        let text = format!("a: {}", "[".repeat(1 << 20));
        let t = std::time::Instant::now();
        let mut out = Loaded::default();
        parse_into(&text, "deep.yaml", &mut out);
        assert_eq!(out.problems.len(), 1);
        assert!(
            out.problems[0].reason.contains("nested deeper"),
            "{:?}",
            out.problems
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
    }
}
