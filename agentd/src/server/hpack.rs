//! HPACK (RFC 7541), as much as the workload socket's `:authority` repair needs (see
//! `authority.rs`): a decoder that follows a client's encoder (its dynamic table, its
//! Huffman-coded strings, its table size updates), and an encoder that writes every field
//! as a plain literal that is never added to the receiver's dynamic table, so the
//! receiver's table stays empty and can never disagree with anything.
//!
//! Everything is bounded: the dynamic table by the size the server allowed, a header list
//! by the limit the caller gives, integers to what fits the largest frame. Bad input is
//! an error, never a panic.

use std::collections::VecDeque;

/// Why a header block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HpackError {
    /// An integer ran past the end of the block, or was larger than any header block
    /// could need.
    #[error("an HPACK integer is truncated or too large")]
    Integer,
    /// A string ran past the end of the block.
    #[error("an HPACK string runs past the end of the header block")]
    Truncated,
    /// An index in neither the static nor the dynamic table (0 is never valid).
    #[error("HPACK index {0} is in neither the static nor the dynamic table")]
    BadIndex(usize),
    /// A Huffman-coded string that is not valid Huffman code (a bad code, the EOS symbol,
    /// or padding that is not a short run of 1 bits).
    #[error("an HPACK string is not valid Huffman code")]
    Huffman,
    /// A dynamic table size update over what the server allowed.
    #[error("HPACK dynamic table size update to {asked} bytes, over the {allowed} allowed")]
    TableSize {
        /// The size asked for.
        asked: usize,
        /// The size the server allowed (SETTINGS_HEADER_TABLE_SIZE).
        allowed: usize,
    },
    /// A dynamic table size update after a header field (it must come first).
    #[error("an HPACK dynamic table size update after a header field")]
    LateSizeUpdate,
    /// The decoded header list is over the limit.
    #[error("the header list is over {0} bytes")]
    TooLarge(usize),
}

/// One decoded header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Name, as sent (lowercase in HTTP/2; not checked here).
    pub name: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
    /// Sent as "never indexed" (RFC 7541 §6.2.3): kept so when re-encoded.
    pub never_indexed: bool,
}

impl Field {
    /// The size HPACK counts for the field: name and value plus 32 (RFC 7541 §4.1).
    pub fn size(&self) -> usize {
        self.name.len() + self.value.len() + 32
    }
}

/// The static table (RFC 7541 Appendix A), index 1 first.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The largest integer a block may carry. No length, index or table size in a header
/// block can be larger than a frame, and frames are at most 2^24 - 1 bytes: anything
/// bigger is an attack or garbage, refused before any arithmetic can overflow.
const MAX_INT: usize = 1 << 24;

/// A decoder that follows one client's HPACK encoder for the life of a connection.
#[derive(Debug)]
pub struct Decoder {
    /// Dynamic table, newest first.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// Its size as HPACK counts it.
    size: usize,
    /// Its current maximum, as the client last set it.
    max: usize,
    /// The most the client may set (the server's SETTINGS_HEADER_TABLE_SIZE).
    allowed: usize,
    /// The most a decoded header list may weigh (as [`Field::size`] counts).
    list_limit: usize,
}

impl Decoder {
    /// A decoder for a connection whose server allowed `allowed` bytes of dynamic table
    /// (the table starts at that size, RFC 7541 §4.2), refusing header lists over
    /// `list_limit`.
    pub fn new(allowed: usize, list_limit: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: allowed,
            allowed,
            list_limit,
        }
    }

    /// Decode one complete header block, updating the dynamic table as the client's
    /// encoder did.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, HpackError> {
        let mut fields = Vec::new();
        let mut weight = 0usize;
        let mut at = 0;
        while at < block.len() {
            let b = block[at];
            let field = if b & 0x80 != 0 {
                // Indexed field (§6.1).
                let (i, n) = integer(&block[at..], 7)?;
                at += n;
                let (name, value) = self.entry(i)?;
                Field {
                    name: name.to_vec(),
                    value: value.to_vec(),
                    never_indexed: false,
                }
            } else if b & 0xc0 == 0x40 {
                // Literal with incremental indexing (§6.2.1).
                let field = self.literal(block, &mut at, 6, false)?;
                self.insert(field.name.clone(), field.value.clone());
                field
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only before the first field.
                if !fields.is_empty() {
                    return Err(HpackError::LateSizeUpdate);
                }
                let (size, n) = integer(&block[at..], 5)?;
                at += n;
                if size > self.allowed {
                    return Err(HpackError::TableSize {
                        asked: size,
                        allowed: self.allowed,
                    });
                }
                self.max = size;
                self.evict(0);
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001) (§6.2.2-3).
                self.literal(block, &mut at, 4, b & 0x10 != 0)?
            };
            weight = weight.saturating_add(field.size());
            if weight > self.list_limit {
                return Err(HpackError::TooLarge(self.list_limit));
            }
            fields.push(field);
        }
        Ok(fields)
    }

    /// The entry at HPACK index `i` (static first, then dynamic newest first).
    fn entry(&self, i: usize) -> Result<(&[u8], &[u8]), HpackError> {
        if i == 0 {
            return Err(HpackError::BadIndex(0));
        }
        if let Some((n, v)) = STATIC.get(i - 1) {
            return Ok((n.as_bytes(), v.as_bytes()));
        }
        self.table
            .get(i - 1 - STATIC.len())
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .ok_or(HpackError::BadIndex(i))
    }

    /// A literal field whose name index has `prefix` bits.
    fn literal(
        &self,
        block: &[u8],
        at: &mut usize,
        prefix: u8,
        never_indexed: bool,
    ) -> Result<Field, HpackError> {
        let (i, n) = integer(&block[*at..], prefix)?;
        *at += n;
        let name = if i == 0 {
            string(block, at)?
        } else {
            self.entry(i)?.0.to_vec()
        };
        let value = string(block, at)?;
        Ok(Field {
            name,
            value,
            never_indexed,
        })
    }

    /// Add an entry, evicting the oldest to make room; one larger than the whole table
    /// empties it and is not added (RFC 7541 §4.4).
    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + 32;
        if size > self.max {
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front((name, value));
    }

    /// Evict the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }

    /// How many entries the dynamic table holds (for tests).
    #[cfg(test)]
    pub fn table_len(&self) -> usize {
        self.table.len()
    }
}

/// Decode an integer with a `prefix`-bit prefix (RFC 7541 §5.1) from the start of `buf`:
/// the value and how many bytes it took.
fn integer(buf: &[u8], prefix: u8) -> Result<(usize, usize), HpackError> {
    let mask = (1usize << prefix) - 1;
    let first = *buf.first().ok_or(HpackError::Integer)?;
    let mut value = usize::from(first) & mask;
    if value < mask {
        return Ok((value, 1));
    }
    let mut shift = 0u32;
    for (k, &b) in buf.iter().enumerate().skip(1) {
        // At most 28 bits of shift and a value kept under 2^24: no overflow anywhere.
        value += usize::try_from(u64::from(b & 0x7f) << shift).map_err(|_| HpackError::Integer)?;
        if value > MAX_INT {
            return Err(HpackError::Integer);
        }
        if b & 0x80 == 0 {
            return Ok((value, k + 1));
        }
        shift += 7;
        if shift > 28 {
            return Err(HpackError::Integer);
        }
    }
    Err(HpackError::Integer)
}

/// Decode a string literal (§5.2) at `*at`, moving `*at` past it.
fn string(block: &[u8], at: &mut usize) -> Result<Vec<u8>, HpackError> {
    let rest = block
        .get(*at..)
        .filter(|r| !r.is_empty())
        .ok_or(HpackError::Truncated)?;
    let huffman = rest.first().is_some_and(|b| b & 0x80 != 0);
    let (len, n) = integer(rest, 7)?;
    let raw = rest.get(n..n + len).ok_or(HpackError::Truncated)?;
    *at += n + len;
    if huffman {
        huffman_decode(raw)
    } else {
        Ok(raw.to_vec())
    }
}

/// Append `value` as an integer with a `prefix`-bit prefix whose other (high) bits are
/// `flags` (RFC 7541 §5.1).
fn put_integer(out: &mut Vec<u8>, flags: u8, prefix: u8, mut value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        // Fits in the prefix, so it fits in a byte.
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Append a raw (not Huffman-coded) string literal.
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Append `field` as a literal with a literal name that the receiver does not index:
/// "without indexing", or "never indexed" when it was sent so (RFC 7541 §6.2.2-3).
pub fn encode(field: &Field, out: &mut Vec<u8>) {
    out.push(if field.never_indexed { 0x10 } else { 0x00 });
    put_string(out, &field.name);
    put_string(out, &field.value);
}

/// The length in bits of each symbol's Huffman code, symbols 0-255 and EOS (256)
/// (RFC 7541 Appendix B). The code is canonical, so the codes follow from the lengths.
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

/// The longest code.
const HUFFMAN_MAX_LEN: usize = 30;

/// The canonical Huffman code laid out for decoding: for each length, the first code of
/// that length, how many codes have it, and where its symbols start in `symbols` (which
/// lists every symbol by code length, then by symbol).
#[derive(Debug)]
struct Canonical {
    first: [u32; HUFFMAN_MAX_LEN + 1],
    count: [u32; HUFFMAN_MAX_LEN + 1],
    start: [u16; HUFFMAN_MAX_LEN + 1],
    symbols: [u16; 257],
}

/// Lay out the canonical code from [`HUFFMAN_LENGTHS`] (RFC 1951 §3.2.2's construction).
const fn canonical() -> Canonical {
    let mut c = Canonical {
        first: [0; HUFFMAN_MAX_LEN + 1],
        count: [0; HUFFMAN_MAX_LEN + 1],
        start: [0; HUFFMAN_MAX_LEN + 1],
        symbols: [0; 257],
    };
    let mut s = 0;
    while s < 257 {
        c.count[HUFFMAN_LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let mut code = 0u32;
    let mut next = 0u16;
    let mut len = 1;
    while len <= HUFFMAN_MAX_LEN {
        code = (code + c.count[len - 1]) << 1;
        c.first[len] = code;
        c.start[len] = next;
        let mut s = 0;
        while s < 257 {
            if HUFFMAN_LENGTHS[s] as usize == len {
                c.symbols[next as usize] = s as u16;
                next += 1;
            }
            s += 1;
        }
        len += 1;
    }
    c
}

const CANONICAL: Canonical = canonical();

/// Decode a Huffman-coded string (RFC 7541 §5.2): bit by bit, a symbol ends where the
/// code read so far is one of its length's codes.
fn huffman_decode(raw: &[u8]) -> Result<Vec<u8>, HpackError> {
    let c = &CANONICAL;
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in raw {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            let offset = code.wrapping_sub(c.first[len]);
            if code >= c.first[len] && offset < c.count[len] {
                let symbol = c.symbols[usize::from(c.start[len]) + offset as usize];
                // EOS inside a string is an error (§5.2); every other symbol is a byte.
                out.push(u8::try_from(symbol).map_err(|_| HpackError::Huffman)?);
                code = 0;
                len = 0;
            } else if len == HUFFMAN_MAX_LEN {
                return Err(HpackError::Huffman);
            }
        }
    }
    // The padding: fewer than 8 bits, all 1 (a prefix of EOS).
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HpackError::Huffman);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests;
