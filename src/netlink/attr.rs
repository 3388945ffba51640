//! Netlink attributes (TLVs), read: one parser for every netlink family we speak
//! (nf_tables, ctnetlink, ipset, generic netlink, rtnetlink, trace events).

#![forbid(unsafe_code)]

/// The attributes in `b` as (type without the nested/byte-order flags, value); stops at
/// the first one whose length does not fit.
pub fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = b;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let v = &rest[4..len];
        rest = &rest[((len + 3) & !3).min(rest.len())..];
        Some((ty, v))
    })
}

/// The value of the first attribute of type `ty` in `b`.
pub fn find(b: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(b).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_padded_nested_and_truncated() {
        // type 1 "ab" (padded to 8), type 0x8002 (nested flag) empty, then a truncated one.
        let b = [6, 0, 1, 0, b'a', b'b', 0, 0, 4, 0, 2, 0x80, 9, 0, 3, 0];
        let got: Vec<(u16, &[u8])> = attrs(&b).collect();
        assert_eq!(got, vec![(1, &b"ab"[..]), (2, &[][..])]);
        assert_eq!(find(&b, 2), Some(&[][..]));
        assert_eq!(find(&b, 3), None);
    }
}
