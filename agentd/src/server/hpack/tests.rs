//! HPACK decoding against the examples of RFC 7541 Appendix C, the encoder against the
//! decoder, and bad input.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn pairs(fields: &[Field]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|f| {
            (
                String::from_utf8_lossy(&f.name).into_owned(),
                String::from_utf8_lossy(&f.value).into_owned(),
            )
        })
        .collect()
}

fn want(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// Huffman-code `s` with the code the decoder uses (for building client-like blocks).
pub(crate) fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let c = &CANONICAL;
    let mut codes = [(0u32, 0usize); 257];
    for len in 1..=HUFFMAN_MAX_LEN {
        for i in 0..c.count[len] {
            let symbol = c.symbols[usize::from(c.start[len]) + i as usize];
            codes[usize::from(symbol)] = (c.first[len] + i, len);
        }
    }
    let (mut bits, mut n, mut out) = (0u64, 0usize, Vec::new());
    for &b in s {
        let (code, len) = codes[usize::from(b)];
        bits = (bits << len) | u64::from(code);
        n += len;
        while n >= 8 {
            out.push((bits >> (n - 8)) as u8);
            n -= 8;
        }
    }
    if n > 0 {
        let pad = 8 - n;
        out.push(((bits << pad) | ((1 << pad) - 1)) as u8);
    }
    out
}

#[test]
fn the_huffman_code_is_the_one_of_rfc_7541() {
    // Appendix C.4.1: "www.example.com".
    assert_eq!(
        huffman_decode(&hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")).expect("decodes"),
        b"www.example.com"
    );
    // Appendix C.4.2: "no-cache"; C.4.3: "custom-key", "custom-value".
    assert_eq!(
        huffman_decode(&hex("a8eb 1064 9cbf")).expect("decodes"),
        b"no-cache"
    );
    assert_eq!(
        huffman_decode(&hex("25a8 49e9 5ba9 7d7f")).expect("decodes"),
        b"custom-key"
    );
    assert_eq!(
        huffman_decode(&hex("25a8 49e9 5bb8 e8b4 bf")).expect("decodes"),
        b"custom-value"
    );
    // Appendix C.6.1: a response date and a URL.
    assert_eq!(
        huffman_decode(&hex(
            "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff"
        ))
        .expect("decodes"),
        b"Mon, 21 Oct 2013 20:13:21 GMT"
    );
    // The EOS code is 30 ones; the codes of ' ' and '0' are 010100 and 00000.
    assert_eq!(CANONICAL.first[30] + CANONICAL.count[30] - 1, 0x3fff_ffff);
    assert_eq!(huffman_encode(b" "), vec![0b0101_0011]);
    assert_eq!(huffman_encode(b"0"), vec![0b0000_0111]);
    // Every byte round-trips.
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(huffman_decode(&huffman_encode(&all)).expect("decodes"), all);
}

#[test]
fn bad_huffman_is_an_error() {
    // Padding of 8 ones or more.
    let mut s = huffman_encode(b"abc");
    s.push(0xff);
    assert_eq!(huffman_decode(&s), Err(HpackError::Huffman));
    // Padding that is not all ones: '0' is 00000, padded with 000.
    assert_eq!(huffman_decode(&[0b0000_0000]), Err(HpackError::Huffman));
    // The EOS symbol inside the string.
    assert_eq!(
        huffman_decode(&[0xff, 0xff, 0xff, 0xfc]),
        Err(HpackError::Huffman)
    );
    assert_eq!(huffman_decode(&[]), Ok(Vec::new()));
}

#[test]
fn requests_of_rfc_7541_c3_and_c4_decode_with_the_dynamic_table() {
    for (first, second, third) in [
        // C.3: without Huffman coding.
        (
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ),
        // C.4: the same with Huffman coding.
        (
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ),
    ] {
        let mut d = Decoder::new(4096, 64 * 1024);
        let f = d.decode(&hex(first)).expect("first request");
        assert_eq!(
            pairs(&f),
            want(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ])
        );
        assert_eq!((d.table_len(), d.size), (1, 57));
        let f = d.decode(&hex(second)).expect("second request");
        assert_eq!(
            pairs(&f),
            want(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        assert_eq!((d.table_len(), d.size), (2, 110));
        let f = d.decode(&hex(third)).expect("third request");
        assert_eq!(
            pairs(&f),
            want(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!((d.table_len(), d.size), (3, 164));
    }
}

#[test]
fn entries_are_evicted_oldest_first_and_size_updates_apply() {
    // A table of 100 bytes holds one 57-byte entry at a time.
    let mut d = Decoder::new(4096, 64 * 1024);
    let mut block = vec![0x3f, 0x45]; // size update to 100 (5-bit prefix: 31 + 69)
    block.extend(hex("4101 61")); // :authority "a" (name index 1, 43 bytes)
    block.extend(hex("4101 62")); // :authority "b"
    let f = d.decode(&block).expect("decodes");
    assert_eq!(f.len(), 2);
    assert_eq!(d.table_len(), 2, "43 + 43 fit in 100");
    let f = d.decode(&hex("4101 63 be bf")).expect("decodes");
    assert_eq!(d.table_len(), 2, "the oldest went");
    assert_eq!(
        (f[1].value.as_slice(), f[2].value.as_slice()),
        (&b"c"[..], &b"b"[..]),
        "index 62 is the newest entry"
    );
    assert_eq!(d.decode(&hex("c0")), Err(HpackError::BadIndex(64)));
    // A size update to 0 empties the table.
    d.decode(&hex("20")).expect("size update");
    assert_eq!((d.table_len(), d.size), (0, 0));
    assert_eq!(d.decode(&hex("be")), Err(HpackError::BadIndex(62)));
    // An entry bigger than the table empties it and is not added.
    let mut d = Decoder::new(40, 64 * 1024);
    d.decode(&hex("4101 61")).expect("decodes");
    assert_eq!(d.table_len(), 0);
}

#[test]
fn size_updates_are_bounded_and_come_first() {
    let mut d = Decoder::new(4096, 64 * 1024);
    // 4097 = 31 + 4066 = 31 + 0x7e2 -> 3f e2 1f
    assert_eq!(
        d.decode(&hex("3fe21f")),
        Err(HpackError::TableSize {
            asked: 4097,
            allowed: 4096
        })
    );
    d.decode(&hex("3fe11f")).expect("4096 is allowed");
    assert_eq!(d.decode(&hex("82 20")), Err(HpackError::LateSizeUpdate));
}

#[test]
fn never_indexed_is_kept_and_the_encoder_round_trips() {
    let fields = vec![
        Field {
            name: b":authority".to_vec(),
            value: b"localhost".to_vec(),
            never_indexed: false,
        },
        Field {
            name: b"authorization".to_vec(),
            value: vec![b'x'; 300],
            never_indexed: true,
        },
        Field {
            name: vec![b'n'; 200],
            value: Vec::new(),
            never_indexed: false,
        },
    ];
    let mut block = Vec::new();
    for f in &fields {
        encode(f, &mut block);
    }
    assert_eq!(block[0], 0x00, "literal without indexing, literal name");
    let mut d = Decoder::new(4096, 64 * 1024);
    assert_eq!(d.decode(&block).expect("decodes"), fields);
    assert_eq!(d.table_len(), 0, "nothing the encoder writes is indexed");
    // Never indexed with an indexed name (0001 + 4-bit index 1): kept as such.
    let f = d.decode(&hex("11 03 616263")).expect("decodes");
    assert!(f[0].never_indexed);
    assert_eq!(f[0].name, b":authority");
}

#[test]
fn bad_blocks_are_errors() {
    let mut d = Decoder::new(4096, 64 * 1024);
    assert_eq!(d.decode(&hex("80")), Err(HpackError::BadIndex(0)));
    assert_eq!(d.decode(&hex("ff")), Err(HpackError::Integer), "truncated");
    assert_eq!(
        d.decode(&hex("ff ff ff ff ff ff 01")),
        Err(HpackError::Integer),
        "too large"
    );
    assert_eq!(d.decode(&hex("40 05 6162")), Err(HpackError::Truncated));
    assert_eq!(d.decode(&hex("41 05 6162")), Err(HpackError::Truncated));
    assert_eq!(d.decode(&hex("40")), Err(HpackError::Truncated));
    assert_eq!(d.decode(&hex("41 81 00")), Err(HpackError::Huffman));
    // A header list over the limit.
    let mut d = Decoder::new(4096, 100);
    assert_eq!(
        d.decode(&hex("82 82 82")),
        Err(HpackError::TooLarge(100)),
        "3 x 42 bytes"
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A small deterministic generator: no test dependency needed.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut d = Decoder::new(4096, 64 * 1024);
    for _ in 0..20_000 {
        let len = (next() % 64) as usize;
        let block: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = d.decode(&block);
        let _ = huffman_decode(&block);
        assert!(d.size <= d.max && d.max <= 4096);
    }
}
