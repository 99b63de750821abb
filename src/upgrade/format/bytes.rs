//! Byte strings in the state format: [`Bytes`] as hex, [`Os`] as text when it is UTF-8.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes as lowercase hex.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        unhex(&text)
            .map(Bytes)
            .ok_or_else(|| serde::de::Error::custom("not lowercase hex"))
    }
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &c in b {
        s.push(DIGITS[(c >> 4) as usize] as char);
        s.push(DIGITS[(c & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// A path, argument or environment value: a JSON string when it is UTF-8, else
/// `{"hex": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Os(pub OsString);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum OsRepr {
    Text(String),
    Raw { hex: Bytes },
}

impl Serialize for Os {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.to_str() {
            Some(t) => OsRepr::Text(t.to_string()),
            None => OsRepr::Raw {
                hex: Bytes(self.0.as_bytes().to_vec()),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Os {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Os, D::Error> {
        Ok(Os(match OsRepr::deserialize(d)? {
            OsRepr::Text(t) => t.into(),
            OsRepr::Raw { hex } => OsString::from_vec(hex.0),
        }))
    }
}

impl From<&std::ffi::OsStr> for Os {
    fn from(s: &std::ffi::OsStr) -> Os {
        Os(s.to_os_string())
    }
}

impl From<&std::path::Path> for Os {
    fn from(p: &std::path::Path) -> Os {
        Os(p.as_os_str().to_os_string())
    }
}

impl Os {
    pub fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_os_strings_round_trip() {
        let b = Bytes(vec![0, 1, 0xab, 0xff, b'\n']);
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(text, "\"0001abff0a\"");
        assert_eq!(serde_json::from_str::<Bytes>(&text).unwrap(), b);
        assert!(serde_json::from_str::<Bytes>("\"0g\"").is_err());
        assert!(serde_json::from_str::<Bytes>("\"abc\"").is_err());
        let plain = Os("/usr/bin/hello".into());
        assert_eq!(serde_json::to_string(&plain).unwrap(), "\"/usr/bin/hello\"");
        let raw = Os(OsString::from_vec(vec![b'/', 0xff]));
        let text = serde_json::to_string(&raw).unwrap();
        assert_eq!(text, r#"{"hex":"2fff"}"#);
        assert_eq!(serde_json::from_str::<Os>(&text).unwrap(), raw);
    }
}
