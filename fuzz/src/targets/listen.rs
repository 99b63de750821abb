//! `listen`: listen addresses (`src/listen.rs`, `parse_listen`), the value parser of
//! `--listen` and `--metrics`, and of the config file's `listen` and `metrics`.
//!
//! A spec that parses keeps the text it was given; its name, when it has one, is a valid
//! socket name; a TCP address written back as `HOST:PORT` (`:PORT` for every interface),
//! and a Unix path as `unix:PATH`, parse to the same spec (also under the same name). A Unix
//! path is one the kernel can take: at most 107 bytes, no NUL, not abstract.

use crate::listen::{ListenAddr, parse_listen};

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let spec = match parse_listen(text) {
        Ok(s) => s,
        Err(msg) => {
            assert!(!msg.is_empty());
            return;
        }
    };
    assert_eq!(spec.text, text);
    if !spec.name.is_empty() {
        assert!(text.starts_with(&format!("{}=", spec.name)), "{text:?}");
        assert!(
            spec.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)),
            "{:?}",
            spec.name
        );
    }
    let written = match &spec.addr {
        ListenAddr::Tcp(addr) => addr.to_string(),
        ListenAddr::AnyTcp(port) => format!(":{port}"),
        ListenAddr::Unix(path) => {
            use std::os::unix::ffi::OsStrExt;
            let bytes = path.as_os_str().as_bytes();
            assert!(
                !bytes.is_empty() && bytes.len() <= 107,
                "{}",
                path.display()
            );
            assert!(!bytes.contains(&0), "a Unix path with a NUL byte: {text:?}");
            assert!(!bytes.starts_with(b"@"), "{text:?}");
            format!("unix:{}", path.display())
        }
    };
    let again = parse_listen(&written).unwrap_or_else(|e| panic!("{written:?}: {e}"));
    assert_eq!(again.addr, spec.addr, "{text:?} written as {written:?}");
    if !spec.name.is_empty() {
        let named = format!("{}={written}", spec.name);
        let again = parse_listen(&named).unwrap_or_else(|e| panic!("{named:?}: {e}"));
        assert_eq!((again.name, again.addr), (spec.name, spec.addr));
    }
}
