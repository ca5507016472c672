//! The public GOPROXY list and how it is walked: `,` falls through to the next entry on
//! not-found (404/410), `|` on any error, the last entry never falls through, and `off` ends the
//! list with not-found — the go command's rules (reference §1.1, §1.7).

use crate::base_url::{BaseUrl, UrlError};

/// Why a GOPROXY list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoProxyError {
    #[error(
        "\"direct\" must be the last entry (modgate resolves a module from its code host only when every proxy before said not found)"
    )]
    DirectNotLast,
    #[error("the list contains no entries")]
    Empty,
    #[error(transparent)]
    Url(#[from] UrlError),
}

/// One entry of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Proxy {
        base: BaseUrl,
        /// The separator after this entry was `|`: fall through on any error.
        on_any_error: bool,
    },
    Off,
    /// `direct`: modgate resolves the module from its code host itself (go-get discovery, then
    /// git), as the go command does in direct mode. Always the last entry.
    Direct,
}

/// A parsed GOPROXY list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoProxyList {
    entries: Vec<Entry>,
}

impl GoProxyList {
    /// Parses GOPROXY syntax, with `,` (fall through on 404/410) and `|` (on any error);
    /// `direct` is accepted as the last entry only.
    pub fn parse(list: &str) -> Result<GoProxyList, GoProxyError> {
        let mut entries = vec![];
        let mut rest = list;
        while !rest.is_empty() {
            let (item, sep, next) = match rest.find([',', '|']) {
                Some(i) => (&rest[..i], rest.as_bytes()[i], &rest[i + 1..]),
                None => (rest, b',', ""),
            };
            rest = next;
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            match item {
                "off" => {
                    entries.push(Entry::Off);
                    break;
                }
                "direct" => {
                    if rest.split([',', '|']).any(|r| !r.trim().is_empty()) {
                        return Err(GoProxyError::DirectNotLast);
                    }
                    entries.push(Entry::Direct);
                    break;
                }
                _ => {}
            }
            let url = if item.contains(['.', ':', '/']) && !item.contains(":/") {
                format!("https://{item}")
            } else {
                item.to_string()
            };
            let base = BaseUrl::parse(&url)?;
            entries.push(Entry::Proxy {
                base,
                on_any_error: sep == b'|',
            });
        }
        if entries.is_empty() {
            return Err(GoProxyError::Empty);
        }
        Ok(GoProxyList { entries })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_the_go_command() {
        let l = GoProxyList::parse(
            " https://a.example ,b.example:8443|https://c.example/p/ ,off,https://ignored",
        )
        .unwrap();
        let e = l.entries();
        assert_eq!(e.len(), 4);
        assert!(
            matches!(&e[0], Entry::Proxy { base, on_any_error: false } if base.to_string() == "https://a.example")
        );
        assert!(
            matches!(&e[1], Entry::Proxy { base, on_any_error: true } if base.to_string() == "https://b.example:8443")
        );
        assert!(
            matches!(&e[2], Entry::Proxy { base, on_any_error: false } if base.to_string() == "https://c.example/p")
        );
        assert_eq!(e[3], Entry::Off);
        assert_eq!(
            GoProxyList::parse("direct").unwrap().entries(),
            &[Entry::Direct]
        );
        let l = GoProxyList::parse("https://a.example|direct").unwrap();
        assert!(matches!(
            l.entries(),
            [
                Entry::Proxy {
                    on_any_error: true,
                    ..
                },
                Entry::Direct
            ]
        ));
        assert!(GoProxyList::parse("https://a.example,direct,").is_ok());
        assert_eq!(
            GoProxyList::parse("direct,https://a.example").unwrap_err(),
            GoProxyError::DirectNotLast
        );
        assert!(GoProxyList::parse(",").is_err());
        assert!(GoProxyList::parse("foo").is_err());
        assert!(GoProxyList::parse("file:///srv/goproxy").is_err());
    }
}
