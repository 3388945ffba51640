//! One line for an error and its causes, for logs and problem reports. Its own module
//! so that the object sources (`source/`) need nothing of the proxier.

/// Formats an error with its causes: `outer: cause: root cause`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
