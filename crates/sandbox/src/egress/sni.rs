//! The server name a TLS ClientHello asks for, read from the first bytes a
//! client sends through a CONNECT tunnel, so that a tunnel opened to one
//! allowed host cannot carry a handshake for another (domain fronting
//! through a CDN address that host shares).

/// What the first bytes of a tunnel say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed to decide.
    Incomplete,
    /// Not a TLS handshake at all.
    NotTls,
    /// A ClientHello, with its server name if it sends one.
    Tls(Option<String>),
}

/// The handshake bytes of consecutive TLS handshake records.
fn handshake_bytes(data: &[u8]) -> Result<Vec<u8>, Hello> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= data.len() {
        if data[at] != 0x16 || data[at + 1] != 0x03 {
            return Err(Hello::NotTls);
        }
        let len = usize::from(u16::from_be_bytes([data[at + 3], data[at + 4]]));
        if at + 5 + len > data.len() {
            out.extend_from_slice(&data[at + 5..]);
            return Ok(out);
        }
        out.extend_from_slice(&data[at + 5..at + 5 + len]);
        at += 5 + len;
    }
    if at == 0 && !data.is_empty() && data[0] != 0x16 {
        return Err(Hello::NotTls);
    }
    Ok(out)
}

/// Reads `n` bytes at `*at` of `b`.
fn take<'a>(b: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
    let slice = b.get(*at..*at + n)?;
    *at += n;
    Some(slice)
}

fn u16_at(b: &[u8], at: &mut usize) -> Option<usize> {
    take(b, at, 2).map(|s| usize::from(u16::from_be_bytes([s[0], s[1]])))
}

/// The server name of a whole ClientHello message body.
fn server_name(hello: &[u8]) -> Option<Option<String>> {
    let mut at = 0;
    take(hello, &mut at, 2 + 32)?; // version, random
    let session = usize::from(*take(hello, &mut at, 1)?.first()?);
    take(hello, &mut at, session)?;
    let suites = u16_at(hello, &mut at)?;
    take(hello, &mut at, suites)?;
    let compression = usize::from(*take(hello, &mut at, 1)?.first()?);
    take(hello, &mut at, compression)?;
    if at == hello.len() {
        return Some(None); // no extensions at all
    }
    let extensions_len = u16_at(hello, &mut at)?;
    let extensions = take(hello, &mut at, extensions_len)?;
    let mut e = 0;
    while e < extensions.len() {
        let kind = u16_at(extensions, &mut e)?;
        let len = u16_at(extensions, &mut e)?;
        let body = take(extensions, &mut e, len)?;
        if kind == 0 {
            let mut s = 2; // the list's length
            let name_type = *body.get(s)?;
            s += 1;
            let name_len = u16_at(body, &mut s)?;
            let name = take(body, &mut s, name_len)?;
            return Some((name_type == 0).then(|| String::from_utf8_lossy(name).into_owned()));
        }
    }
    Some(None)
}

/// Decides what `data`, the first bytes of a tunnel, are.
pub fn client_hello(data: &[u8]) -> Hello {
    let handshake = match handshake_bytes(data) {
        Ok(bytes) => bytes,
        Err(hello) => return hello,
    };
    if handshake.len() < 4 {
        return Hello::Incomplete;
    }
    if handshake[0] != 0x01 {
        return Hello::NotTls;
    }
    let len = (usize::from(handshake[1]) << 16) | (usize::from(handshake[2]) << 8) | usize::from(handshake[3]);
    if handshake.len() < 4 + len {
        return Hello::Incomplete;
    }
    match server_name(&handshake[4..4 + len]) {
        Some(name) => Hello::Tls(name),
        None => Hello::NotTls,
    }
}

/// Whether a ClientHello's server name is the tunnel's host.
pub fn names_match(sni: &str, host: &str) -> bool {
    sni.trim_end_matches('.').eq_ignore_ascii_case(host.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello for `name` (or none), in one record or split
    /// across two.
    fn hello(name: Option<&str>, split: bool) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one suite
        body.extend([1, 0]); // null compression
        let mut extensions = Vec::new();
        if let Some(name) = name {
            let n = name.len() as u16;
            let mut sni = (n + 3).to_be_bytes().to_vec();
            sni.push(0);
            sni.extend(n.to_be_bytes());
            sni.extend(name.as_bytes());
            extensions.extend([0, 0]);
            extensions.extend((sni.len() as u16).to_be_bytes());
            extensions.extend(sni);
        }
        extensions.extend([0, 43, 0, 3, 2, 3, 4]); // supported_versions
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
        let mut handshake = vec![1, 0];
        handshake.extend((body.len() as u16).to_be_bytes());
        handshake.extend(body);
        let record = |payload: &[u8]| {
            let mut r = vec![0x16, 0x03, 0x01];
            r.extend((payload.len() as u16).to_be_bytes());
            r.extend(payload);
            r
        };
        if split {
            let (a, b) = handshake.split_at(20);
            [record(a), record(b)].concat()
        } else {
            record(&handshake)
        }
    }

    #[test]
    fn the_server_name_is_read_from_whole_and_fragmented_hellos() {
        for split in [false, true] {
            let bytes = hello(Some("pypi.org"), split);
            assert_eq!(client_hello(&bytes), Hello::Tls(Some("pypi.org".to_owned())));
            for cut in [1, 5, 30, bytes.len() - 1] {
                assert_eq!(client_hello(&bytes[..cut]), Hello::Incomplete, "cut at {cut}");
            }
        }
        assert_eq!(client_hello(&hello(None, false)), Hello::Tls(None));
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Hello::NotTls);
        assert_eq!(client_hello(&[0x17, 0x03, 0x03, 0, 1, 0]), Hello::NotTls);
        assert!(names_match("PyPI.org.", "pypi.org") && !names_match("evil.example", "pypi.org"));
    }
}
